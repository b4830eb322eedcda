"""Scenario families: parameterised scenarios, each modelled on a ScenarioRunner scenario class.

A family is a YAML file in configs/scenarios/families/ (its name is the file stem):

    description: ...
    modelled_on: CutIn                 # the ScenarioRunner / Leaderboard 2.0 scenario class
    parameters:
      cutter_speed: {type: float, range: [7.0, 11.0]}   # [m/s]
      seed: {type: int, range: [0, 9999]}               # ints: both ends inclusive
      weather: {type: choice, values: [clear_noon, dusk]}
    scenario:                          # a scenario document (configs/scenarios/*.yaml)
      map: straight
      actors:
        - {type: vehicle, start: {route_s: "${gap_m}", offset: -3.5}, speed: "${cutter_speed}"}

In the `scenario:` template a string that is exactly `"${name}"` becomes the parameter's value
(keeping its type); `${name}` inside other text is formatted into it. Instead of a template a
family may name a `generator:` from GENERATORS, code that writes the scenario document from
the parameters. Sampling draws uniformly: floats in their range (rounded to FLOAT_DECIMALS),
ints in their range with both ends included, choices among their values.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from stagepilot.core.config import CONFIG_ROOT, ConfigError, Strict
from stagepilot.core.config_load import format_validation_error, load_config
from stagepilot.core.inputs import clip, echo, named_yaml
from stagepilot.core.maps import read_map_text
from stagepilot.core.roadmap import MapError
from stagepilot.sim.scenario import Scenario, resolve_map

FAMILY_DIR = CONFIG_ROOT / "scenarios" / "families"
FLOAT_DECIMALS = 3  # sampled floats are rounded, so that ids, reports and YAML dumps stay readable
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Scalar = str | int | float | bool


# ---------------------------------------------------------------- generators


def _random_routes(params: dict[str, Any], maps_dirs: Iterable[str | Path]) -> dict:
    """A route through at least two junctions of a town, with traffic (sim/random_routes.py);
    it draws from its own generator, seeded by params["seed"]."""
    # Looked up at first use: the generator is a module of its own and is not needed to load families.
    module = importlib.import_module("stagepilot.sim.random_routes")
    return module.random_routes_scenario(params, maps_dirs)


# name -> function(params, maps_dirs) -> scenario document (a dict in the scenario-file format); a
# generator draws what it needs from the parameters (their `seed`), so a draw is the same everywhere
GENERATORS: dict[str, Callable[[dict[str, Any], Iterable[str | Path]], dict]] = {
    "random_routes": _random_routes,
}


# ---------------------------------------------------------------- file schema


class ParameterSpec(Strict):
    # map: drawn from `values` like a choice, but a suite may pin it to any map the search path
    # finds or to an .xodr file (the family then drives the user's own map)
    type: Literal["float", "int", "choice", "map"]
    range: tuple[float, float] | None = None  # [lo, hi], for float and int
    values: list[Scalar] | None = Field(None, min_length=1)  # for choice

    @model_validator(mode="after")
    def _consistent(self) -> "ParameterSpec":
        if self.type in ("choice", "map"):
            if self.values is None or self.range is not None:
                raise ValueError(f"a {self.type} parameter takes `values: [...]` and no range")
        else:
            if self.range is None or self.values is not None:
                raise ValueError(f"a {self.type} parameter takes `range: [lo, hi]` and no values")
            lo, hi = self.range
            if lo > hi:
                raise ValueError(f"range [{lo}, {hi}] has its low end above its high end")
            if self.type == "int" and not (float(lo).is_integer() and float(hi).is_integer()):
                raise ValueError(f"an int parameter's range ends are whole numbers (got [{lo}, {hi}])")
        return self


class FamilySpec(Strict):
    description: str = Field(min_length=1)
    modelled_on: str = Field(min_length=1)  # a ScenarioRunner scenario class name
    parameters: dict[str, ParameterSpec] = {}
    scenario: dict[str, Any] | None = None
    generator: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "FamilySpec":
        if (self.scenario is None) == (self.generator is None):
            raise ValueError("give exactly one of `scenario:` (a template) or `generator:` (a name)")
        if self.generator is not None and self.generator not in GENERATORS:
            raise ValueError(f"generator {echo(self.generator)} is not one of {sorted(GENERATORS)}")
        for name in self.parameters:
            if not PARAMETER_NAME.fullmatch(name):
                raise ValueError(f"parameter name {echo(name)} is not an identifier")
        return self


# ---------------------------------------------------------------- families


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # float | int | choice
    low: float | int | None = None
    high: float | int | None = None
    values: tuple[Scalar, ...] = ()

    def sample(self, rng: np.random.Generator) -> Scalar:
        if self.type in ("choice", "map"):
            return self.values[int(rng.integers(len(self.values)))]
        if self.type == "int":
            return int(rng.integers(self.low, self.high + 1))
        value = round(float(rng.uniform(self.low, self.high)), FLOAT_DECIMALS)
        return min(max(value, self.low), self.high)

    def problem(self, value: Any) -> str | None:
        """Why `value` is not a value of this parameter, or None."""
        if self.type == "map":  # any map name or .xodr path; whether it exists is the map search's to say
            return None if isinstance(value, str) and value.strip() else "is not a map name or an .xodr path"
        if self.type == "choice":
            ok = any(value == v and type(value) is type(v) for v in self.values)
            return None if ok else f"is not one of {list(self.values)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"is not a number (a {self.type} parameter)"
        if self.type == "int" and not float(value).is_integer():
            return "is not a whole number (an int parameter)"
        if not self.low <= value <= self.high:
            return f"is outside its range [{self.low}, {self.high}]"
        return None

    def describe(self) -> str:
        if self.type == "choice":
            return f"{self.name}: choice of {list(self.values)}"
        if self.type == "map":
            return f"{self.name}: a map, drawn from {list(self.values)}; any map name or .xodr path when pinned"
        return f"{self.name}: {self.type} in [{self.low}, {self.high}]"


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    modelled_on: str
    parameters: dict[str, Parameter]
    template: dict  # the scenario document with ${name} placeholders ({} for a generator family)
    source: Path
    generator: str | None = None  # a GENERATORS name instead of a template

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """One draw of every parameter, in the file's order (so a seed gives the same draw)."""
        return {name: parameter.sample(rng) for name, parameter in self.parameters.items()}

    def check(self, params: dict[str, Any], partial: bool = False) -> None:
        """ConfigError naming the family and parameter when `params` is not one of its draws
        (`partial`: some of them, e.g. the values a suite pins)."""
        unknown = [name for name in params if name not in self.parameters]
        if unknown:
            raise ConfigError(f"family {self.name}: unknown parameter {clip(str(unknown[0]))} "
                              f"(parameters: {', '.join(self.parameters) or 'none'})")
        for name, parameter in self.parameters.items():
            if name not in params:
                if partial:
                    continue
                raise ConfigError(f"family {self.name}: parameter {name} is missing ({parameter.describe()})")
            problem = parameter.problem(params[name])
            if problem is not None:
                raise ConfigError(f"family {self.name}: parameter {name} = {echo(params[name])} {problem}")

    def document(self, params: dict[str, Any], name: str, maps_dirs: Iterable[str | Path] = ()) -> dict:
        """The scenario document (the YAML file's content) for `params`, named `name`."""
        self.check(params)
        if self.generator is not None:
            doc = dict(GENERATORS[self.generator](dict(params), tuple(maps_dirs)))
        else:
            doc = substitute(self.template, params)
        doc["name"] = name
        doc.setdefault("description", self.description)
        return doc

    def scenario(self, params: dict[str, Any], name: str, maps_dirs: Iterable[str | Path] = ()) -> Scenario:
        """The validated Scenario for `params`, its map resolved as load_scenario does (a relative
        map path against the family file's folder, a name on the map search path)."""
        maps_dirs = tuple(maps_dirs)
        doc = self.document(params, name, maps_dirs)
        scenario = self._validate(doc, f"family {self.name} ({self.source}) {name}")
        map_path = resolve_map(scenario.map, self.source, maps_dirs)
        try:
            read_map_text(map_path)  # bounded, UTF-8 and not empty, before the simulator parses it
        except MapError as exc:
            raise MapError(f"{self.source}: map: {exc}") from None
        return scenario.model_copy(update={"source": str(self.source), "map_path": str(map_path)})

    def _validate(self, doc: dict, label: str) -> Scenario:
        try:
            return Scenario.model_validate(doc)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, lambda _path: label, doc)) from None


def substitute(template: Any, params: dict[str, Any], path: str = "scenario") -> Any:
    """`template` with every "${name}" replaced by its value (type kept when the string is only
    the placeholder, formatted into the text otherwise)."""
    if isinstance(template, dict):
        return {key: substitute(value, params, f"{path}.{key}") for key, value in template.items()}
    if isinstance(template, list):
        return [substitute(value, params, f"{path}.{i}") for i, value in enumerate(template)]
    if not isinstance(template, str):
        return template
    for name in PLACEHOLDER.findall(template):
        if name not in params:
            raise ConfigError(f"{path}: ${{{name}}} names no parameter (parameters: {', '.join(params) or 'none'})")
    whole = PLACEHOLDER.fullmatch(template)
    if whole:
        return params[whole.group(1)]
    return PLACEHOLDER.sub(lambda m: str(params[m.group(1)]), template)


def placeholders(template: Any) -> set[str]:
    """The parameter names a template refers to."""
    if isinstance(template, dict):
        return set().union(*(placeholders(v) for v in template.values()))
    if isinstance(template, list):
        return set().union(*(placeholders(v) for v in template))
    return set(PLACEHOLDER.findall(template)) if isinstance(template, str) else set()


# ---------------------------------------------------------------- loading


def family_names() -> list[str]:
    """The families shipped in configs/scenarios/families/."""
    return sorted(path.stem for path in FAMILY_DIR.glob("*.yaml"))


def family_path(name_or_path: str | Path) -> Path:
    """A family name from configs/scenarios/families/ or a path to a YAML file."""
    return named_yaml(name_or_path, FAMILY_DIR, "scenario family", "family file")


def load_family(name_or_path: str | Path) -> Family:
    """A family by name or path. Any problem (an unknown key, a parameter without a range, a
    placeholder naming no parameter, a parameter the template never uses, a template whose
    extreme draws are no valid scenario) raises ConfigError naming the file."""
    path = family_path(name_or_path)
    spec = load_config(FamilySpec, [path])
    parameters = {
        name: Parameter(name, p.type, *_bounds(p), values=tuple(p.values or ()))
        for name, p in spec.parameters.items()
    }
    family = Family(path.stem, spec.description, spec.modelled_on, parameters, spec.scenario or {}, path,
                    spec.generator)
    if spec.scenario is not None:
        _check_template(family)
    return family


def _bounds(p: ParameterSpec) -> tuple:
    if p.range is None:
        return None, None
    lo, hi = p.range
    return (int(lo), int(hi)) if p.type == "int" else (float(lo), float(hi))


def _check_template(family: Family) -> None:
    used = placeholders(family.template)
    unknown = sorted(used - set(family.parameters))
    if unknown:
        raise ConfigError(f"{family.source}: scenario: ${{{unknown[0]}}} names no parameter "
                          f"(parameters: {', '.join(family.parameters) or 'none'})")
    unused = [name for name in family.parameters if name not in used]
    if unused:
        raise ConfigError(f"{family.source}: parameters.{unused[0]}: the scenario template never uses it")
    for corner in ("low", "high"):  # both extremes of every parameter give a valid scenario
        params = {name: (p.values[0 if corner == "low" else -1] if p.type in ("choice", "map")
                         else getattr(p, corner)) for name, p in family.parameters.items()}
        family._validate(family.document(params, f"{family.name}-{corner}"), str(family.source))

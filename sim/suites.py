"""Scenario suites: how many scenarios to draw from each family, plus explicit scenario files.

A suite is a YAML file in configs/suites/ (its name is the file stem):

    description: ...
    seed: 2026
    families: {cut_in: 4, junction_left_turn: 3}
    scenarios: [red_light_junction]     # names from configs/scenarios/ or paths to YAML files
    criteria: {blocked_s: 60}           # optional, for the evaluator

Sampling is deterministic: family F draws its scenarios from a generator seeded by the suite
seed and F's name only, so the same suite gives the same list on every machine, and adding or
resizing one family leaves the others' scenarios as they were (growing a family's count only
appends to it). Everything a suite names is loaded and checked by `load_suite`, before any
scenario is built or driven.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from stagepilot.core.config import CONFIG_ROOT, ConfigError, Strict
from stagepilot.core.config_base import MAX_DURATION_S, MAX_SEED
from stagepilot.core.config_load import load_config
from stagepilot.core.inputs import clip, echo, named_yaml
from stagepilot.sim.families import Family, family_names, load_family
from stagepilot.sim.scenario import Scenario, load_scenario, scenario_path

SUITE_DIR = CONFIG_ROOT / "suites"
MAX_PER_FAMILY = 1000


class SuiteCriteria(Strict):
    """Route-ending criteria the evaluator applies (REFERENCE.md, Leaderboard 2.0)."""

    blocked_s: float | None = Field(None, gt=0.0, le=MAX_DURATION_S)  # [s] below 0.1 m/s ends the route


class FamilyDraws(Strict):
    """`family: {count: N, params: {name: value}}`: N draws with some parameters pinned."""

    count: int
    params: dict[str, Any] = {}


class SuiteSpec(Strict):
    description: str = ""
    seed: int = Field(ge=0, le=MAX_SEED)
    families: dict[str, FamilyDraws] = {}  # `name: N` is short for `name: {count: N}`
    scenarios: list[str] = []
    criteria: SuiteCriteria = SuiteCriteria()

    @field_validator("families", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {k: {"count": v} if isinstance(v, int) and not isinstance(v, bool) else v for k, v in value.items()}

    @model_validator(mode="after")
    def _counts(self) -> "SuiteSpec":
        for name, draws in self.families.items():
            if not 0 <= draws.count <= MAX_PER_FAMILY:
                raise ValueError(f"family {echo(name)}: count {draws.count} is outside [0, {MAX_PER_FAMILY}]")
        if not any(d.count for d in self.families.values()) and not self.scenarios:
            raise ValueError("a suite needs at least one family count above 0 or one scenario")
        return self


@dataclass(frozen=True)
class SuiteScenario:
    id: str  # "cut_in-03" for a family's third draw, the scenario's name for an explicit file
    family: str | None
    params: dict[str, Any]
    scenario: Scenario


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    seed: int
    families: dict[str, int]  # family name -> how many scenarios to draw
    scenarios: list[str]  # explicit scenario files, as given
    criteria: dict[str, Any]
    source: Path
    pinned: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> parameters fixed for every draw
    loaded: dict[str, Family] = field(default_factory=dict, repr=False)  # the families, read once

    def sample(self, maps_dirs: Iterable[str | Path] = ()) -> list[SuiteScenario]:
        """Every scenario of the suite, validated and with its map resolved: the families' draws
        in the file's order, then the explicit scenarios. The same list every time."""
        maps_dirs = tuple(maps_dirs)
        out: list[SuiteScenario] = []
        for name, count in self.families.items():
            family = self.loaded.get(name) or load_family(name)
            rng = np.random.default_rng(family_seed(self.seed, name))
            for index in range(1, count + 1):
                params = {**family.sample(rng), **self.pinned.get(name, {})}  # pinning leaves the other draws alone
                scenario_id = f"{name}-{index:02d}"
                out.append(SuiteScenario(scenario_id, name, params, family.scenario(params, scenario_id, maps_dirs)))
        for entry in self.scenarios:
            scenario = load_scenario(self._scenario_file(entry), maps_dirs=maps_dirs)
            out.append(SuiteScenario(scenario.name, None, {}, scenario))
        ids = [item.id for item in out]
        duplicate = next((i for i in ids if ids.count(i) > 1), None)
        if duplicate is not None:
            raise ConfigError(f"{self.source}: scenario id {duplicate} occurs twice; rename the scenario")
        return out

    def _scenario_file(self, entry: str) -> str | Path:
        """A path relative to the suite file when one is there, else as load_scenario finds it."""
        beside = self.source.parent / entry
        return beside if Path(entry).suffix in (".yaml", ".yml") and beside.is_file() else entry

    @property
    def size(self) -> int:
        return sum(self.families.values()) + len(self.scenarios)


def family_seed(suite_seed: int, family: str) -> list[int]:
    """Seed entropy for one family's draws: the suite seed and a stable hash of the name."""
    name_key = int.from_bytes(hashlib.sha256(family.encode()).digest()[:8], "little")
    return [suite_seed, name_key]


def suite_names() -> list[str]:
    """The suites shipped in configs/suites/."""
    return sorted(path.stem for path in SUITE_DIR.glob("*.yaml"))


def suite_path(name_or_path: str | Path) -> Path:
    """A suite name from configs/suites/ or a path to a YAML file."""
    return named_yaml(name_or_path, SUITE_DIR, "suite", "suite file")


def load_suite(name_or_path: str | Path) -> Suite:
    """A suite by name or path; an unknown key, an unknown family, a family file with a problem
    or a scenario file that is not there raises ConfigError naming the suite file."""
    path = suite_path(name_or_path)
    spec = load_config(SuiteSpec, [path])
    known = family_names()
    loaded: dict[str, Family] = {}
    for name, draws in spec.families.items():
        if name not in known:
            raise ConfigError(f"{path}: families.{clip(name)}: no such scenario family (known: {', '.join(known)})")
        try:
            loaded[name] = load_family(name)
        except ConfigError as exc:
            raise ConfigError(f"{path}: families.{name}: {exc}") from None
        try:  # a pinned value outside its range fails here, before any drive
            loaded[name].check(draws.params, partial=True)
        except ConfigError as exc:
            raise ConfigError(f"{path}: families.{name}.params: {exc}") from None
    pinned = {name: d.params for name, d in spec.families.items() if d.params}
    counts = {name: d.count for name, d in spec.families.items()}
    suite = Suite(path.stem, spec.description, spec.seed, counts, list(spec.scenarios),
                  spec.criteria.model_dump(exclude_none=True), path, pinned, loaded)
    for index, entry in enumerate(spec.scenarios):
        try:
            scenario_path(suite._scenario_file(entry))
        except ConfigError as exc:
            raise ConfigError(f"{path}: scenarios.{index}: {exc}") from None
    return suite

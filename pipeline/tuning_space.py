"""Tuning search spaces (configs/tuning/*.yaml): which stack config keys a study may move, and
within which ranges, checked against the config schema before any trial runs.

    description: the lattice cost weights ...
    params:
      planner.lattice.weights.offset: {type: float, low: 0.05, high: 5.0, log: true}
      planner.lattice.num_offsets: {type: int, low: 5, high: 15, step: 2}
      controller.kind: {type: categorical, choices: [mpc, pid_stanley]}
      controller.longitudinal.kp_v.1: {type: float, low: 0.5, high: 3.0}   # one entry of a table

A key is a dotted path into the stack config (core/config.py); a number indexes a table (a
tuple such as a gain schedule), a name indexes a mapping (`...extra_margin_by_kind_m.pedestrian`).
Each parameter is checked before anything runs, with one line that names the space file and
the key: the key exists and is a single value, the type fits (float for a float key, int for
an int key; categorical choices must each be values the schema accepts), the range lies inside
the schema's bounds, `log` ranges are positive, and the stack still validates with each end of
each range (so that cross-key rules, such as horizons within the plan horizon, fail here).

Sampled floats are rounded to SIGNIFICANT digits before a trial runs, so that the overlay a
study writes (best.yaml) is readable and is exactly what the trial drove.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import annotated_types
from pydantic import BaseModel, Field, model_validator

from stagepilot.core.config import CONFIG_ROOT, ConfigError, StackConfig, Strict, load_stack
from stagepilot.core.config_load import load_yaml
from stagepilot.core.inputs import clip, echo

TUNING_DIR = CONFIG_ROOT / "tuning"
SIGNIFICANT = 4  # digits a sampled float keeps


class ParamSpec(Strict):
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0.0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical parameter takes `choices` only (no low, high, log or step)")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low and high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0.0:
            raise ValueError(f"a log range must be positive (low {self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("`log` and `step` do not go together")
        if self.type == "int" and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ValueError("an int parameter needs whole-number low, high and step")
        return self


class SpaceSpec(Strict):
    description: str = ""
    params: dict[str, ParamSpec]

    @model_validator(mode="after")
    def _some(self) -> SpaceSpec:
        if not self.params:
            raise ValueError("params: a space needs at least one parameter")
        return self


@dataclass(frozen=True)
class Leaf:
    """What the schema says about one key: its base type, its bounds and its allowed values."""

    kind: type  # float, int, bool or str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    literals: tuple[Any, ...] | None = None  # a Literal's values
    container: str | None = None  # "tuple" or "dict": the key is one entry of it

    def bounds_text(self) -> str:
        lower = f"> {self.gt:g}" if self.gt is not None else (f">= {self.ge:g}" if self.ge is not None else "")
        upper = f"< {self.lt:g}" if self.lt is not None else (f"<= {self.le:g}" if self.le is not None else "")
        return " and ".join(p for p in (lower, upper) if p) or "any value"

    def admits(self, value: float) -> bool:
        return not ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                    or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt))


@dataclass(frozen=True)
class Param:
    key: str  # dotted path
    spec: ParamSpec
    leaf: Leaf

    def suggest(self, trial) -> Any:
        """The trial's value for this key (optuna's suggest API), rounded as stored in the overlay."""
        s = self.spec
        if s.type == "categorical":
            return trial.suggest_categorical(self.key, s.choices)
        if s.type == "int":
            return trial.suggest_int(self.key, int(s.low), int(s.high), step=int(s.step or 1), log=s.log)
        return round_value(trial.suggest_float(self.key, s.low, s.high, step=s.step, log=s.log))

    def distribution(self):
        import optuna.distributions as d

        s = self.spec
        if s.type == "categorical":
            return d.CategoricalDistribution(s.choices)
        if s.type == "int":
            return d.IntDistribution(int(s.low), int(s.high), step=int(s.step or 1), log=s.log)
        return d.FloatDistribution(s.low, s.high, step=s.step, log=s.log)


@dataclass(frozen=True)
class Space:
    name: str
    description: str
    params: tuple[Param, ...]
    source: Path

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def digest(self) -> str:
        blob = json.dumps({p.key: p.spec.model_dump(mode="json") for p in self.params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def round_value(value: float) -> float:
    if value == 0.0 or not math.isfinite(value):
        return value
    return float(f"{value:.{SIGNIFICANT}g}")


def space_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"--space {path}: no such file")
        return path
    shipped = TUNING_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        known = sorted(p.stem for p in TUNING_DIR.glob("*.yaml"))
        raise ConfigError(f"--space {name_or_path}: no such space file or shipped space (shipped: {', '.join(known)})")
    return shipped


# ---------------------------------------------------------------- the schema, walked by key


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """(the bare type, its constraint metadata) through Annotated[...] and `X | None`."""
    metadata: list[Any] = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = typing.get_args(annotation)
            for item in extra:  # a pydantic FieldInfo carries its constraints in .metadata
                metadata.extend(getattr(item, "metadata", [item]))
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation, metadata


def _leaf(annotation: Any, metadata: list[Any], container: str | None) -> Leaf | None:
    bare, more = _unwrap(annotation)
    metadata = [*metadata, *more]
    bounds = {}
    for item in metadata:
        for name in ("ge", "gt", "le", "lt"):
            value = getattr(item, name, None)
            if isinstance(item, getattr(annotated_types, name.capitalize())) and value is not None:
                bounds[name] = float(value)
    if typing.get_origin(bare) is Literal:
        values = typing.get_args(bare)
        return Leaf(type(values[0]), literals=values, container=container)
    if bare in (float, int, bool, str):
        return Leaf(bare, container=container, **bounds)
    return None


def schema_leaf(key: str, base: StackConfig, source: str) -> Leaf:
    """The schema's description of `key`, or a ConfigError naming the key and what is there."""
    parts = key.split(".")
    model: Any = StackConfig
    value: Any = base
    annotation: Any = None
    metadata: list[Any] = []
    container = None
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth]) or "the stack config"
        if isinstance(model, type) and issubclass(model, BaseModel):
            fields = model.model_fields
            if part not in fields:
                close = difflib.get_close_matches(part, list(fields), n=1)
                hint = f" (did you mean {'.'.join([*parts[:depth], close[0]])}?)" if close else ""
                raise ConfigError(f"{source}: {clip(key)}: unknown key: {here} has no {clip(part)!r}{hint}")
            info = fields[part]
            annotation, metadata, container = info.annotation, list(info.metadata), None
            value = getattr(value, part)
        else:
            bare, _ = _unwrap(annotation)
            origin = typing.get_origin(bare)
            if origin is tuple:
                if not part.isdigit() or int(part) >= len(value):
                    raise ConfigError(f"{source}: {clip(key)}: {here} is a table of {len(value)} entries; "
                                      f"index it with 0..{len(value) - 1}")
                annotation, metadata, container = typing.get_args(bare)[0], [], "tuple"
                value = value[int(part)]
            elif origin is dict:
                if part not in value:
                    raise ConfigError(f"{source}: {clip(key)}: unknown key: {here} has no entry {clip(part)!r} "
                                      f"(it has {', '.join(map(str, value)) or 'none'})")
                annotation, metadata, container = typing.get_args(bare)[1], [], "dict"
                value = value[part]
            else:
                raise ConfigError(f"{source}: {clip(key)}: unknown key: {here} is a single value, it has no {part!r}")
        bare, _ = _unwrap(annotation)
        model = bare
    leaf = _leaf(annotation, metadata, container)
    if leaf is None:
        raise ConfigError(f"{source}: {clip(key)}: not a single value that can be tuned (a section, a table or a "
                          "mapping; name one entry of a table by its index, e.g. kp_v.1)")
    return leaf


def _check_type_and_range(key: str, spec: ParamSpec, leaf: Leaf, source: str) -> None:
    where = f"{source}: {clip(key)}"
    if spec.type == "categorical":
        for choice in spec.choices or []:
            if leaf.literals is not None:
                if choice not in leaf.literals:
                    raise ConfigError(f"{where}: choice {echo(choice)} is not allowed by the schema "
                                      f"(allowed: {', '.join(map(str, leaf.literals))})")
            elif leaf.kind is bool:
                if not isinstance(choice, bool):
                    raise ConfigError(f"{where}: choice {echo(choice)} is not allowed by the schema (a true/false key)")
            elif leaf.kind in (int, float):
                if isinstance(choice, bool) or not isinstance(choice, (int, float)) or (
                        leaf.kind is int and not isinstance(choice, int)):
                    raise ConfigError(f"{where}: choice {echo(choice)} is not allowed by the schema (a {leaf.kind.__name__} key)")
                if not leaf.admits(float(choice)):
                    raise ConfigError(f"{where}: choice {echo(choice)} is outside the schema's bounds ({leaf.bounds_text()})")
            elif not isinstance(choice, str):
                raise ConfigError(f"{where}: choice {echo(choice)} is not allowed by the schema (a text key)")
        return
    if leaf.kind is not (int if spec.type == "int" else float):
        want = {int: "int", float: "float", bool: "categorical [true, false]", str: "categorical"}[leaf.kind]
        if leaf.literals is not None:
            want = f"categorical with choices from {', '.join(map(str, leaf.literals))}"
        raise ConfigError(f"{where}: type {spec.type} does not fit the schema's {leaf.kind.__name__} key (use {want})")
    for end, value in (("low", spec.low), ("high", spec.high)):
        if not leaf.admits(float(value)):
            raise ConfigError(f"{where}: {end} {value:g} is outside the schema's bounds ({leaf.bounds_text()})")


def overlay(params: dict[str, Any], base: StackConfig) -> dict[str, Any]:
    """The nested config overlay that sets `params` (dotted key -> value) on `base`: a table entry
    writes the whole table with that entry changed (YAML lists replace, they do not merge)."""
    tree: dict[str, Any] = {}
    tables: dict[str, list] = {}
    for key, value in params.items():
        parts = key.split(".")
        if parts[-1].isdigit():  # a table entry: only tables take numeric segments
            table_key = ".".join(parts[:-1])
            if table_key not in tables:
                current: Any = base
                for part in parts[:-1]:
                    current = current[part] if isinstance(current, dict) else getattr(current, part)
                tables[table_key] = list(current)
            tables[table_key][int(parts[-1])] = value
            continue
        _set(tree, parts, value)
    for table_key, values in tables.items():
        _set(tree, table_key.split("."), values)
    return tree


def _set(tree: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def flat_overrides(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """`key.path=value` overrides (values as JSON, which YAML reads back exactly) for an overlay."""
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flat_overrides(value, f"{path}."))
        else:
            out.append(f"{path}={json.dumps(value)}")
    return out


def load_space(name_or_path: str | Path, config_files=(), overrides=()) -> Space:
    """A space file, checked against the schema on the base config (the stack files and
    overrides the study starts from); any problem is one ConfigError naming the file and key."""
    path = space_path(name_or_path)
    from stagepilot.core.config_load import load_config

    spec: SpaceSpec = load_config(SpaceSpec, [path])  # type: ignore[assignment]
    base = load_stack(list(config_files), list(overrides))
    source = str(path)
    params = []
    for key, param_spec in spec.params.items():
        leaf = schema_leaf(key, base, source)
        _check_type_and_range(key, param_spec, leaf, source)
        params.append(Param(key, param_spec, leaf))
    space = Space(path.stem, spec.description, tuple(params), path)
    for param in space.params:  # each end of each range on the base stack: cross-key rules fail now
        ends = param.spec.choices if param.spec.type == "categorical" else [param.spec.low, param.spec.high]
        for end in ends:
            value = int(end) if param.spec.type == "int" else end
            try:
                load_stack(list(config_files), [*overrides, *flat_overrides(overlay({param.key: value}, base))])
            except ConfigError as exc:
                message = str(exc).split(": ", 1)[-1]
                raise ConfigError(f"{source}: {clip(param.key)}: the stack does not validate with {echo(value)} "
                                  f"({message})") from None
    return space


def base_values(space: Space, base: StackConfig) -> dict[str, Any]:
    """The base config's value of every key of the space (the study's first trial)."""
    out = {}
    for param in space.params:
        current: Any = base
        for part in param.key.split("."):
            if isinstance(current, (tuple, list)):
                current = current[int(part)]
            elif isinstance(current, dict):
                current = current[part]
            else:
                current = getattr(current, part)
        out[param.key] = current
    return out


def read_overlay(path: str | Path) -> dict[str, Any]:
    return load_yaml(path)

"""Loading any typed config: YAML files, then dotted `key.path=value` overrides, validated
against a pydantic model. Each key path remembers which file (or the command line) set it,
so an error names the file, the dotted key and what was expected, on one line.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from stagepilot.core.config_base import ConfigError

COMMAND_LINE = "command line"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse one YAML mapping with safe_load; a problem raises ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """'planner.max_speed=12' -> (['planner', 'max_speed'], 12). The value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{COMMAND_LINE}: override {text!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


class _Layered:
    """Merges mappings while remembering which source set each key path."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sources: dict[tuple[str, ...], str] = {}

    def merge(self, data: dict[str, Any], source: str, prefix: tuple[str, ...] = ()) -> None:
        target = self.data
        for part in prefix:
            target = target.setdefault(part, {})
        self._merge_into(target, data, source, prefix)

    def _merge_into(self, target: dict, data: dict, source: str, prefix: tuple) -> None:
        for key, value in data.items():
            path = prefix + (str(key),)
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                self.sources.setdefault(path, source)
                self._merge_into(target[key], value, source, path)
            else:
                target[key] = copy.deepcopy(value)
                self.sources[path] = source
                for known in [p for p in self.sources if p[: len(path)] == path and p != path]:
                    del self.sources[known]
                if isinstance(value, dict):
                    self._mark(value, source, path)

    def _mark(self, data: dict, source: str, prefix: tuple) -> None:
        for key, value in data.items():
            self.sources[prefix + (str(key),)] = source
            if isinstance(value, dict):
                self._mark(value, source, prefix + (str(key),))

    def set(self, path: list[str], value: Any, source: str) -> None:
        target = self.data
        for part in path[:-1]:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = target[part] = {}
            target = nxt
        self._merge_into(target, {path[-1]: value}, source, tuple(path[:-1]))

    def source_of(self, path: tuple[str, ...]) -> str:
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.sources:
                return self.sources[path[:cut]]
        return next(iter(self.sources.values()), "defaults")


def _data_path(loc: tuple, data: Any) -> tuple[str, ...]:
    """The key path of an error location in the user's data: pydantic puts the tag of a
    discriminated union (e.g. the actor type) into the location, the user never wrote it."""
    path = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        elif isinstance(data, dict) and isinstance(data.get("type"), str) and part == data["type"]:
            continue
        else:
            data = None
        path.append(str(part))
    return tuple(path)


def format_validation_error(exc: ValidationError, source_of, data: Any = None) -> str:
    """One line per problem: '<file>: <dotted.key>: <what was expected> (got <value>)'."""
    lines = []
    for err in exc.errors():
        path = _data_path(err["loc"], data)
        dotted = ".".join(path) or "<top>"
        if err["type"] == "extra_forbidden":
            what = "unknown key"
        elif err["type"] == "missing":
            what = "required key is missing"
        else:
            what = err["msg"]
        got = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err['input']!r})"
        lines.append(f"{source_of(path)}: {dotted}: {what}{got}")
    return "; ".join(lines)


def validate(model: type[BaseModel], layered: _Layered) -> BaseModel:
    try:
        return model.model_validate(layered.data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, layered.source_of, layered.data)) from None


def load_config(model: type[BaseModel], files: list[str | Path], overrides: list[str] | None = None) -> BaseModel:
    """Each YAML file in order, then each `key.path=value` override, validated as `model`;
    a problem raises ConfigError naming the file (or command line) and the key."""
    layered = _Layered()
    for path in files:
        layered.merge(load_yaml(path), str(path))
    for text in overrides or []:
        keys, value = parse_override(text)
        layered.set(keys, value, COMMAND_LINE)
    return validate(model, layered)

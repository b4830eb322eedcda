"""Loading any typed config: YAML files (read by core/inputs.py), then dotted `key.path=value`
overrides, validated against a pydantic model. Each key path remembers which file (or the command line) set it,
so an error names the file, the dotted key and what was expected, on one line.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from stagepilot.core.config_base import ConfigError
from stagepilot.core.inputs import StrictYamlError, clip, echo, parse_yaml, read_yaml_mapping

COMMAND_LINE = "command line"
MAX_PROBLEMS = 5  # listed in one error message


def load_yaml(path: str | Path) -> dict[str, Any]:
    """One YAML mapping through the strict reader (core/inputs.py); a problem raises
    ConfigError naming the file."""
    return read_yaml_mapping(path)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'planner.max_speed=12' -> (['planner', 'max_speed'], 12). The value is read as YAML;
    text that is not YAML stays a string, a duplicate key or an alias is an error."""
    key, sep, raw = text.partition("=")
    keys = [part.strip() for part in key.split(".")]
    if not sep or not all(keys):
        raise ConfigError(f"{COMMAND_LINE}: override {clip(repr(text))} is not of the form key.path=value")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except StrictYamlError as exc:
        raise ConfigError(f"{COMMAND_LINE}: {clip(text)}: {exc.problem}") from None
    except yaml.YAMLError:
        value = raw
    return keys, value


class _Layered:
    """Merges mappings while remembering which source set each key path."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sources: dict[tuple[str, ...], str] = {}
        self.layers: list[str] = []  # sources in the order they were applied

    def merge(self, data: dict[str, Any], source: str, prefix: tuple[str, ...] = ()) -> None:
        self.layers.append(source)
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
                continue
            if isinstance(target.get(key), dict):  # what the replaced mapping's keys came from
                for known in [p for p in self.sources if p[: len(path)] == path and p != path]:
                    del self.sources[known]
            target[key] = copy.deepcopy(value)
            self.sources[path] = source
            if isinstance(value, dict):
                self._mark(value, source, path)

    def _mark(self, data: dict, source: str, prefix: tuple) -> None:
        for key, value in data.items():
            self.sources[prefix + (str(key),)] = source
            if isinstance(value, dict):
                self._mark(value, source, prefix + (str(key),))

    def set(self, path: list[str], value: Any, source: str) -> None:
        """`a.b.c=value`: merged as {a: {b: {c: value}}}, so that a key the override creates
        (or a value it replaces with a mapping) is the override's, not the file's."""
        self.layers.append(source)
        for part in reversed(path[1:]):
            value = {part: value}
        self._merge_into(self.data, {path[0]: value}, source, ())

    def source_of(self, path: tuple[str, ...]) -> str:
        """Who set `path`: for a mapping (a problem of the section as a whole), the last layer
        that set anything in it; for a key nobody set, the first file."""
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.sources:
                return self._latest_under(path[:cut])
        return next(iter(self.sources.values()), "defaults")

    def _latest_under(self, prefix: tuple[str, ...]) -> str:
        rank = {source: index for index, source in enumerate(self.layers)}
        found = [source for path, source in self.sources.items() if path[: len(prefix)] == prefix]
        return max(found, key=rank.__getitem__)


def _data_path(loc: tuple, data: Any) -> tuple[str, ...]:
    """The key path of an error location in the user's data: pydantic puts the tag of a
    discriminated union (e.g. the actor type) into the location, the user never wrote it."""
    path = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            part = next((key for key in data if key == part), part)  # the key as written: True, not 1
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
    """One line: '<file>: <dotted.key>: <what was expected> (got <value>)' per problem, the
    first MAX_PROBLEMS of them joined by '; '."""
    errors = exc.errors()
    lines = [_problem(err, source_of, data) for err in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        lines.append(f"and {len(errors) - MAX_PROBLEMS} more")
    return "; ".join(lines)


def _problem(err: dict, source_of, data: Any) -> str:
    path = _data_path(err["loc"], data)
    dotted = clip(".".join(path)) or "<top>"
    if err["type"] == "extra_forbidden":
        what = "unknown key"
    elif err["type"] == "missing":
        what = "required key is missing"
    else:
        what = clip(err["msg"].removeprefix("Value error, "), 200)
    quiet = err["type"] in ("extra_forbidden", "missing") or (
        err["type"] == "value_error" and isinstance(err["input"], (dict, list)))  # a whole section
    got = "" if quiet else f" (got {echo(err['input'])})"
    return f"{clip(source_of(path), 300)}: {dotted}: {what}{got}"


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

"""configs/stack.yaml and the schema defaults are one default stack: every key the schema has
is written out in stack.yaml, with the value the schema gives it."""

from __future__ import annotations

from typing import Any

from stagepilot.core.config import DEFAULT_STACK, StackConfig, load_stack
from stagepilot.core.config_load import load_yaml


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; an empty mapping is a value of its own."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flat(value, path + "."))
        else:
            flat[path] = value
    return flat


def _differences(written: dict[str, Any], loaded: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    lines = [f"{path}: stack.yaml {loaded[path]!r}, schema {schema[path]!r}"
             for path in schema if path in loaded and loaded[path] != schema[path]]
    lines += [f"{path}: only in stack.yaml" for path in written if path not in schema]
    lines += [f"{path}: only in the schema ({schema[path]!r})" for path in schema if path not in written]
    return lines


def test_stack_yaml_and_schema_defaults_agree() -> None:
    written = _flat(load_yaml(DEFAULT_STACK))  # what the file spells out
    loaded = _flat(load_stack().model_dump(mode="json"))  # what every drive runs with
    schema = _flat(StackConfig().model_dump(mode="json"))
    differences = _differences(written, loaded, schema)
    assert not differences, "configs/stack.yaml and the schema defaults differ:\n  " + "\n  ".join(differences)


def test_the_comparison_names_each_kind_of_difference() -> None:
    schema = {"planner": {"behaviour": {"x": 2.0, "y": 1}, "z": {}}}
    written = {"planner": {"behaviour": {"x": 1.0, "w": 0}, "z": {}}}
    loaded = {"planner": {"behaviour": {"x": 1.0, "y": 1}, "z": {}}}
    assert _differences(_flat(written), _flat(loaded), _flat(schema)) == [
        "planner.behaviour.x: stack.yaml 1.0, schema 2.0",
        "planner.behaviour.w: only in stack.yaml",
        "planner.behaviour.y: only in the schema (1)",
    ]

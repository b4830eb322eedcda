"""Shared fixtures: the default stack, scenario files written on the fly, a driven world."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stagepilot.core.config import load_stack

ROOT = Path(__file__).resolve().parents[1]
SHARED_MAPS = ROOT.parent / "shared" / "maps"
# Tests of planning, control and the runtime drive on ground truth, so that they test those
# stages and not the network; tests of learned perception ask for it.
PERFECT = "perception.kind=perfect"


@pytest.fixture(scope="session")
def stack():
    return load_stack([], [PERFECT])


@pytest.fixture
def scenario_file(tmp_path):
    """Write a scenario mapping to a YAML file and return its path."""

    def write(data: dict, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def shared_map(name: str) -> Path:
    path = SHARED_MAPS / f"{name}.xodr"
    if not path.exists():
        pytest.skip(f"test data {path} is not present")
    return path

"""Shared fixtures: the default stack, scenario files written on the fly, a driven world."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

from stagepilot.core.config import load_stack
from stagepilot.core.maps import MAPS_ENV, find_map
from stagepilot.core.roadmap import MapError

ROOT = Path(__file__).resolve().parents[1]
SHARED_MAPS = ROOT.parent / "shared" / "maps"
# The real CARLA towns (Town01, Town02) are test data beside the checkout, on CI machines too;
# the map search path finds them through STAGEPILOT_MAPS unless the caller has set it.
os.environ.setdefault(MAPS_ENV, str(SHARED_MAPS))
# The learned stage remembers which network path is fastest on this machine (and caches ONNX
# exports) in its cache folder: the tests start from an empty one, as a fresh machine would.
os.environ["STAGEPILOT_CACHE"] = tempfile.mkdtemp(prefix="stagepilot-test-cache-")
# Tests of planning, control and the runtime drive on ground truth, so that they test those
# stages and not the network; tests of learned perception ask for it. Ground truth of every
# object in range (`coverage: all`): no cameras need to render for it.
PERFECT = ("perception.kind=perfect", "perception.perfect.coverage=all")


@pytest.fixture(scope="session")
def stack():
    return load_stack([], [*PERFECT])


@pytest.fixture
def scenario_file(tmp_path):
    """Write a scenario mapping to a YAML file and return its path."""

    def write(data: dict, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def shared_map(name: str) -> Path:
    """The CARLA town `name` on the map search path; skips the test when it is not there."""
    try:
        return find_map(name)
    except MapError as exc:
        pytest.skip(f"needs the CARLA town {name} ({exc})")


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI on `argv`; it must fail with status 2 and one line on stderr, returned."""
    from stagepilot.pipeline.cli import main

    status = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, captured.err
    return lines[0]


def default_signals() -> None:
    """`preexec_fn` for a child that a test signals: a shell starts background jobs with SIGINT
    ignored (and nohup ignores SIGHUP), and the child would inherit that; give it the default
    actions back, as a terminal would."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)

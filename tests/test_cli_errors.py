"""Bad input through the CLI as a user runs it: a subprocess, its exit status and its stderr.

Each case ends with exit 2 and exactly one line on stderr that names the file and the key,
or the command-line override, and never a traceback. The in-process tests beside this one
(tests/test_inputs.py) cover each case in detail; this module proves the real command does
the same.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = (ROOT / "configs" / "scenarios" / "pedestrian_crossing.yaml").read_text()


def stagepilot(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stagepilot.pipeline.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "latin1": ("scenario.yaml", SCENARIO.replace("pedestrian crosses", "pi\u00e9ton crosses").encode("latin-1")),
        "empty": ("empty.yaml", b""),
        "duplicate": ("duplicate.yaml", (SCENARIO + "\nseed: 4\nseed: 5\n").encode()),
        "bomb": ("bomb.yaml", b"a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"),
    }
    paths = {}
    for name, (filename, data) in made.items():
        path = tmp_path / filename
        path.write_bytes(data)
        paths[name] = path
    return paths


@pytest.mark.parametrize("case, expected", [
    ("latin1", "not UTF-8 text"),
    ("empty", "empty file"),
    ("duplicate", "duplicate key 'seed'"),
    ("bomb", "alias"),
])
def test_a_bad_scenario_file_is_one_line_naming_it(tmp_path, case, expected):
    path = files(tmp_path)[case]
    done = stagepilot("sim", "render", "--scenario", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert str(path) in line and expected in line


@pytest.mark.parametrize("args, expected", [
    (["config", "show", "simm.dt_s=0.1"], "command line: simm: unknown key"),
    (["config", "show", "faults.stage_delay_ms={planner: -50}"], "command line: faults.stage_delay_ms.planner"),
    (["config", "show", "planner.behaviour.max_decel=.nan"], "command line: planner.behaviour.max_decel"),
    (["sim", "render", "--out", "x", "--duration", "nan"], "--duration: expected a finite number > 0"),
    (["sim", "render", "--out", "x", "--duration", "-1"], "--duration: expected a finite number > 0"),
    (["sim", "render", "--out", "x", "--scenario", "/dev/zero"], "/dev/zero: larger than 16 MiB"),
    (["drive", "--out", ""], "--out"),
])
def test_a_bad_argument_is_one_line_naming_it(tmp_path, args, expected):
    done = stagepilot(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert expected in line


def test_a_listing_cut_short_by_its_reader_is_no_error():
    """`stagepilot sim list | head -1`: the closed pipe ends the listing quietly."""
    command = f"{sys.executable} -m stagepilot.pipeline.cli sim list | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert len(done.stdout.splitlines()) == 1
    assert done.stderr == "" and done.returncode == 0

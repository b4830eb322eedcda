"""The README and docs/results.md show what docs/results/ holds, and the docs read as product docs."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "results.py"
FORBIDDEN = re.compile(r"session|issue [0-9]|shipped before|the one before|\.\./shared", re.IGNORECASE)


def _results_module():
    spec = importlib.util.spec_from_file_location("results_page", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_and_results_page_match_the_collected_data():
    done = subprocess.run([sys.executable, str(SCRIPT), "render", "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_carry_no_development_history(path):
    hits = [f"{path.name}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
            if FORBIDDEN.search(line)]
    assert not hits, "\n".join(hits)


# ---- a collected drive, end to end, in a scratch copy -----------------------------------------------


def _run_folder(tmp_path: Path, perception_p50_ms: float, jerk_p95: float) -> Path:
    """A finished run folder, as `stagepilot drive` writes it, with a video that must not be copied."""
    run_dir = tmp_path / "runs" / "town_loop"
    run_dir.mkdir(parents=True)
    stage = {"count": 100, "p95_ms": 1.0, "p99_ms": 1.0, "max_ms": 1.0, "misses": 0}
    metrics = {
        "outcome": {"completed": True, "interrupted": False, "error": None, "collisions": 0, "red_lights": 0,
                    "route_progress_m": 775.0, "route_length_m": 780.0, "duration_s": 100.0, "frames": 100,
                    "failsafe_frames": 0, "time_model": "budget", "pipelined": False},
        "comfort": {"lon_accel_p5": -2.0, "lon_accel_p95": 1.0, "lat_accel_abs_p95": 1.0, "yaw_rate_abs_p95": 0.1,
                    "lon_jerk_abs_p95": jerk_p95, "within_bounds": jerk_p95 <= 4.13},
        "tracking": {"lateral_rms_m": 0.1, "lateral_max_m": 0.4},
        "latency": {"perception": {**stage, "p50_ms": perception_p50_ms, "budget_ms": 25.0,
                                   "over_budget": 60 if perception_p50_ms > 25 else 0},
                    "planner": {**stage, "p50_ms": 4.0, "budget_ms": 15.0, "over_budget": 0}},
        "sensor_to_actuator_ms": {"p50_ms": 45.0, "p99_ms": 45.0, "max_ms": 45.0},
        "misses": [], "failsafes": [],
    }
    run = {"scenario": {"name": "town_loop", "seed": 8}, "started": "2026-12-01T10:00:00+00:00",
           "machine": {"cpu": "Test CPU", "cores": 4, "flags": ["avx2"], "arch": "x86_64", "gpu": None}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "run.json").write_text(json.dumps(run))
    (run_dir / "config.yaml").write_text("perception: {kind: learned}\ncontroller: {kind: mpc}\n")
    (run_dir / "video.mp4").write_bytes(b"\0" * 1024)
    return run_dir


def _page(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    paths = ["--data", str(tmp_path / "data"), "--page", str(tmp_path / "results.md"),
             "--readme", str(tmp_path / "README.md")]
    return subprocess.run([sys.executable, str(SCRIPT), *paths, *args], capture_output=True, text=True)


@pytest.fixture
def readme(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# product\n\n<!-- results:begin -->\nold figures\n<!-- results:end -->\n\nmore\n")
    return path


@pytest.mark.parametrize("p50, jerk, called_out", [
    (20.0, 3.0, []),
    (26.7, 3.0, ["26.7 ms (over its 25 ms budget)", "60 of 100 (60 %)"]),
    (20.0, 5.63, ["longitudinal jerk p95 5.63 m/s³ against its bound ≤ 4.13"]),
])
def test_a_collected_drive_reaches_the_readme_and_a_missed_bar_is_called_out(tmp_path, readme, p50, jerk, called_out):
    done = _page(tmp_path, "collect-run", str(_run_folder(tmp_path, p50, jerk)))
    assert done.returncode == 0, done.stderr
    stored = tmp_path / "data" / "runs" / "town_loop"
    assert sorted(p.name for p in stored.iterdir()) == ["config.yaml", "machine.json", "metrics.json", "run.json"]
    block = readme.read_text().split("<!-- results:begin -->")[1].split("<!-- results:end -->")[0]
    assert "old figures" not in block and readme.read_text().endswith("\nmore\n")
    assert "2026-12-01, Test CPU, 4 cores" in block
    for text in called_out:
        assert text in block
    if not called_out:
        assert "over its" not in block and "inside nuPlan's comfort bounds" in block
    assert _page(tmp_path, "render", "--check").returncode == 0


def test_check_fails_when_the_readme_block_was_edited_by_hand(tmp_path, readme):
    assert _page(tmp_path, "collect-run", str(_run_folder(tmp_path, 20.0, 3.0))).returncode == 0
    readme.write_text(readme.read_text().replace("775 of 780 m", "780 of 780 m"))
    done = _page(tmp_path, "render", "--check")
    assert done.returncode == 1 and "README.md" in done.stderr


def test_a_bench_output_is_stored_with_its_machine_and_shown(tmp_path, readme):
    bench = {"controller": "mpc", "horizon": 25, "p50_ms": 0.53, "p99_ms": 0.75, "max_ms": 1.09,
             "calls": 2000, "fallbacks": 0}
    source = tmp_path / "control.json"
    source.write_text(json.dumps(bench))
    done = _page(tmp_path, "collect-bench", "control", str(source), "--date", "2026-12-01")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "data/bench/control.json").read_text()) == bench
    machine = json.loads((tmp_path / "data/bench/control.machine.json").read_text())
    assert machine["date"] == "2026-12-01" and machine["cores"]
    assert "mpc step p50 0.53 ms, p99 0.75 ms" in readme.read_text()


def test_a_file_that_is_not_a_bench_output_is_refused(tmp_path, readme):
    source = tmp_path / "other.json"
    source.write_text(json.dumps({"anything": 1}))
    done = _page(tmp_path, "collect-bench", "x", str(source))
    assert done.returncode == 2 and "not the JSON of `stagepilot bench" in done.stderr
    assert not (tmp_path / "data" / "bench").exists()


def test_the_machine_is_described_without_lscpu(monkeypatch):
    module = _results_module()

    def missing(*args, **kwargs):
        raise OSError("no such command")

    monkeypatch.setattr(module.subprocess, "run", missing)
    machine = module.machine_info()
    assert machine["cpu"] and machine["arch"] and isinstance(machine["flags"], list) and machine["gpu"] is None

"""`stagepilot drive`: the run folder, misses in metrics and trace, and Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import cv2
import pytest

from stagepilot.core.config import load_stack
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.writer import RunWriter
from stagepilot.sim.scenario import load_scenario

from conftest import PERFECT

STAGES = {"perception", "planner", "controller"}


def read_json(path):
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))


def assert_complete_run_folder(out, frames_at_least: int) -> dict:
    for name in ("config.yaml", "run.json", "metrics.json", "trace.json", "summary.png", "video.mp4"):
        assert (out / name).is_file(), name
    metrics = read_json(out / "metrics.json")
    assert set(metrics["latency"]) == STAGES
    for row in metrics["latency"].values():
        assert {"count", "p50_ms", "p95_ms", "p99_ms", "max_ms", "budget_ms", "misses"} <= set(row)
    trace = read_json(out / "trace.json")
    events = trace["traceEvents"]
    tracks = {e["args"]["name"]: e["tid"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    assert STAGES <= set(tracks)
    assert len({tracks[s] for s in STAGES}) == 3  # one track per stage
    spans = [e for e in events if e.get("ph") == "X"]
    assert spans and all({"name", "ts", "dur", "pid", "tid"} <= set(e) for e in spans)
    calls = [e for e in spans if e.get("cat") != "part"]
    assert calls and all(e["tid"] == tracks[e["name"]] for e in calls)
    # the perception stage's parts (network, decode, ...) sit on its track, inside its calls
    assert all(e["tid"] == tracks["perception"] for e in spans if e.get("cat") == "part")
    video = cv2.VideoCapture(str(out / "video.mp4"))
    count = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = video.read()
    assert ok and frame.shape[1] >= 640 and count >= frames_at_least
    summary = cv2.imread(str(out / "summary.png"))
    assert summary is not None and summary.shape[0] > 400
    return metrics


def run_drive(config, name: str, scenario_overrides: list[str], out):
    scenario = load_scenario(name, scenario_overrides)
    drive(config, scenario, observers=(RunWriter(out, config, scenario),))
    return out


def test_failsafe_miss_shows_in_metrics_and_trace(tmp_path):
    config = load_stack([], [*PERFECT, "faults.stage_delay_ms={perception: 200}", "runtime.stages.perception.on_miss=failsafe"])
    out = run_drive(config, "pedestrian_crossing", ["duration_s=6"], tmp_path / "run")
    metrics = assert_complete_run_folder(out, frames_at_least=100)
    assert metrics["latency"]["perception"]["misses"] == metrics["frames"]
    assert metrics["misses"] and metrics["failsafes"]
    assert metrics["outcome"]["failsafe_frames"] == metrics["frames"]
    trace = read_json(out / "trace.json")["traceEvents"]
    assert any(e.get("ph") == "i" and e["name"] == "budget miss" for e in trace)
    assert any(e.get("ph") == "i" and e["name"] == "failsafe" for e in trace)


def test_default_budget_drive_has_no_misses_and_a_latency_table(tmp_path):
    config = load_stack([], [*PERFECT])
    out = run_drive(config, "lead_vehicle_braking", ["duration_s=5"], tmp_path / "run")
    metrics = assert_complete_run_folder(out, frames_at_least=100)
    assert metrics["outcome"]["collisions"] == 0 and not metrics["outcome"]["interrupted"]
    assert all(row["misses"] == 0 for row in metrics["latency"].values())
    assert metrics["misses"] == [] and metrics["failsafes"] == []
    assert metrics["charged_delay_ms"]["p50_ms"] == pytest.approx(60.0)  # 40 + 15 + 5 ms of budgets
    assert metrics["sensor_to_actuator_ms"]["p50_ms"] == pytest.approx(50.0)  # applies on the next tick
    run = read_json(out / "run.json")
    assert run["scenario"]["seed"] == 2


@pytest.mark.slow
def test_ctrl_c_leaves_a_complete_run_folder_and_exits_130(tmp_path):
    out = tmp_path / "run"
    # A shell starts background jobs with SIGINT ignored, and the child would inherit that
    # (`make test &` would then drive to the end): give the child the default action back.
    proc = subprocess.Popen(
        [sys.executable, "-m", "stagepilot.pipeline.cli", "drive", "--scenario", "town_loop", "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    video = out / "video.mp4"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not video.exists() or video.stat().st_size < 2_000_000):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    metrics = assert_complete_run_folder(out, frames_at_least=20)
    assert metrics["outcome"]["interrupted"] is True
    assert not metrics["outcome"]["completed"]

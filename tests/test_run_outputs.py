"""The run folder: config and provenance, metrics, summary plot, video and Perfetto trace,
and that an interrupted run still leaves readable files. Every run here goes through the one
driver (pipeline/driver.py) with the writer as its observer."""

from __future__ import annotations

import json
import math
import os

import cv2
import numpy as np
import pytest
import yaml

from stagepilot.core.config import StackConfig, config_hash, load_stack
from stagepilot.perception.geometry import project_to_image
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.overlay import VIDEO_SIZE
from stagepilot.pipeline.provenance import cpu_shares, cpu_times, write_json
from stagepilot.pipeline.writer import RunWriter
from stagepilot.sim.render import CameraSpec, project_points
from stagepilot.sim.scenario import load_scenario

from conftest import PERFECT

TICKS = 40
# The planner is 30 ms late on every frame and holds its last plan; the camera freezes at
# 1.2 s, so its frames go stale and the fail-safe brakes.
FAULTS = ["faults.stage_delay_ms={planner: 30}", "runtime.stages.planner.on_miss=hold", "faults.frozen_camera_from_s=1.2"]
STAGES = ("perception", "planner", "controller")


def _strict_json(path) -> dict:
    """Parse rejecting NaN / Infinity, which are not JSON."""
    def reject(token):
        raise ValueError(f"{path}: {token} in JSON")
    return json.loads(path.read_text(), parse_constant=reject)


def _video(path) -> tuple[int, tuple[int, int]]:
    """(frames decoded, (width, height)) of an mp4."""
    capture = cv2.VideoCapture(str(path))
    frames, size = 0, None
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames, size = frames + 1, (image.shape[1], image.shape[0])
    capture.release()
    return frames, size


@pytest.fixture(scope="module")
def scenario():
    return load_scenario("lead_vehicle_braking")


@pytest.fixture(scope="module")
def stack():
    return load_stack([], [*PERFECT, *FAULTS])


@pytest.fixture(scope="module")
def run(stack, scenario, tmp_path_factory):
    """40 ticks of the real stack through the one driver, written by the run writer."""
    out = tmp_path_factory.mktemp("run")
    result = drive(stack, scenario, observers=(RunWriter(out, stack, scenario),), max_time_s=(TICKS - 1) * stack.sim.dt_s)
    return out, result


def test_config_and_run_json_reproduce_the_run(run, stack, scenario) -> None:
    out, _ = run
    saved = StackConfig.model_validate(yaml.safe_load((out / "config.yaml").read_text()))
    assert config_hash(saved) == config_hash(stack)
    info = _strict_json(out / "run.json")
    assert info["config_hash"] == config_hash(stack)
    assert info["scenario"]["name"] == "lead_vehicle_braking" and info["scenario"]["seed"] == scenario.seed
    assert info["perception_seed"] == stack.perception.perfect.seed
    assert info["versions"]["python"] and info["versions"]["numpy"] == np.__version__
    assert "commit" in info["git"] and info["started"] and info["host"]
    if cpu_times() is not None:  # Linux: where the machine's CPU time went while the stages were timed
        cpu = info["host_cpu"]
        assert cpu["cores"] == os.cpu_count()
        assert cpu["busy_percent"] > 0 and 0 <= cpu["steal_percent"] <= 100
        assert abs(cpu["busy_percent"] + cpu["idle_percent"] + cpu["steal_percent"] - 100) < 0.2


def test_cpu_shares_split_the_machine_time_into_busy_idle_and_stolen(tmp_path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  1000 0 200 5000 100 0 0 50 0 0\ncpu0 ...\n")
    before = cpu_times(str(stat))
    # 1 s on 2 cores at 100 ticks/s: 120 user, 20 system, 40 idle, 0 iowait, 20 stolen
    stat.write_text("cpu  1120 0 220 5040 100 0 0 70 0 0\n")
    shares = cpu_shares(before, cpu_times(str(stat)))
    assert shares["busy_percent"] == 70.0 and shares["idle_percent"] == 20.0 and shares["steal_percent"] == 10.0
    assert cpu_shares(before, before) is None  # no time passed
    assert cpu_times(str(tmp_path / "absent")) is None and cpu_shares(None, before) is None
    stat.write_text("intr 1 2 3\n")
    assert cpu_times(str(stat)) is None  # not a /proc/stat


def test_metrics_hold_latency_table_misses_and_failsafes(run, stack) -> None:
    out, result = run
    metrics = _strict_json(out / "metrics.json")
    assert metrics == json.loads(json.dumps(result.metrics))  # the file is the result tests read
    assert metrics["frames"] == TICKS and metrics["outcome"]["frames"] == TICKS
    # Frozen from 1.2 s: the first frozen frame is seen as a repeat at 1.25 s; fail-safe from there.
    [stretch] = metrics["failsafes"]
    assert stretch["t"] == pytest.approx(1.25) and stretch["t_end"] == pytest.approx(1.95)
    assert stretch["frames"] == 15 == metrics["outcome"]["failsafe_frames"] and "frozen" in stretch["reason"]
    table = metrics["latency"]
    assert set(table) == set(STAGES)
    planned = TICKS - stretch["frames"]  # the fail-safe skips planner and controller
    assert [table[name]["count"] for name in STAGES] == [TICKS, planned, planned]
    for name in STAGES:
        row = table[name]
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["budget_ms"] == getattr(stack.runtime.stages, name).budget_ms
    assert table["planner"]["misses"] == planned and table["perception"]["misses"] == 0
    assert metrics["misses"][0] == {"t": 0.0, "frame": 0, "line": "planner: 45.0 ms > 15 ms budget (hold)"}
    # 40 + 15 (held plan, at the planner's deadline) + 5 ms; the first frame waits for its late plan.
    assert metrics["charged_delay_ms"]["p50_ms"] == pytest.approx(60.0)
    assert metrics["charged_delay_ms"]["max_ms"] == pytest.approx(90.0)
    # The held plan is the previous frame's (late, but ready by this deadline): its camera frame
    # is one tick older, and the command applies a tick after this one: 100 ms from capture.
    assert metrics["sensor_to_actuator_ms"]["p50_ms"] == pytest.approx(100.0)
    assert metrics["sensor_to_actuator_ms"]["max_ms"] == pytest.approx(100.0)
    assert metrics["tracking"]["lateral_max_m"] < 0.5


def test_summary_is_a_png(run) -> None:
    out, _ = run
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cv2.imread(str(out / "summary.png")).shape == (1000, 1600, 3)


def test_video_has_one_frame_per_tick(run) -> None:
    out, _ = run
    assert _video(out / "video.mp4") == (TICKS, VIDEO_SIZE)


def test_trace_has_a_named_track_per_stage_misses_and_failsafes(run) -> None:
    out, result = run
    events = _strict_json(out / "trace.json")["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    planned = TICKS - result.outcome["failsafe_frames"]
    assert sum(e["name"] in STAGES for e in complete) == TICKS + 2 * planned
    # the collector's passes between ticks, on their own track (pipeline/between_ticks.py)
    passes = result.between_ticks["garbage_collections"]["count"]
    assert sum(e["name"] == "between ticks" for e in complete) == passes > 0
    for event in complete:
        assert {"name", "ts", "dur", "pid", "tid"} <= set(event)
        assert isinstance(event["ts"], int) and isinstance(event["dur"], int) and event["dur"] >= 0
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert sorted(names.values()) == sorted([*STAGES, "between ticks"])  # exactly one per stage, and the loop's
    assert all(names[e["tid"]] == e["name"] for e in complete)
    instants = [e for e in events if e["ph"] == "i"]
    assert all(e["s"] == "t" for e in instants)
    assert sum(e["name"] == "budget miss" and names[e["tid"]] == "planner" for e in instants) == planned
    assert sum(e["name"] == "failsafe" for e in instants) == TICKS - planned


class _Crash:
    """An observer that raises `error` on the 8th frame, as a fault or Ctrl-C would."""

    def __init__(self, error: BaseException):
        self.error, self.frames = error, 0

    def start(self, sim, obs) -> None:
        pass

    def frame(self, obs, record) -> None:
        self.frames += 1
        if self.frames == 8:
            raise self.error

    def end(self, result) -> None:
        pass


@pytest.mark.parametrize("error", [RuntimeError("planner crashed"), KeyboardInterrupt()])
def test_a_run_that_dies_mid_drive_leaves_readable_outputs(stack, scenario, tmp_path, error) -> None:
    observers = (RunWriter(tmp_path, stack, scenario), _Crash(error))
    if isinstance(error, KeyboardInterrupt):
        result = drive(stack, scenario, observers=observers)
        assert result.interrupted and result.outcome["frames"] == 8
    else:
        with pytest.raises(RuntimeError, match="planner crashed"):
            drive(stack, scenario, observers=observers)
    assert _video(tmp_path / "video.mp4") == (8, VIDEO_SIZE)
    metrics = _strict_json(tmp_path / "metrics.json")
    assert metrics["outcome"]["interrupted"] is isinstance(error, KeyboardInterrupt)
    assert (metrics["outcome"]["error"] is None) is isinstance(error, KeyboardInterrupt)
    assert metrics["frames"] == 8 and not metrics["outcome"]["completed"]
    assert metrics["comfort"] is None  # too short to judge
    assert _strict_json(tmp_path / "trace.json")["traceEvents"]
    assert cv2.imread(str(tmp_path / "summary.png")) is not None


@pytest.mark.parametrize("pitch_deg, yaw_deg", [(0.0, 0.0), (3.0, 0.0), (8.0, -20.0)])
def test_overlay_projection_matches_the_renderer(pitch_deg, yaw_deg) -> None:
    spec = CameraSpec("front", 640, 360, 90.0, 1.5, 0.2, 1.6, pitch_deg=pitch_deg, yaw_deg=yaw_deg)
    points = np.array([[12.0, 0.0, 0.0], [30.0, -3.5, 0.0], [8.0, 2.0, 1.2], [-4.0, 0.0, 0.0], [1.6, 0.0, 0.0]])
    uv, in_front = project_to_image(points, spec.K, spec.T_ego_cam)
    expected, _ = project_points(spec, (0.0, 0.0, 0.0), points)
    assert in_front.tolist() == [True, True, True, False, False]  # behind the camera and too near: dropped
    np.testing.assert_allclose(uv[in_front], expected[in_front], atol=1e-6)
    assert np.isnan(uv[~in_front]).all()


def test_json_outputs_turn_nan_into_null(tmp_path) -> None:
    write_json(tmp_path / "x.json", {"a": math.nan, "b": np.float32(1.5), "c": [np.int64(3), math.inf]})
    assert _strict_json(tmp_path / "x.json") == {"a": None, "b": 1.5, "c": [3, None]}

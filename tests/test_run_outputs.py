"""The run folder: config and provenance, metrics, summary plot, video and Perfetto trace,
and that an interrupted run still leaves readable files."""

from __future__ import annotations

import json
import math
import time

import cv2
import numpy as np
import pytest
import yaml

from stagepilot.core.config import StackConfig, config_hash
from stagepilot.core.messages import Control, Event
from stagepilot.pipeline.run_outputs import (
    VIDEO_SIZE,
    FrameRecord,
    RunWriter,
    project_to_image,
    write_json,
)
from stagepilot.pipeline.stack import DrivingStack
from stagepilot.pipeline.trace import ChromeTrace
from stagepilot.sim.render import CameraSpec, project_points
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.world import EmbeddedSimulator

TICKS = 40
MISS_FRAME = 20
MISS_LINE = "planner: 23.1 ms > 15 ms budget (hold)"
FAILSAFE_FRAMES = range(25, 28)
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
def drive(stack, scenario, tmp_path_factory):
    """40 ticks of the real stack, timed per stage, with one planner miss and a 3-frame
    fail-safe injected into the records; closed twice."""
    out = tmp_path_factory.mktemp("run")
    sim = EmbeddedSimulator(stack, render=True)
    obs = sim.reset(scenario)
    driver = DrivingStack(stack, road_map=sim.road_map)
    trace, wall0 = ChromeTrace(), time.perf_counter()
    writer = RunWriter(out, stack, scenario, sim)
    for i in range(TICKS):
        stage_ms, outputs = {}, []
        steps = {"perception": lambda o, _: driver.perception.step(o),
                 "planner": lambda o, out: driver.planner.step(o.ego, o.route, out[0]),
                 "controller": lambda o, out: driver.controller.step(o.ego, out[1], o.t)}
        for name, step in steps.items():
            start = time.perf_counter()
            outputs.append(step(obs, outputs))
            stage_ms[name] = (time.perf_counter() - start) * 1e3
            trace.stage(name, start - wall0, stage_ms[name] / 1e3, obs.frame)
        misses, events = (), ()
        if i == MISS_FRAME:
            misses = (MISS_LINE,)
            events = (Event(obs.t, "budget_miss", MISS_LINE),)
            trace.instant("budget miss", time.perf_counter() - wall0, stage="planner", args={"detail": MISS_LINE})
        perception, plan, control = outputs
        writer.add(obs, FrameRecord(
            t=obs.t, frame=obs.frame, ego=obs.ego, control=control, plan=plan, perception=perception,
            events=events, stage_ms=stage_ms, charged_delay_s=0.05, misses=misses,
            failsafe="stale input: perception is 600 ms old" if i in FAILSAFE_FRAMES else None))
        trace.counter("speed", time.perf_counter() - wall0, {"m_per_s": obs.ego.speed})
        obs = sim.step(control)
    writer.close({"completed": False, "collision": False, "duration_s": TICKS * sim.dt}, None, trace)
    first = (out / "metrics.json").read_text()
    writer.close({"completed": True}, None, ChromeTrace())  # a second close changes nothing
    assert (out / "metrics.json").read_text() == first
    return out


def test_config_and_run_json_reproduce_the_run(drive, stack, scenario) -> None:
    saved = StackConfig.model_validate(yaml.safe_load((drive / "config.yaml").read_text()))
    assert config_hash(saved) == config_hash(stack)
    run = _strict_json(drive / "run.json")
    assert run["config_hash"] == config_hash(stack)
    assert run["scenario"]["name"] == "lead_vehicle_braking" and run["scenario"]["seed"] == scenario.seed
    assert run["perception_seed"] == stack.perception.perfect.seed
    assert run["versions"]["python"] and run["versions"]["numpy"] == np.__version__
    assert "commit" in run["git"] and run["started"] and run["host"]


def test_metrics_hold_latency_table_events_misses_and_failsafes(drive, stack) -> None:
    metrics = _strict_json(drive / "metrics.json")
    assert metrics["frames"] == TICKS
    assert metrics["outcome"] == {"completed": False, "collision": False, "duration_s": TICKS * stack.sim.dt_s}
    table = metrics["latency"]
    assert set(table) == set(STAGES)
    for name in STAGES:
        row = table[name]
        assert row["count"] == TICKS
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["budget_ms"] == getattr(stack.runtime.stages, name).budget_ms
    assert table["planner"]["misses"] == 1 and table["perception"]["misses"] == 0
    assert [e["kind"] for e in metrics["events"]] == ["budget_miss"]
    assert metrics["misses"] == [{"t": pytest.approx(MISS_FRAME * stack.sim.dt_s), "frame": MISS_FRAME,
                                  "line": MISS_LINE}]
    assert len(metrics["failsafes"]) == 1 and metrics["failsafes"][0]["frames"] == len(FAILSAFE_FRAMES)
    assert metrics["sensor_to_actuator_ms"] == {"p50_ms": 50.0, "p99_ms": 50.0, "max_ms": 50.0}
    assert metrics["comfort"]["within_bounds"] is True
    assert metrics["tracking"]["lateral_max_m"] < 0.5


def test_summary_is_a_png(drive) -> None:
    assert (drive / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cv2.imread(str(drive / "summary.png")).shape == (1000, 1600, 3)


def test_video_has_one_frame_per_tick(drive) -> None:
    assert _video(drive / "video.mp4") == (TICKS, VIDEO_SIZE)


def test_trace_has_a_named_track_per_stage_and_the_miss(drive) -> None:
    events = _strict_json(drive / "trace.json")["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == TICKS * len(STAGES)
    for event in complete:
        assert {"name", "ts", "dur", "pid", "tid"} <= set(event)
        assert isinstance(event["ts"], int) and isinstance(event["dur"], int) and event["dur"] >= 0
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert sorted(names.values()) == sorted(STAGES)  # exactly one per stage
    assert all(names[e["tid"]] == e["name"] for e in complete)
    [miss] = [e for e in events if e["ph"] == "i"]
    assert miss["s"] == "t" and names[miss["tid"]] == "planner"
    assert sum(e["ph"] == "C" for e in events) == TICKS


@pytest.mark.parametrize("error", [RuntimeError("planner crashed"), KeyboardInterrupt()])
def test_a_run_that_dies_mid_drive_leaves_readable_outputs(stack, scenario, tmp_path, error) -> None:
    sim = EmbeddedSimulator(stack, render=True)
    obs = sim.reset(scenario)
    control = Control(throttle=0.3)
    with pytest.raises(type(error)), RunWriter(tmp_path, stack, scenario, sim) as writer:
        for _ in range(8):
            writer.add(obs, FrameRecord(t=obs.t, frame=obs.frame, ego=obs.ego, control=control, plan=None,
                                        perception=None, events=(), stage_ms={"perception": math.nan},
                                        charged_delay_s=0.0))
            obs = sim.step(control)
        raise error
    assert _video(tmp_path / "video.mp4") == (8, VIDEO_SIZE)
    metrics = _strict_json(tmp_path / "metrics.json")
    assert metrics["outcome"]["interrupted"] is isinstance(error, KeyboardInterrupt)
    assert metrics["comfort"] is None  # too short to judge
    assert metrics["latency"]["perception"]["p50_ms"] is None  # NaN became null
    assert _strict_json(tmp_path / "trace.json")["traceEvents"]
    assert cv2.imread(str(tmp_path / "summary.png")) is not None
    writer.close({"completed": True})  # closing again is harmless
    assert _strict_json(tmp_path / "metrics.json") == metrics
    with pytest.raises(RuntimeError, match="after close"):
        writer.add(obs, FrameRecord(t=obs.t, frame=obs.frame, ego=obs.ego, control=control, plan=None,
                                    perception=None, events=(), stage_ms={}, charged_delay_s=0.0))


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

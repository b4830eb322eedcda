"""Non-finite numbers never drive the car: a checkpoint with NaN weights is refused at load, and
NaN from the network, the tracker, the planner or the controller fails safe with its reason."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from stagepilot.core.config import load_stack
from stagepilot.core.messages import Control, EgoState
from stagepilot.perception.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from stagepilot.perception.fusion import Placed
from stagepilot.perception.learned import SHIPPED_CHECKPOINT, LearnedPerception
from stagepilot.perception.tracking import Measurement, Tracker
from stagepilot.pipeline import stack as stack_module
from stagepilot.pipeline.driver import drive
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.world import EmbeddedSimulator

from conftest import PERFECT

BROKEN_FROM_S = 1.0  # [s] sim time from which a stage's output turns NaN
DRIVE_S = 3.0  # [s] from 6 m/s the fail-safe brake stops the car in about 1.4 s
SCENARIO = ("lead_vehicle_braking", ["ego.initial_speed=6.0"])


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    """The shipped checkpoint with NaN in 5 weights of its stride-8 class head."""
    model, meta = load_checkpoint(SHIPPED_CHECKPOINT)
    with torch.no_grad():
        model.cls_out.weight.view(-1)[:5] = math.nan
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model, meta)


@pytest.fixture
def empty_checkpoint(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    return path


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensor(nan_checkpoint):
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(nan_checkpoint)
    assert str(caught.value) == f"{nan_checkpoint}: weights are not finite: cls_out.weight (5 NaN)"


def test_an_empty_checkpoint_is_a_checkpoint_error(empty_checkpoint):
    with pytest.raises(CheckpointError, match=r"empty\.pt: not a readable checkpoint \(empty file\)"):
        load_checkpoint(empty_checkpoint)


@pytest.mark.parametrize("which, expected", [("nan", "weights are not finite: cls_out.weight (5 NaN)"),
                                             ("empty", "not a readable checkpoint (empty file)")])
def test_the_drive_command_names_a_bad_checkpoint_in_one_line(request, tmp_path, which, expected):
    path = request.getfixturevalue(f"{which}_checkpoint")
    proc = subprocess.run([sys.executable, "-m", "stagepilot.pipeline.cli", "drive", "--scenario", "lead_vehicle_braking",
                           "--quiet", "--out", str(tmp_path / "run"), f"perception.learned.checkpoint={path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"stagepilot: error: {path}: {expected}"


def _stage_with_hook(build, sim, layer: str):
    """build_perception whose network's `layer` outputs NaN from BROKEN_FROM_S of `sim`'s time."""

    def hooked(config, road_map=None, signal_heads=None):
        stage = build(config, road_map, signal_heads)
        getattr(stage.runner.model, layer).register_forward_hook(
            lambda module, inputs, out: out * math.nan if sim.t >= BROKEN_FROM_S - 1e-9 else None)
        return stage

    return hooked


def _assert_failsafe_after_break(result, reason: str) -> None:
    records = result.records
    assert all(r.failsafe is None for r in records if r.t < BROKEN_FROM_S - 1e-9)
    assert all(r.failsafe == reason for r in records if r.t >= BROKEN_FROM_S - 1e-9)
    assert [f["reason"] for f in result.metrics["failsafes"]] == [reason]
    assert result.metrics["failsafes"][0]["t"] == pytest.approx(BROKEN_FROM_S)
    marks = [e for e in result.trace.to_json()["traceEvents"] if e["name"] == "failsafe"]
    assert marks and all(e["args"]["reason"] == reason for e in marks)
    assert result.outcome["collisions"] == 0
    assert max(abs(r.ego.speed) for r in records if r.t >= DRIVE_S - 0.3) < 0.05  # stopped


def test_a_network_that_turns_nan_stops_the_car(monkeypatch):
    # the hook sits on the torch module: the network runs in torch, whichever path `auto` would time fastest
    config = load_stack([], ["perception.kind=learned", "perception.learned.backend=torch"])
    sim = EmbeddedSimulator(config, render=True)
    monkeypatch.setattr(stack_module, "build_perception", _stage_with_hook(stack_module.build_perception, sim, "cls_out"))
    result = drive(config, load_scenario(*SCENARIO), sim=sim, max_time_s=DRIVE_S)
    assert min(r.ego.speed for r in result.records if r.t <= BROKEN_FROM_S) > 5.0  # driving when it broke
    _assert_failsafe_after_break(result, "unusable input: network output is not finite (cls_s8)")


class _NanFrom:
    """A real stage whose output gets a NaN from BROKEN_FROM_S (sim time) on."""

    def __init__(self, stage, corrupt):
        self.stage, self.corrupt, self.name = stage, corrupt, stage.name

    def step(self, *args):
        out = self.stage.step(*args)
        t = args[-1] if len(args) > 1 else args[0].t  # planner, controller: (..., t); perception: (obs,)
        return self.corrupt(out) if t >= BROKEN_FROM_S - 1e-9 else out


def _nan_plan(plan):
    return dataclasses.replace(plan, v=np.where(np.arange(len(plan.v)) == 3, math.nan, plan.v))


def _nan_detection(perception):
    broken = dataclasses.replace(perception.detections[0], position=(math.nan, 0.0))
    return dataclasses.replace(perception, detections=(broken, *perception.detections[1:]))


@pytest.mark.parametrize("builder, corrupt, reason", [
    ("build_planner", _nan_plan, "unusable output: plan is not finite"),
    ("build_controller", lambda c: dataclasses.replace(c, throttle=math.nan), "unusable output: control is not finite"),
    ("build_perception", _nan_detection, "unusable input: perception is not finite"),
])
def test_a_stage_that_outputs_nan_fails_safe_with_its_reason(monkeypatch, builder, corrupt, reason):
    real = getattr(stack_module, builder)
    monkeypatch.setattr(stack_module, builder, lambda *args, **kwargs: _NanFrom(real(*args, **kwargs), corrupt))
    config = load_stack([], [*PERFECT])
    result = drive(config, load_scenario(*SCENARIO), render=False, max_time_s=DRIVE_S)
    _assert_failsafe_after_break(result, reason)
    # The frames record the last good plan, never the broken one.
    assert all(np.isfinite(r.plan.v).all() for r in result.records if r.plan is not None)


def test_a_track_that_turns_nan_is_dropped_and_association_goes_on():
    tracker = Tracker(load_stack().perception.learned.tracker)
    ego = EgoState(x=0.0, y=0.0, yaw=0.0, speed=5.0, yaw_rate=0.0, accel=0.0, steer_angle=0.0)
    car = Measurement("vehicle", 0.9, (10.0, 0.0), (4.5, 1.8, 1.5))
    broken = dataclasses.replace(car, position=(math.nan, 0.0))
    for k in range(2):
        tracker.update(0.05 * k, ego, [car])
    detections = tracker.update(0.1, ego, [car, broken])  # a NaN track starts, and is dropped
    assert tracker.dropped_nonfinite == (1,)
    assert [d.track_id for d in detections] == [0] and math.isfinite(detections[0].position[0])
    assert [d.track_id for d in tracker.update(0.15, ego, [car])] == [0] and tracker.dropped_nonfinite == ()


def test_the_learned_stage_flags_a_frame_whose_track_went_nan(monkeypatch):
    config = load_stack([], ["perception.kind=learned"])
    sim = EmbeddedSimulator(config, render=True)
    first = sim.reset(load_scenario(*SCENARIO))
    stage = LearnedPerception(config.perception.learned, sim.road_map)
    assert stage.step(first).usable
    nan_car = Measurement("vehicle", 0.9, (math.nan, 0.0), (4.5, 1.8, 1.5))
    monkeypatch.setattr(stage, "_measurements", lambda out, image, top=0: ([Placed(nan_car, cut=False)], []))
    seen = stage.step(sim.step(Control()))
    assert not seen.usable and seen.reason.startswith("tracker state is not finite (dropped track [")
    obs = sim.step(Control())
    assert stage.step(dataclasses.replace(obs, ego=dataclasses.replace(obs.ego, x=math.nan))).reason == \
        "the ego state is not finite"

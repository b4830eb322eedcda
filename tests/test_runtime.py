"""The staged runtime: time models, budget misses and their policies, fail-safes, pipelining."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely.geometry import Polygon

from stagepilot.core.config import ConfigError, load_stack
from stagepilot.pipeline import driver
from stagepilot.pipeline.runtime import StagedRuntime
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.world import EmbeddedSimulator

from conftest import PERFECT


def drive(overrides: list[str], scenario: str = "pedestrian_crossing", render: bool = False,
          max_time_s: float | None = None, on_frame=None):
    """Drive through the one driver; (simulator, drive result)."""
    config = load_stack([], [*PERFECT, *overrides])
    sim = EmbeddedSimulator(config, render=render)
    result = driver.drive(config, load_scenario(scenario), sim=sim, max_time_s=max_time_s,
                          on_frame=on_frame and (lambda o, r: on_frame(sim, o, r)))
    return sim, result


def fingerprint(runtime) -> bytes:
    arrays = [np.array([getattr(r.ego, k) for r in runtime.records]) for k in ("x", "y", "yaw", "speed")]
    arrays += [np.array([r.t for r in runtime.records]), np.array([r.charged_delay_s for r in runtime.records])]
    controls = np.array([(r.control.steer, r.control.throttle, r.control.brake) for r in runtime.records])
    decisions = "|".join(r.plan.reason if r.plan else "" for r in runtime.records).encode()
    return b"".join(a.tobytes() for a in arrays) + controls.tobytes() + decisions


def test_budget_model_is_bitwise_repeatable_and_pipelining_changes_nothing():
    runs = [drive(["runtime.time_model=budget"], render=True, max_time_s=8.0)[1] for _ in range(2)]
    pipelined = drive(["runtime.time_model=budget", "runtime.pipelined=true"], render=True, max_time_s=8.0)[1]
    assert fingerprint(runs[0]) == fingerprint(runs[1])
    assert fingerprint(runs[0]) == fingerprint(pipelined)
    assert len(runs[0].records) == 161
    # 40 + 15 + 5 ms of budgets: every command is charged 60 ms and applies one tick later.
    assert {round(r.charged_delay_s, 6) for r in runs[0].records} == {0.06}


def test_the_collector_works_between_ticks_and_is_back_as_it_was_after_the_drive():
    """No automatic collection runs inside a stage during a drive; the loop collects every
    COLLECT_EVERY ticks, between them, and says how long that took."""
    import gc

    from stagepilot.pipeline.between_ticks import COLLECT_EVERY

    states = []
    frozen_before = gc.get_freeze_count()
    _, result = drive(["runtime.time_model=budget", "runtime.pipelined=true"], max_time_s=3.0,
                      on_frame=lambda sim, obs, record: states.append(gc.isenabled()))
    assert states and not any(states)
    assert gc.isenabled() and gc.get_freeze_count() == frozen_before
    collections = result.between_ticks["garbage_collections"]
    assert collections["every_ticks"] == COLLECT_EVERY
    assert collections["count"] == sum(r.frame % COLLECT_EVERY == 0 for r in result.records)
    assert collections["max_ms"] >= collections["p50_ms"] > 0


def test_ideal_model_charges_nothing():
    _, runtime = drive(["runtime.time_model=ideal"], max_time_s=3.0)
    assert {r.charged_delay_s for r in runtime.records} == {0.0}


def test_measured_model_charges_the_measured_latencies():
    # Budgets far above any wall-clock time, so that a loaded machine causes no misses.
    roomy = [f"runtime.stages.{name}.budget_ms=400" for name in ("perception", "planner", "controller")]
    _, runtime = drive(["runtime.time_model=measured", *roomy, "runtime.stale_input_s=2.0"], max_time_s=5.0)
    checked = 0
    for r in runtime.records:
        if r.misses or r.failsafe:
            continue
        assert r.charged_delay_s * 1e3 == pytest.approx(sum(r.stage_ms.values()), rel=1e-9, abs=1e-9)
        checked += 1
    assert checked > 50
    table = runtime.latency
    assert set(table) == {"perception", "planner", "controller"}
    assert table["planner"]["count"] == len(runtime.records)
    assert 0 < table["planner"]["p50_ms"] <= table["planner"]["p99_ms"] <= table["planner"]["max_ms"]


def _pedestrian_watch():
    seen = {"closest": math.inf, "stopped": False}

    def watch(sim, obs, record):
        ped = sim.pedestrians[0].agent
        gap = Polygon(sim.ego_agent().corners()).distance(Polygon(ped.corners()))
        seen["closest"] = min(seen["closest"], gap)
        seen["stopped"] |= obs.ego.speed < 0.05 and gap < 15.0

    return seen, watch


def test_late_perception_with_hold_still_stops_for_the_pedestrian():
    seen, watch = _pedestrian_watch()
    sim, runtime = drive(["faults.stage_delay_ms={perception: 200}", "runtime.stages.perception.on_miss=hold"],
                         on_frame=watch)
    assert runtime.latency["perception"]["misses"] == len(runtime.records)
    # Until the first late output is ready there is nothing to hold: those frames wait for
    # their own late output, which is no older than a held one would be.
    assert all(r.failsafe is None for r in runtime.records)
    assert all(r.charged_delay_s == pytest.approx(0.26, abs=1e-6) for r in runtime.records[:4])
    # The planner works on perception that is 200 ms old, moved into the current frame.
    assert all(r.t - r.perception.t == pytest.approx(0.2, abs=1e-6) for r in runtime.records[5:])
    # Sensor to actuator counts from that old frame's capture: 200 ms + 60 ms charged, on the
    # next tick, never the charged 60 ms alone.
    assert all(r.sensor_to_actuator_s >= 0.2 for r in runtime.records)
    assert all(r.sensor_to_actuator_s == pytest.approx(0.25, abs=1e-6) for r in runtime.records[5:])
    assert seen["stopped"] and seen["closest"] >= 1.0
    assert "collision" not in [e.kind for e in sim.events]
    assert sim.monitor.route_completed


def test_late_perception_with_failsafe_brakes_to_a_stop():
    sim, runtime = drive(["faults.stage_delay_ms={perception: 200}", "runtime.stages.perception.on_miss=failsafe"],
                         max_time_s=10.0)
    assert runtime.latency["perception"]["misses"] > 0
    assert all(r.failsafe == "perception missed its budget" for r in runtime.records)
    assert sim.ego.state.speed == 0.0
    assert any(e["name"] == "budget miss" for e in runtime.trace.to_json()["traceEvents"])


@pytest.mark.parametrize("fault", ["faults.frozen_camera_from_s=3.0", "faults.nan_images_from_s=3.0",
                                   "faults.blank_images_from_s=3.0"])
def test_a_broken_camera_stops_the_car(fault):
    sim, runtime = drive([fault], render=True, max_time_s=9.0)
    before = [r for r in runtime.records if r.t < 2.9]
    after = [r for r in runtime.records if r.t > 3.2]
    assert all(r.failsafe is None for r in before)
    assert all(r.failsafe is not None and ("unusable" in r.failsafe or "stale" in r.failsafe) for r in after)
    assert sim.ego.state.speed == 0.0  # it did not drive on blind


def test_pipelined_fail_safe_and_measured_drives_run_through():
    faulty = ["faults.frozen_camera_from_s=1.0"]
    sequential = drive(faulty, render=True, max_time_s=4.0)[1]
    pipelined = drive([*faulty, "runtime.pipelined=true"], render=True, max_time_s=4.0)[1]
    assert any(r.failsafe for r in pipelined.records)
    # A fail-safe command (25 ms) is due within a tick: pipelined applies it one tick later.
    assert len(pipelined.records) == len(sequential.records) == 81
    measured = drive(["runtime.time_model=measured", "runtime.pipelined=true"], max_time_s=3.0)[1]
    assert len(measured.records) == 61


def test_an_older_frames_late_command_never_replaces_a_newer_one():
    config = load_stack([], [*PERFECT, "runtime.time_model=measured"])
    runtime = StagedRuntime(config, None)
    from stagepilot.core.messages import Control

    slow, fast = Control(throttle=0.1), Control(throttle=0.9)
    runtime._schedule = {5: (1, slow), 3: (2, fast)}  # frame 1 took longer than frame 2
    assert runtime.command_for_step(3) == fast
    assert runtime.command_for_step(5) == fast  # frame 1's command arrives late: dropped


def test_held_perception_moves_the_stop_line_and_plans_are_stamped_now():
    seen = {}

    def watch(sim, obs, record):
        if record.perception.traffic_light is not None and "light" not in seen:
            seen["light"] = (obs.t, record)

    sim, runtime = drive(["faults.stage_delay_ms={perception: 200}"], scenario="red_light_junction",
                         max_time_s=12.0, on_frame=watch)
    assert all(r.plan is None or r.plan.t == r.t for r in runtime.records)
    assert "stop_light" in [r.plan.decision for r in runtime.records if r.plan is not None]
    assert "red_light" not in [e.kind for e in sim.events]
    # The held stop line, moved into the current frame, is where the map says it is.
    _, record = seen["light"]
    light = next(l for l in sim.lights if l.id == record.perception.traffic_light.id)
    ego = record.ego
    x0, y0 = record.perception.traffic_light.stop_line[:2]
    wx = ego.x + math.cos(ego.yaw) * x0 - math.sin(ego.yaw) * y0
    wy = ego.y + math.sin(ego.yaw) * x0 + math.cos(ego.yaw) * y0
    assert math.hypot(wx - light.stop_line.p0[0], wy - light.stop_line.p0[1]) < 0.05


def test_pipelining_needs_latency():
    config = load_stack([], [*PERFECT, "runtime.time_model=ideal", "runtime.pipelined=true"])
    with pytest.raises(ConfigError, match="runtime.pipelined"):
        StagedRuntime(config, None)


@pytest.mark.slow
@pytest.mark.parametrize("time_model", ["ideal", "budget", "measured"])
def test_the_mpc_compensates_the_charged_delay_plus_its_lag_and_keeps_the_curve(time_model, monkeypatch):
    """The MPC is told, before each step, the tick at which its command will apply under the
    active time model; it compensates that plus `actuator_lag_s`. On the curvy road at 15 m/s
    the lane is kept within 0.1 m RMS under every time model."""
    from stagepilot.control.mpc import MpcTracker

    used = []
    step = MpcTracker.step

    def watched(self, ego, plan, t):
        used.append(self.compensation_s)
        return step(self, ego, plan, t)

    monkeypatch.setattr(MpcTracker, "step", watched)
    config = load_stack([], [*PERFECT, f"runtime.time_model={time_model}"])
    lag, dt = config.controller.mpc.actuator_lag_s, config.sim.dt_s
    _, result = drive([f"runtime.time_model={time_model}"], scenario="curve_lane_keeping")
    ran = [r for r in result.records if r.failsafe is None]
    assert len(used) == len(ran) > 1000
    applies = [math.floor(r.charged_delay_s / dt + 0.5) * dt for r in ran]  # the tick the command applied
    told = [r.controller_delay_s for r in ran]
    assert used == pytest.approx([d + lag for d in told], abs=1e-12)
    if time_model == "measured":  # its own latency is estimated from its last one: a tick off at worst
        assert all(abs(a - d) <= dt + 1e-9 for a, d in zip(applies, told))
        assert sum(a == pytest.approx(d) for a, d in zip(applies, told)) >= 0.99 * len(ran)
    else:
        assert told == pytest.approx(applies, abs=1e-12)
        assert set(told) == ({0.0} if time_model == "ideal" else {dt})
    assert result.metrics["tracking"]["lateral_rms_m"] <= 0.1, result.metrics["tracking"]
    assert "route_completed" in result.kinds()

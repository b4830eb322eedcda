"""Closed loop in the embedded simulator: perfect perception, the behaviour layer and lattice
planner, and each controller, under the deterministic `budget` time model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely.geometry import Polygon

from stagepilot.core.config import load_stack
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.metrics import NUPLAN_BOUNDS
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.world import EmbeddedSimulator

from conftest import PERFECT, shared_map


def run(name: str, overrides: list[str] | None = None, scenario_overrides: list[str] | None = None, on_frame=None):
    """Drive through the one driver with perfect perception; (simulator, drive result)."""
    config = load_stack([], [*PERFECT, *(overrides or [])])
    result = drive(config, load_scenario(name, scenario_overrides or []), render=False, on_frame=on_frame)
    return result.sim, result


def assert_comfortable(log) -> None:
    figures = log.metrics["comfort"]
    assert figures["lon_accel_p5"] >= NUPLAN_BOUNDS["lon_accel_min"], figures
    assert figures["lon_accel_p95"] <= NUPLAN_BOUNDS["lon_accel_max"], figures
    assert figures["lat_accel_abs_p95"] <= NUPLAN_BOUNDS["lat_accel_abs"], figures
    assert figures["yaw_rate_abs_p95"] <= NUPLAN_BOUNDS["yaw_rate_abs"], figures
    assert figures["lon_jerk_abs_p95"] <= NUPLAN_BOUNDS["lon_jerk_abs"], figures


def gap_to(sim, agent) -> float:
    """Shortest distance between the ego's footprint and an agent's [m]."""
    return Polygon(sim.ego_agent().corners()).distance(Polygon(agent.corners()))


@pytest.mark.slow
@pytest.mark.parametrize("kind, rms_max, max_max", [
    ("mpc", 0.15, 0.5),
    ("pid_pure_pursuit", 0.3, None),
    ("pid_stanley", 0.3, None),
])
def test_lane_keeping_on_the_curvy_road_at_15_mps(kind, rms_max, max_max):
    sim, log = run("curve_lane_keeping", [f"controller.kind={kind}"])
    assert "route_completed" in log.kinds()
    speed = np.array(log.series.speed)
    assert np.percentile(speed[len(speed) // 4:], 50) > 14.0  # it really drives at ~15 m/s
    errors = log.metrics["tracking"]
    assert errors["lateral_rms_m"] <= rms_max, errors
    if max_max is not None:
        assert errors["lateral_max_m"] <= max_max, errors
    assert "lane_departure" not in log.kinds() and "off_road" not in log.kinds()
    assert_comfortable(log)


def test_follows_a_lead_car_that_brakes_hard():
    sim, log = run("lead_vehicle_braking")
    assert "collision" not in log.kinds()
    lead = sim.npcs[0].agent
    assert "follow" in log.series.decisions
    # The time gap recovers after the lead drives on again (at t = 14 s).
    front_x = log.series.x[-1] + sim.vehicle_params.length_m - sim.vehicle_params.rear_overhang_m
    headway_end = (lead.x - lead.size[0] / 2 - front_x) / max(log.series.speed[-1], 0.1)
    assert 1.0 < headway_end < 3.5
    assert min(log.series.speed) < 1.0  # it stopped behind the braking car
    assert_comfortable(log)


def test_stops_for_a_crossing_pedestrian_then_goes_on():
    seen = {"closest": math.inf, "stopped_near": False}

    def watch(obs, record):
        sim = watch.sim
        gap = gap_to(sim, sim.pedestrians[0].agent)
        seen["closest"] = min(seen["closest"], gap)
        if obs.ego.speed < 0.05 and gap < 15.0:
            seen["stopped_near"] = True

    config = load_stack([], [*PERFECT])
    watch.sim = EmbeddedSimulator(config, render=False)
    result = drive(config, load_scenario("pedestrian_crossing"), sim=watch.sim, on_frame=watch)
    assert seen["stopped_near"]
    assert seen["closest"] >= 2.0
    assert result.outcome["completed"] and result.outcome["collisions"] == 0
    assert "stop_obstacle" in result.series.decisions
    assert result.metrics["comfort"]["within_bounds"], result.metrics["comfort"]


def test_stops_at_the_red_light_and_goes_on_green():
    sim, log = run("red_light_junction")
    kinds = log.kinds()
    assert "red_light" not in kinds and "collision" not in kinds
    assert "route_completed" in kinds
    light = sim._first_light_on_route(sim.lights)
    # Stopped while red, with the front bumper just before the line.
    t = np.array(log.series.t)
    speed = np.array(log.series.speed)
    red_and_still = [i for i in range(len(t)) if speed[i] < 0.05 and light.state(t[i]) == "red"]
    assert red_and_still, "never stood still on red"
    i = red_and_still[-1]
    front = np.array([log.series.x[i], log.series.y[i]]) + (sim.vehicle_params.length_m - sim.vehicle_params.rear_overhang_m) * np.array([math.cos(log.series.yaw[i]), math.sin(log.series.yaw[i])])
    cx, cy = light.stop_line.center
    to_line = (cx - front[0]) * math.cos(light.stop_line.heading) + (cy - front[1]) * math.sin(light.stop_line.heading)
    assert 0.0 < to_line < 5.0
    assert "stop_light" in log.series.decisions
    assert_comfortable(log)


def test_passes_a_parked_car_when_the_next_lane_is_free():
    sim, log = run("parked_car")
    kinds = log.kinds()
    assert "collision" not in kinds and "route_completed" in kinds
    assert "pass" in log.series.decisions
    assert np.max(np.abs(log.lateral_errors())) > 1.5  # it moved over
    assert_comfortable(log)


def test_stops_behind_a_parked_car_when_the_next_lane_is_blocked():
    sim, log = run("parked_car_blocked")
    assert "collision" not in log.kinds()
    parked = sim.statics[0]
    assert sim.ego.state.speed < 0.05
    assert 1.5 < gap_to(sim, parked) < 8.0
    assert np.max(np.abs(log.lateral_errors())) < 0.8


@pytest.mark.slow
def test_completes_a_town01_route_through_three_junctions():
    shared_map("Town01")
    sim, log = run("town01_route", scenario_overrides=["random_vehicles=0"])
    assert len(sim.route.junction_ids) >= 3
    kinds = log.kinds()
    assert "route_completed" in kinds
    assert "collision" not in kinds and "off_road" not in kinds and "red_light" not in kinds
    assert_comfortable(log)

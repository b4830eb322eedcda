"""`stagepilot bench plan`: its scenes are ones the stack meets, so the lattice falls back on
almost none of the calls the behaviour layer hands it."""

from __future__ import annotations

import pytest

from stagepilot.core.config import load_stack
from stagepilot.planning.bench import bench_plan, stop_distance_m


def test_the_bench_falls_back_on_at_most_one_percent_of_its_calls():
    stack = load_stack()
    result = bench_plan(stack.planner.lattice, stack.vehicle, naive_calls=0,
                        behaviour=stack.planner.behaviour)
    assert result["calls"] == 300 and result["emergency_stops_skipped"] == 0
    assert result["fallbacks"] <= 3, result["fallback_reasons"]
    # varied: the behaviour layer stops for obstacles and lights, passes, and cruises
    assert {"stop_obstacle", "stop_light", "pass", "cruise"} <= set(result["decisions"])


@pytest.mark.parametrize("speed", [3.0, 15.0])  # [m/s]
@pytest.mark.parametrize("accel", [-1.0, 0.0, 1.0])  # [m/s^2]
def test_stop_distance_is_where_a_jerk_limited_brake_stops(speed, accel):
    decel, jerk, dt = 2.5, 4.13, 1e-4  # [m/s^2], [m/s^3], [s]
    v, a, s = speed, accel, 0.0
    while v > 0.0:
        a = max(a - jerk * dt, -decel)
        s += v * dt + 0.5 * a * dt**2
        v += a * dt
    assert stop_distance_m(speed, accel, decel, jerk) == pytest.approx(s, abs=0.01)

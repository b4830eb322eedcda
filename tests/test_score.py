"""The driving score (pipeline/score.py) and its per-frame criteria (pipeline/criteria.py).

Hand-computed cases of the Leaderboard 2.0 formula, the collision repeat rule, the TTC and
the route-ending rules on synthetic frames, then two short closed-loop drives scored end to end.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from stagepilot.core.config import StackConfig, load_stack
from stagepilot.core.messages import EgoState, Event, GroundTruth, LaneTruth, Observation, Route
from stagepilot.core.paths import Polyline
from stagepilot.pipeline.criteria import CriteriaFrame, time_to_collision
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.score import (
    INFRACTIONS,
    PENALTY,
    CollisionHit,
    CriteriaObserver,
    count_collisions,
    driving_score,
    score_drive,
)
from stagepilot.sim.scenario import load_scenario

from conftest import PERFECT

# ---------------------------------------------------------------- the formula


@pytest.mark.parametrize("kind, factor", [
    ("collision_pedestrian", 0.50), ("collision_vehicle", 0.60), ("collision_static", 0.65),
    ("red_light", 0.70), ("stop_sign", 0.80), ("timeout", 0.70), ("route_deviation", 1.0), ("blocked", 1.0),
])
def test_each_infraction_alone(kind, factor):
    score, penalty = driving_score(100.0, {kind: 1}, 0.0)
    assert penalty == pytest.approx(factor) and score == pytest.approx(100.0 * factor)
    assert PENALTY.get(kind, 1.0) == factor


@pytest.mark.parametrize("completion, infractions, outside, score, penalty", [
    (100.0, {}, 0.0, 100.0, 1.0),  # a clean, complete route
    (0.0, {}, 0.0, 0.0, 1.0),  # nothing driven
    (0.0, {"collision_vehicle": 1}, 0.0, 0.0, 0.6),  # the penalty stands, the score is 0
    (80.0, {"collision_vehicle": 1, "red_light": 1}, 0.0, 33.6, 0.42),  # 80 x 0.6 x 0.7
    (100.0, {"collision_pedestrian": 2}, 0.0, 25.0, 0.25),  # repeats multiply: 0.5^2
    (100.0, {"collision_vehicle": 3}, 0.0, 21.6, 0.216),  # 0.6^3
    (50.0, {"collision_static": 1, "stop_sign": 2, "timeout": 1}, 0.0, 50 * 0.65 * 0.64 * 0.7, 0.65 * 0.64 * 0.7),
    (100.0, {}, 25.0, 75.0, 0.75),  # outside the route lanes a quarter of the way
    (50.0, {"collision_vehicle": 1}, 50.0, 15.0, 0.3),  # 50 x 0.6 x (1 - 0.5)
    (100.0, {"collision_vehicle": 0, "red_light": 0}, 100.0, 0.0, 0.0),  # all outside: nothing left
    (64.0, {"route_deviation": 1, "timeout": 1}, 0.0, 44.8, 0.7),  # route-ending kinds carry no factor
])
def test_formula_hand_computed(completion, infractions, outside, score, penalty):
    got_score, got_penalty = driving_score(completion, infractions, outside)
    assert got_score == pytest.approx(score) and got_penalty == pytest.approx(penalty)


@pytest.mark.parametrize("args, message", [
    ((100.0, {"collision_bicycle": 1}, 0.0), "unknown infraction kind 'collision_bicycle'"),
    ((100.0, {"red_light": -1}, 0.0), "not negative"),
    ((100.0, {"red_light": 1.5}, 0.0), "whole"),
    ((101.0, {}, 0.0), "percentages"),
    ((100.0, {}, -1.0), "percentages"),
])
def test_formula_rejects_what_it_cannot_score(args, message):
    with pytest.raises(ValueError, match=message):
        driving_score(*args)


# ---------------------------------------------------------------- the collision repeat rule


def hit(t, x, speed=5.0, other=101, kind="vehicle", y=0.0):
    return CollisionHit(t=t, x=x, y=y, speed=speed, other_id=other, kind=kind)


@pytest.mark.parametrize("hits, counted", [
    ([hit(1.0, 10.0), hit(3.0, 13.0)], 1),  # same actor 2 s apart: once
    ([hit(1.0, 10.0), hit(3.0, 40.0)], 1),  # same actor within 5 s, wherever
    ([hit(1.0, 10.0), hit(7.0, 16.0)], 2),  # 6 s and 6 m apart: twice
    ([hit(1.0, 10.0), hit(7.0, 14.0)], 1),  # 6 s apart but within 5 m of the last one: once
    ([hit(1.0, 10.0), hit(2.0, 13.0, other=102)], 1),  # another actor within 5 m: the same collision
    ([hit(1.0, 10.0), hit(2.0, 18.0, other=102)], 2),  # another actor 8 m on: a new one
    ([hit(1.0, 10.0, speed=0.05)], 0),  # below 0.1 m/s: not the ego's
    ([hit(1.0, 10.0, speed=0.05), hit(2.0, 10.5, other=102)], 1),  # the first did not count, so nothing to repeat
])
def test_repeat_rule(hits, counted):
    assert len(count_collisions(hits)) == counted


def test_a_place_is_forgotten_once_the_ego_has_left_it():
    """Within 5 m of the last collision again, but it went 8 m away in between: counts again."""
    track = [CriteriaFrame(t, x, 0.0, 5.0, 0.0, 0.0, False, None) for t, x in ((1.0, 10.0), (3.0, 18.0), (7.0, 12.0))]
    hits = [hit(1.0, 10.0), hit(7.0, 12.0)]
    assert len(count_collisions(hits)) == 1
    assert len(count_collisions(hits, track)) == 2


# ---------------------------------------------------------------- time to collision

EGO = np.array([0.0, 0.0, 0.0, 4.6, 1.8])  # at the origin, heading +x, 4.6 m x 1.8 m


@pytest.mark.parametrize("box, velocity, expected", [
    ((20.0, 0.0, 0.0, 4.6, 1.8), (0.0, 0.0), (20.0 - 4.6) / 10.0),  # standing car ahead
    ((30.0, 0.0, math.pi, 4.6, 1.8), (-10.0, 0.0), (30.0 - 4.6) / 20.0),  # oncoming, head on
    ((20.0, 0.0, 0.0, 4.6, 1.8), (10.0, 0.0), math.inf),  # ahead at the same speed
    ((20.0, 5.0, 0.0, 4.6, 1.8), (0.0, 0.0), math.inf),  # in the next lane
    ((100.0, 0.0, 0.0, 4.6, 1.8), (0.0, 0.0), math.inf),  # beyond the 5 s horizon
    ((3.0, 0.5, 0.0, 4.6, 1.8), (0.0, 0.0), 0.0),  # overlapping now
    ((20.0, -2.0, math.pi / 2, 0.5, 0.5), (0.0, 1.0), (20.0 - 0.25 - 2.3) / 10.0),  # walker steps in
    ((20.0, -5.0, math.pi / 2, 0.5, 0.5), (0.0, 1.0), math.inf),  # walker still short of the lane: ego passes
])
def test_constant_velocity_ttc(box, velocity, expected):
    ttc = time_to_collision(EGO, np.array([10.0, 0.0]), np.array([box]), np.array([velocity]))
    assert ttc.shape == (1,) and ttc[0] == pytest.approx(expected)


# ---------------------------------------------------------------- outside the route lanes

ROUTE_Y = -1.75  # a route along lane -1 of road 1 on the straight map, heading east


def observed(lane: LaneTruth, y: float) -> CriteriaFrame:
    """The frame the observer makes of an ego (body centre) at (50, y), heading east, on `lane`."""
    config = StackConfig()
    points = np.array([[0.0, ROUTE_Y], [300.0, ROUTE_Y]])
    route = Route(points=points, s=np.array([0.0, 300.0]), speed_limit=10.0)
    ahead = config.vehicle.length_m / 2 - config.vehicle.rear_overhang_m
    ego = EgoState(x=50.0 - ahead, y=y, yaw=0.0, speed=5.0, yaw_rate=0.0, accel=0.0, steer_angle=0.0)
    truth = GroundTruth(objects=(), semantic={}, depth={}, traffic_lights=(), lane=lane)
    obs = Observation(t=0.0, frame=0, cameras={}, ego=ego, route=route, route_progress=50.0, ground_truth=truth)
    criteria = CriteriaObserver()
    criteria.start(SimpleNamespace(route=SimpleNamespace(segment_keys=((1, 0, -1),)), config=config), obs)
    criteria.frame(obs, None)
    return criteria.frames[-1]


@pytest.mark.parametrize("lane, y, outside", [
    (LaneTruth(1, -1, 3.5, 0.3, False, True), ROUTE_Y + 0.3, False),  # in the route lane
    (LaneTruth(1, -2, 3.5, 0.0, False, True), -5.25, False),  # the parallel lane runs the route's way
    (LaneTruth(1, 1, 3.5, 0.2, False, True), 1.95, True),  # the oncoming lane
    (LaneTruth(1, 1, 3.5, -1.45, False, True), 0.3, False),  # 0.3 m over the centre line: within the 0.5 m
    (LaneTruth(1, -2, 3.5, -2.3, False, False), -7.55, True),  # off the road edge, beyond 1.75 + 0.5 m
    (LaneTruth(7, 1, 3.5, 0.0, True, True), 1.75, None),  # in a junction: not checked
])
def test_outside_route_lanes_per_frame(lane, y, outside):
    frame = observed(lane, y)
    assert frame.outside_lanes is outside
    assert frame.route_distance == pytest.approx(abs(y - ROUTE_Y))


# ---------------------------------------------------------------- route ending, on synthetic frames


def synthetic(frames, events=(), duration_s=10.0, interrupted=False):
    """A drive result and an observer holding `frames`, on a 100 m straight route."""
    criteria = CriteriaObserver()
    criteria.route = Polyline(np.array([[0.0, 0.0], [100.0, 0.0]]))
    criteria.frames = frames
    criteria.actor_kinds = {101: "vehicle", 102: "pedestrian"}
    series = SimpleNamespace(events=[(e, 0.0, 0.0) for e in events])
    result = SimpleNamespace(series=series, scenario=SimpleNamespace(duration_s=duration_s),
                             config=SimpleNamespace(sim=SimpleNamespace(dt_s=1.0)), metrics={"comfort": None},
                             interrupted=interrupted, outcome={"error": None})
    return result, criteria


def straight_frames(speeds, outside=(), off_route=None):
    """One frame a second, driving `speeds` [m/s] along y = 0."""
    frames, x = [], 0.0
    for i, v in enumerate(speeds):
        distance = off_route if off_route is not None and i == len(speeds) - 1 else 0.0
        frames.append(CriteriaFrame(float(i), x, distance, v, x, distance, i in outside, None))
        x += v
    return frames


def test_timeout_outside_lanes_and_collisions_on_synthetic_frames():
    frames = straight_frames([10.0] * 5, outside={2, 3})  # 40 m gained, 20 of them outside
    events = [Event(1.0, "collision", "collision with vehicle 101 at 10.0 m/s", 101),
              Event(2.0, "collision", "collision with pedestrian 102 at 10.0 m/s", 102),
              Event(3.0, "red_light", "ran the red light 7", 7)]
    score = score_drive(*synthetic(frames, events, duration_s=4.0))
    assert score.status == "timeout" and score.route_completion == pytest.approx(40.0)
    assert score.outside_route_lanes_pct == pytest.approx(50.0)
    assert score.infractions == {**dict.fromkeys(INFRACTIONS, 0), "collision_vehicle": 1, "collision_pedestrian": 1,
                                 "red_light": 1, "timeout": 1}
    assert score.infraction_penalty == pytest.approx(0.6 * 0.5 * 0.7 * 0.7 * 0.5)
    assert score.driving_score == pytest.approx(40.0 * score.infraction_penalty)
    assert [line.split(":")[1].strip() for line in score.details] == [
        "collision_vehicle", "collision_pedestrian", "red_light", "timeout"]


def test_blocked_ends_the_route_and_drops_what_came_after():
    frames = straight_frames([10.0, 10.0, 0.0, 0.0, 0.0, 0.0, 10.0, 10.0])  # stands from t 2 to t 5
    late = Event(7.0, "collision", "collision with vehicle 101 at 10.0 m/s", 101)
    score = score_drive(*synthetic(frames, [late], duration_s=7.0), blocked_s=3.0)
    assert score.status == "blocked" and score.infractions["blocked"] == 1
    assert score.infractions["collision_vehicle"] == 0  # after the route ended
    assert score.route_completion == pytest.approx(20.0) and score.driving_score == pytest.approx(20.0)
    assert score.details == ["t 4.00 s: blocked: below 0.1 m/s since t 1.00 s (3 s); the route ends here"]
    assert score_drive(*synthetic(frames, duration_s=7.0), blocked_s=180.0).status == "timeout"


def test_route_deviation_ends_the_route_and_interrupted_carries_no_timeout():
    score = score_drive(*synthetic(straight_frames([10.0] * 4, off_route=31.0), duration_s=3.0))
    assert score.status == "route_deviation" and score.infractions["route_deviation"] == 1
    assert score.infractions["timeout"] == 0 and score.route_completion == pytest.approx(30.0)
    score = score_drive(*synthetic(straight_frames([10.0] * 4), duration_s=10.0, interrupted=True))
    assert score.status == "interrupted" and score.infraction_penalty == 1.0
    assert score.driving_score == pytest.approx(30.0)


# ---------------------------------------------------------------- closed-loop drives


def scored_drive(scenario_name: str, scenario_overrides: list[str], stack_overrides: list[str] = ()):
    config = load_stack([], [*PERFECT, *stack_overrides])
    criteria = CriteriaObserver()
    result = drive(config, load_scenario(scenario_name, scenario_overrides), observers=(criteria,), render=False)
    return result, criteria, score_drive(result, criteria)


def test_pedestrian_crossing_with_perfect_perception_times_out_without_other_infractions():
    result, criteria, score = scored_drive("pedestrian_crossing", ["duration_s=12"])
    assert len(criteria.frames) == len(result.series.t)
    assert score.status == "timeout"  # 12 s is too short for the route, however well it drives
    assert score.infractions == {**dict.fromkeys(INFRACTIONS, 0), "timeout": 1}
    expected = 100.0 * result.outcome["route_progress_m"] / result.outcome["route_length_m"]
    assert score.route_completion == pytest.approx(expected, abs=0.05)
    assert score.outside_route_lanes_pct == 0.0
    assert score.infraction_penalty == pytest.approx(0.7)
    assert score.driving_score == pytest.approx(0.7 * score.route_completion)
    comfort = result.metrics["comfort"]
    assert score.comfort["within_bounds"] == all(score.comfort["bounds"].values()) == comfort["within_bounds"]
    assert score.comfort["bounds"]["lon_jerk_abs"] == (comfort["lon_jerk_abs_p95"] <= 4.13)
    # It closes in on the walker stepping into its lane, and brakes well before nuPlan's 0.95 s.
    assert score.min_ttc_s is not None and 0.95 < score.min_ttc_s < 5.0
    assert score.as_dict()["infractions"]["timeout"] == 1


def test_a_blind_ego_rear_ends_the_braking_lead_car():
    """Perception that sees 1 m ahead never sees the lead car, which brakes hard at t 8 s."""
    result, criteria, score = scored_drive("lead_vehicle_braking", ["duration_s=12"],
                                           ["perception.perfect.max_range_m=1"])
    assert result.outcome["collisions"] >= 1
    assert score.infractions["collision_vehicle"] == 1 and score.status == "timeout"
    assert score.infraction_penalty == pytest.approx(0.6 * 0.7)
    assert score.driving_score == pytest.approx(score.route_completion * 0.6 * 0.7)
    assert score.min_ttc_s == 0.0  # the boxes overlapped while the ego moved
    assert any("collision_vehicle" in line for line in score.details)

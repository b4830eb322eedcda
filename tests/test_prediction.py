"""Obstacle prediction (planning/prediction.py) on the project's maps: vehicles follow curves and
junction turns along the lanes, everything else moves at constant velocity, margins widen with
time, the broad phase agrees with the exact test on such forecasts, and the planner neither
brakes nor swerves for an oncoming car on a curve, which constant velocity sends into its lane.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from stagepilot.core.config import load_stack
from stagepilot.core.config_lattice import LatticeCollision, LatticeConfig, LatticePrediction
from stagepilot.core.messages import Detection, EgoState, Perception, Route
from stagepilot.core.roadmap import RoadMap
from stagepilot.planning.behaviour import VehicleShape
from stagepilot.planning.bench import make_road_map, make_scene
from stagepilot.planning.collision import Obstacle, broad_phase, exact_overlap, forecast
from stagepilot.planning.lattice import FrenetLatticePlanner, LatticeTarget
from stagepilot.planning.planner import LatticePlannerStage
from stagepilot.planning.prediction import ObstaclePredictor

MAPS = Path(__file__).resolve().parents[1] / "configs" / "maps"
TIMES = np.arange(LatticeConfig().num_samples) * LatticeConfig().dt_s  # (T,) 0 .. 5 s
CONFIG = LatticePrediction()


@pytest.fixture(scope="module")
def curvy() -> RoadMap:
    return RoadMap.load(MAPS / "curvy.xodr")


@pytest.fixture(scope="module")
def junction() -> RoadMap:
    return RoadMap.load(MAPS / "junction.xodr")


def predictor(road_map: RoadMap | None, config: LatticePrediction = CONFIG) -> ObstaclePredictor:
    return ObstaclePredictor(config, LatticeCollision(), TIMES, road_map)


def on_lane(road_map: RoadMap, key, s: float, speed: float, kind: str = "vehicle",
            turn: float = 0.0, size=(4.6, 1.9)) -> Obstacle:
    """An obstacle on lane segment `key` at arc length s [m], moving `turn` [rad] off its direction."""
    x, y, yaw = (float(v) for v in road_map.segments[key].path.interpolate(s))
    yaw += turn
    return Obstacle(x, y, yaw, *size, speed * math.cos(yaw), speed * math.sin(yaw), id=1, kind=kind)


def distance_to(road_map: RoadMap, keys, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(T,) distance [m] of points to the nearest of the lane centres `keys`."""
    paths = [road_map.segments[k].path for k in keys]
    return np.array([min(abs(p.project(px, py)[1]) for p in paths) for px, py in zip(x, y)])


def constant_velocity(obstacle: Obstacle):
    speed = math.hypot(obstacle.vx, obstacle.vy)
    growth = CONFIG.constant_velocity_margin_growth_mps if speed >= CONFIG.min_speed_mps else 0.0
    return forecast([obstacle], TIMES, LatticeCollision().extra_margin_by_kind_m,
                    predictor(None).ramp, growth)


# ---------------------------------------------------------------- vehicles along lanes


@pytest.mark.parametrize("key, s", [((1, 0, -1), 400.0), ((1, 0, 1), 440.0)],
                         ids=["outer lane of the R 90 curve", "inner lane, against s"])
def test_a_vehicle_on_a_curve_is_predicted_along_its_lane(curvy, key, s):
    car = on_lane(curvy, key, s, speed=14.0)
    pred = predictor(curvy)
    assert pred.lanes.keys[pred.match([car]).lane[0]] == key
    obs = pred.predict([car])
    assert distance_to(curvy, [key], obs.x[0], obs.y[0]).max() < 0.5
    # it covers speed x time along the lane, heading along it at every time
    path = curvy.segments[key].path
    s_end, _ = path.project(obs.x[0, -1], obs.y[0, -1])
    assert s_end - s == pytest.approx(14.0 * TIMES[-1], abs=1.0)
    _, _, lane_yaw = path.interpolate([path.project(x, y)[0] for x, y in zip(obs.x[0], obs.y[0])])
    heading = np.arctan2(obs.sin[0], obs.cos[0])
    assert np.abs(np.angle(np.exp(1j * (heading - lane_yaw)))).max() < 0.05
    cv = constant_velocity(car)
    assert distance_to(curvy, [key], cv.x[0], cv.y[0]).max() > 5.0  # straight on leaves the lane


def test_a_vehicle_turning_in_a_junction_is_predicted_along_its_turn(junction):
    turn, exit_lane = (104, 0, -1), (4, 0, -1)  # left from the east arm into the south arm
    car = on_lane(junction, turn, 18.0, speed=8.0)
    pred = predictor(junction)
    assert pred.lanes.keys[pred.match([car]).lane[0]] == turn
    obs = pred.predict([car])
    assert distance_to(junction, [turn, exit_lane], obs.x[0], obs.y[0]).max() < 0.5
    assert obs.y[0, -1] < -30.0  # down the south arm
    assert math.atan2(obs.sin[0, -1], obs.cos[0, -1]) == pytest.approx(-math.pi / 2, abs=0.05)
    cv = constant_velocity(car)
    assert distance_to(junction, [turn, exit_lane], cv.x[0], cv.y[0]).max() > 5.0


def test_a_vehicle_entering_a_junction_is_predicted_straight_on(junction):
    """Before it turns nothing tells which way it goes: it takes the successor that turns least."""
    car = on_lane(junction, (1, 0, 1), 110.0, speed=10.0)  # 10 m before the west-bound entry
    obs = predictor(junction).predict([car])
    through = [(1, 0, 1), (102, 0, -1), (3, 0, -1)]
    assert distance_to(junction, through, obs.x[0], obs.y[0]).max() < 0.5
    assert obs.x[0, -1] < -15.0 and obs.y[0, -1] == pytest.approx(1.75, abs=0.2)


def test_an_offset_and_a_heading_error_fade_into_the_lane(curvy):
    key = (1, 0, -1)
    x, y, yaw = (float(v) for v in curvy.segments[key].path.interpolate(400.0))
    course = yaw + 0.15  # 0.8 m left of the centre, heading further left
    car = Obstacle(x - 0.8 * math.sin(yaw), y + 0.8 * math.cos(yaw), course, 4.6, 1.9,
                   12.0 * math.cos(course), 12.0 * math.sin(course), 1, "vehicle")
    obs = predictor(curvy).predict([car])
    assert (obs.x[0, 0], obs.y[0, 0]) == pytest.approx((car.x, car.y), abs=0.02)
    assert math.atan2(obs.sin[0, 0], obs.cos[0, 0]) == pytest.approx(course)
    gap = distance_to(curvy, [key], obs.x[0], obs.y[0])
    assert gap[TIMES >= 2.0].max() < 0.05  # on the centre line from 2 s on


# ---------------------------------------------------------------- constant velocity


@pytest.mark.parametrize("case", ["off the map", "heading against the lane", "standing", "no road map",
                                  "kind constant_velocity", "pedestrian on a lane"])
def test_falls_back_to_constant_velocity(curvy, case):
    key, config, road_map = (1, 0, -1), CONFIG, curvy
    car = on_lane(curvy, key, 400.0, speed=12.0)
    if case == "off the map":
        car = Obstacle(car.x + 40.0, car.y - 40.0, car.yaw, 4.6, 1.9, car.vx, car.vy, 1, "vehicle")
    elif case == "heading against the lane":
        car = on_lane(curvy, key, 400.0, speed=12.0, turn=CONFIG.max_heading_error_rad + 0.1)
    elif case == "standing":
        car = on_lane(curvy, key, 400.0, speed=0.5 * CONFIG.min_speed_mps)
    elif case == "no road map":
        road_map = None
    elif case == "kind constant_velocity":
        config = LatticePrediction(kind="constant_velocity")
    else:
        car = on_lane(curvy, key, 400.0, speed=1.4, kind="pedestrian", size=(0.5, 0.6))
    pred = predictor(road_map, config)
    assert pred.match([car]).lane[0] == -1
    obs, cv = pred.predict([car]), constant_velocity(car)
    for name in ("x", "y", "cos", "sin", "margin"):
        np.testing.assert_allclose(getattr(obs, name), getattr(cv, name), atol=1e-12)


def test_margins_widen_with_time_slower_along_lanes(curvy):
    walker = on_lane(curvy, (1, 0, -1), 300.0, speed=1.4, kind="pedestrian", size=(0.5, 0.6))
    car = on_lane(curvy, (1, 0, -1), 400.0, speed=12.0)
    parked = Obstacle(walker.x, walker.y - 30.0, 0.0, 4.6, 1.9, 0.0, 0.0, 3, "vehicle")
    obs = predictor(curvy).predict([walker, car, parked])
    kind_margin = LatticeCollision().extra_margin_by_kind_m["pedestrian"]
    ramped = TIMES >= LatticeCollision().margin_ramp_s
    np.testing.assert_allclose(
        obs.margin[0, ramped], kind_margin + CONFIG.constant_velocity_margin_growth_mps * TIMES[ramped])
    np.testing.assert_allclose(obs.margin[1], CONFIG.lane_margin_growth_mps * TIMES)
    assert CONFIG.lane_margin_growth_mps < CONFIG.constant_velocity_margin_growth_mps
    np.testing.assert_array_equal(obs.margin[2], 0.0)  # a standing car's does not grow
    assert np.all(np.diff(obs.margin[0]) > 0.0) and np.all(np.diff(obs.margin[1]) > 0.0)


def test_broad_phase_agrees_with_the_exact_check_on_lane_forecasts(curvy):
    """Sure hits are hits and cleared candidates are clear, with headings and margins that
    change in time."""
    config = LatticeConfig()
    lattice = FrenetLatticePlanner(config, 4.6, 1.8, 1.4, road_map=curvy)
    lane = curvy.segments[(1, 0, -1)].path
    ego_state = EgoState(*(float(v) for v in lane.interpolate(390.0)), 10.0, 10.0 / 91.75, 0.0, 0.0)
    world = lattice.rollout(ego_state, lane, 390.0, LatticeTarget(10.0, d_min=-0.5, d_max=4.0))
    obstacles = [on_lane(curvy, (1, 0, 1), 470.0, speed=12.0), on_lane(curvy, (1, 0, -1), 420.0, speed=3.0),
                 on_lane(curvy, (1, 0, 1), 430.0, speed=1.5, kind="pedestrian", size=(0.5, 0.6))]
    obs = lattice.predictor.predict(obstacles)
    ego = lattice.body.footprints(world, np.arange(len(world.x)))
    broad = broad_phase(ego, obs, config.collision.proximity_range_m, lattice.margin_ramp)
    grid = np.meshgrid(np.arange(len(TIMES)), np.arange(len(obs)), indexing="ij")
    every_t, every_n = (a.ravel() for a in grid)
    truth = np.array([exact_overlap(ego, obs, c, every_t, every_n, lattice.margin_ramp) >= 0
                      for c in range(len(world.x))])
    undecided = np.zeros(len(truth), dtype=bool)
    undecided[broad.pair_c] = True
    assert truth.any() and (~truth).any()
    assert np.all(truth[broad.hit])
    assert not np.any(truth & ~broad.hit & ~undecided)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_bench_road_map_has_the_lanes_its_cars_drive_in(seed):
    """`bench plan` predicts on its own road map: every moving car lies on one of its lanes."""
    stack = load_stack()
    vehicle = VehicleShape(stack.vehicle.length_m, stack.vehicle.width_m, stack.vehicle.rear_overhang_m)
    jerk = stack.planner.lattice.limits.max_longitudinal_jerk
    scene = make_scene(np.random.default_rng(seed), vehicle, stack.planner.behaviour, jerk)
    obstacles = scene.obstacles
    pred = predictor(make_road_map(scene.radius))
    matches = pred.match(obstacles)
    moving = np.array([o.kind == "vehicle" and math.hypot(o.vx, o.vy) >= CONFIG.min_speed_mps
                       for o in obstacles])
    assert moving.sum() >= 3
    assert np.all(matches.lane[moving] >= 0) and np.all(matches.lane[~moving] == -1)
    assert np.abs(matches.offset[moving]).max() < 0.05
    assert np.abs(matches.heading_error[moving]).max() < 0.02


# ---------------------------------------------------------------- the planner


def plan_past_an_oncoming_car(curvy: RoadMap, kind: str):
    """The ego at 14 m/s on the outer lane of the R 90 left curve of curvy.xodr, an oncoming car
    at 12 m/s in its own lane 50 m ahead along the road; the plan and its lateral offsets [m]."""
    config = load_stack([], [f"planner.lattice.prediction.kind={kind}"])
    vehicle = config.vehicle
    stage = LatticePlannerStage(
        config.planner, VehicleShape(vehicle.length_m, vehicle.width_m, vehicle.rear_overhang_m), curvy)
    start, goal = curvy.lane_at(1, -1, 420.0), curvy.lane_at(1, -1, 800.0)
    route_path = curvy.route([(start.x, start.y), (goal.x, goal.y)]).path
    route = Route(points=route_path.points, s=route_path.s, speed_limit=14.0)
    ego = EgoState(start.x, start.y, start.yaw, 14.0, 14.0 / 91.75, 0.0, 0.0)
    car = curvy.lane_at(1, 1, 470.0)
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    dx, dy, vx, vy = car.x - ego.x, car.y - ego.y, 12.0 * math.cos(car.yaw), 12.0 * math.sin(car.yaw)
    seen = Detection(track_id=7, kind="vehicle", score=1.0, position=(c * dx + s * dy, c * dy - s * dx),
                     yaw=car.yaw - ego.yaw, extent=(4.6, 1.9, 1.5),
                     velocity=(c * vx + s * vy, c * vy - s * vx))
    plan = stage.step(ego, route, Perception(t=0.0, frame=0, detections=(seen,)))
    ref, hint, offsets = stage.reference.path, None, []
    for x, y in zip(plan.x, plan.y):
        hint, offset = ref.project(x, y, s_hint=hint)
        offsets.append(offset)
    return plan, np.array(offsets)


def test_the_planner_keeps_its_lane_and_speed_past_an_oncoming_car_on_a_curve(curvy):
    plan, offsets = plan_past_an_oncoming_car(curvy, "lanes")
    assert plan.decision == "cruise", plan.reason
    assert plan.v.min() > 0.95 * 14.0
    assert np.abs(offsets).max() < 0.2
    # the guard: predicted straight on, the same car cuts into the ego's lane
    plan, offsets = plan_past_an_oncoming_car(curvy, "constant_velocity")
    assert plan.v.min() < 0.5 * 14.0 or np.abs(offsets).max() > 0.5, plan.reason

"""Timing of the lattice planner on generated situations (`stagepilot bench plan --json`).

Each call gets a fresh scene: a straight road or an arc with a 9-15 m/s limit, the ego at
3-15 m/s, ten obstacles (parked cars, one often in the ego lane; cars moving in the left lane;
oncoming cars two lanes over; pedestrians crossing, walking or standing) and, in 30 % of
scenes, a red light ahead. Each scene has its road map, an OpenDRIVE road whose lanes are the
ones the obstacles drive in. The real behaviour layer turns the scene, as perception reports
it, into the lattice's target (speed, stop, lateral band), so the bench times the calls the
planning stage makes. What makes the car stop lies at least a comfortable, jerk-limited stop
away from the ego's present acceleration: a drive meets such stops while approaching them.
The naive reference is the exact shapely test on every footprint of every candidate, timed
on a few calls.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import shapely

from stagepilot.core.config import BehaviourConfig, VehicleConfig
from stagepilot.core.config_lattice import LatticeConfig
from stagepilot.core.messages import Detection, EgoState, Perception, Route, TrafficLightAhead
from stagepilot.core.paths import Polyline
from stagepilot.core.roadmap import RoadMap
from stagepilot.planning.behaviour import BehaviourLayer, VehicleShape
from stagepilot.planning.collision import Obstacle, rectangles
from stagepilot.planning.frenet import ReferenceFrame
from stagepilot.planning.lattice import FrenetLatticePlanner
from stagepilot.planning.route import ReferencePath

LANE_M = 3.5
CENTRE_D = 1.5 * LANE_M  # [m] the road's centre line, left of the ego lane's
ROAD_BEHIND_M = 60.0  # [m] of road before the reference starts (oncoming cars drive there)
# (lane id, type, width [m]): the ego lane is -2, the left lane -1, the oncoming lane 1, and
# parked cars stand on the parking lane -3 (centre 2.9 m right of the ego lane's)
LANES = ((2, "sidewalk", 3.0), (1, "driving", LANE_M), (-1, "driving", LANE_M),
         (-2, "driving", LANE_M), (-3, "parking", 2.3), (-4, "sidewalk", 3.0))
_ROAD = """<?xml version="1.0" encoding="utf-8"?>
<OpenDRIVE><header name="bench" revMajor="1" revMinor="5">
<geoReference>+proj=tmerc +lat_0=0 +lon_0=0 +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs</geoReference>
</header>
<road name="bench" id="1" junction="-1" length="{length}" rule="RHT"><link/>
<planView><geometry s="0" x="{x}" y="{y}" hdg="{hdg}" length="{length}">{shape}</geometry></planView>
<lanes><laneSection s="0"><left>{left}</left><center><lane id="0" type="none" level="false"/></center>
<right>{right}</right></laneSection></lanes></road></OpenDRIVE>"""
_LANE = '<lane id="{}" type="{}" level="false"><link/><width sOffset="0" a="{}" b="0" c="0" d="0"/></lane>'


def make_reference(
    rng: np.random.Generator, length_m: float = 300.0
) -> tuple[Polyline, float, float | None]:
    """A straight road, or an arc of radius 40-150 m turning either way, with 1 m vertices;
    the speed [m/s] the behaviour layer would allow on it (2.5 m/s^2 lateral); and the
    radius [m] (+ left, None when straight)."""
    s = np.arange(0.0, length_m + 1.0)
    if rng.random() < 0.5:
        return Polyline(np.stack([s, np.zeros_like(s)], axis=1)), 15.0, None
    radius = rng.uniform(40.0, 150.0) * rng.choice([-1.0, 1.0])
    phi = s / radius
    points = np.stack([radius * np.sin(phi), radius * (1.0 - np.cos(phi))], axis=1)
    return Polyline(points), min(15.0, float(np.sqrt(2.5 * abs(radius)))), float(radius)


def make_road_map(radius: float | None, length_m: float = 300.0) -> RoadMap:
    """The road of make_reference as an OpenDRIVE map: its centre line CENTRE_D left of the
    reference, lanes as in LANES, from ROAD_BEHIND_M before the reference's start to 50 m past
    its end."""
    s0, ego_length = -ROAD_BEHIND_M, length_m + ROAD_BEHIND_M + 50.0
    if radius is None:
        x, y, hdg, shape, length = s0, CENTRE_D, 0.0, "<line/>", ego_length
    else:  # the offset of an arc of radius R is an arc of radius R - CENTRE_D
        phi = s0 / radius
        x = radius * np.sin(phi) - CENTRE_D * np.sin(phi)
        y = radius * (1.0 - np.cos(phi)) + CENTRE_D * np.cos(phi)
        hdg, shape = phi, f'<arc curvature="{1.0 / (radius - CENTRE_D)!r}"/>'
        length = ego_length * (radius - CENTRE_D) / radius
    left = "".join(_LANE.format(i, kind, w) for i, kind, w in LANES if i > 0)
    right = "".join(_LANE.format(i, kind, w) for i, kind, w in LANES if i < 0)
    text = _ROAD.format(length=length, x=x, y=y, hdg=hdg, shape=shape, left=left, right=right)
    return RoadMap("bench", text)


def _at(frame: ReferenceFrame, s: float, d: float, speed: float = 0.0, cross: float = 0.0):
    """World pose of Frenet (s, d), and the velocity of `speed` along plus `cross` across."""
    x, y, yaw, _ = (float(v) for v in frame.sample(np.asarray(s)))
    c, n = np.cos(yaw), np.sin(yaw)
    return x - d * n, y + d * c, yaw, speed * c - cross * n, speed * n + cross * c


def make_obstacles(
    rng: np.random.Generator, frame: ReferenceFrame, ego_s: float, clear_m: float
) -> list[Obstacle]:
    """Ten obstacles around the ego's path. What may stop the car stands with its rear more
    than clear_m [m] ahead of ego_s: a car parked in the lane (half the cases) and the
    pedestrian crossing."""
    u = rng.uniform
    parked_s, parked_d = ego_s + clear_m + u(6, 36), u(-0.3, 0.3) if rng.random() < 0.5 else -2.9
    # half the cars parked in the lane have the left lane free beside them: the car passes
    left_s = parked_s + 50.0 if parked_d > -1.0 and rng.random() < 0.5 else ego_s
    specs = [  # (kind, s, d, speed along, speed across, length, width)
        ("vehicle", ego_s + u(10, 60), -2.9, 0.0, 0.0, 4.6, 1.9),
        ("vehicle", ego_s + u(40, 90), -2.9, 0.0, 0.0, 4.6, 1.9),
        ("vehicle", parked_s, parked_d, 0.0, 0.0, 4.6, 1.9),
        ("vehicle", left_s + u(-20, 60), LANE_M, u(5, 15), 0.0, 4.6, 1.9),
        ("vehicle", left_s + u(30, 100), LANE_M, u(5, 15), 0.0, 4.8, 1.9),
        ("vehicle", ego_s + u(20, 80), 2 * LANE_M, -u(8, 14), 0.0, 4.6, 1.9),
        ("vehicle", ego_s + u(60, 120), 2 * LANE_M, -u(8, 14), 0.0, 12.0, 2.5),
        ("pedestrian", ego_s + clear_m + u(1, 26), rng.choice([-6.0, 9.0]), 0.0, 0.0, 0.5, 0.6),
        ("pedestrian", ego_s + u(5, 50), -5.0, u(-1.5, 1.5), 0.0, 0.5, 0.6),
        ("pedestrian", ego_s + u(10, 40), -4.5, 0.0, 0.0, 0.5, 0.6),
    ]
    obstacles = []
    for i, (kind, s, d, along, across, length, width) in enumerate(specs):
        if i == 7:  # crossing towards the other side
            across = 1.4 * (1.0 if d < 0 else -1.0)
        x, y, yaw, vx, vy = _at(frame, s, d, along, across)
        if along < 0:
            yaw += np.pi
        obstacles.append(Obstacle(x, y, yaw, length, width, vx, vy, id=100 + i, kind=kind))
    return obstacles


def stop_distance_m(speed: float, accel: float, decel: float, jerk: float) -> float:
    """Distance [m] to a stop from speed [m/s] and accel [m/s^2] when the brake builds up to
    decel [m/s^2] at jerk [m/s^3] and then holds it."""
    ramp_s = max(accel + decel, 0.0) / jerk
    speed_end = speed + accel * ramp_s - 0.5 * jerk * ramp_s**2
    ramp_m = speed * ramp_s + 0.5 * accel * ramp_s**2 - jerk * ramp_s**3 / 6.0
    return ramp_m + max(speed_end, 0.0) ** 2 / (2.0 * decel)


@dataclass(frozen=True)
class Scene:
    """One generated moment, as the planning stage receives it."""

    ego: EgoState  # rear axle, world frame
    reference: ReferencePath
    ego_s: float  # [m] the ego's arc length on the reference
    obstacles: list[Obstacle]  # world frame
    light: TrafficLightAhead | None  # a red light ahead, or None
    radius: float | None  # [m] of the road (+ left, None: straight), for make_road_map


def make_scene(
    rng: np.random.Generator, vehicle: VehicleShape, behaviour: BehaviourConfig, jerk_limit: float
) -> Scene:
    """A scene whose stops (a parked car in the lane, a pedestrian walking into it, a red
    light) the behaviour layer places at least a stop away: braking at its comfort_decel,
    built up from the ego's acceleration at jerk_limit [m/s^3]."""
    path, max_speed, radius = make_reference(rng)
    limit = rng.uniform(0.6, 1.0) * 15.0  # [m/s]
    reference = ReferencePath(path, np.full(len(path.s), limit), Route(path.points, path.s, limit))
    frame = ReferenceFrame(path)
    ego_s = rng.uniform(20.0, 40.0)
    x, y, yaw, _, _ = _at(frame, ego_s, rng.uniform(-0.3, 0.3))
    speed = rng.uniform(3.0, max_speed)
    yaw_rate = speed * float(path.curvature_at(ego_s))
    accel = rng.uniform(-1.0, 1.0)
    ego = EgoState(x, y, yaw + rng.uniform(-0.05, 0.05), speed, yaw_rate, accel, 0.0)
    # [m] from ego_s to where the front bumper can stop
    reach_m = vehicle.front_m + stop_distance_m(
        speed, accel, behaviour.comfort_decel, jerk_limit
    )
    light = None
    if rng.random() < 0.3:
        line_s = ego_s + reach_m + behaviour.stop_line_margin_m + rng.uniform(0.0, 40.0)
        ends = [_ego_frame(ego, *_at(frame, line_s, d)[:2])[0] for d in (LANE_M / 2, -LANE_M / 2)]
        light = TrafficLightAhead(1, "red", (*ends[0], *ends[1]))  # stop line, ego frame
    obstacles = make_obstacles(rng, frame, ego_s, reach_m + behaviour.stop_margin_m)
    return Scene(ego, reference, ego_s, obstacles, light, radius)


def _ego_frame(ego: EgoState, x: float, y: float, vx: float = 0.0, vy: float = 0.0):
    """World position and velocity in the ego frame (x forward, y left)."""
    c, s = np.cos(ego.yaw), np.sin(ego.yaw)
    dx, dy = x - ego.x, y - ego.y
    position = (float(c * dx + s * dy), float(c * dy - s * dx))
    return position, (float(c * vx + s * vy), float(c * vy - s * vx))


def perceive(scene: Scene) -> Perception:
    """The scene as perception reports it: every obstacle a detection in the ego frame."""
    ego, detections = scene.ego, []
    for o in scene.obstacles:
        position, velocity = _ego_frame(ego, o.x, o.y, o.vx, o.vy)
        detections.append(Detection(o.id, o.kind, 1.0, position, o.yaw - ego.yaw,
                                    (o.length, o.width, 1.5), velocity))
    return Perception(0.0, 0, tuple(detections), scene.light)


def planner_call(scene: Scene, behaviour: BehaviourLayer) -> tuple[str, tuple | None]:
    """The behaviour layer's decision on this scene, and the lattice call the planning stage
    makes on it: (ego, path, ego_s, target, obstacles), or None when the stage brakes without
    the lattice (an emergency stop)."""
    decision = behaviour.decide(scene.ego, scene.reference, scene.ego_s, perceive(scene))
    if decision.decision == "emergency_stop":
        return decision.decision, None
    call = scene.ego, scene.reference.path, scene.ego_s, decision.target, list(decision.obstacles)
    return decision.decision, call


def naive_exact_ms(planner: FrenetLatticePlanner, situation) -> float:
    """Time of exact shapely tests on every footprint of every candidate (the slow baseline)."""
    ego, reference, ego_s, target, obstacles = situation
    world = planner.rollout(ego, reference, ego_s, target)  # (C, T)
    start = time.perf_counter()
    cos, sin = np.cos(world.yaw), np.sin(world.yaw)
    m = planner.config.collision.safety_margin_m
    cx = (world.x + planner.rear_to_center_m * cos).ravel()
    cy = (world.y + planner.rear_to_center_m * sin).ravel()
    ego_polys = shapely.polygons(
        rectangles(
            cx, cy, cos.ravel(), sin.ravel(), planner.length_m / 2 + m, planner.width_m / 2 + m
        )
    )
    obs = planner.predictor.predict(obstacles)
    T = len(planner.times)
    n = np.repeat(np.arange(len(obs)), T)
    obs_polys = shapely.polygons(
        rectangles(
            obs.x.ravel(),
            obs.y.ravel(),
            obs.cos.ravel(),
            obs.sin.ravel(),
            obs.half_length[n] + obs.margin.ravel(),
            obs.half_width[n] + obs.margin.ravel(),
        )
    )
    ego_grid = ego_polys.reshape(-1, T)[:, :, None]  # (C, T, 1)
    obs_grid = obs_polys.reshape(-1, T).T[None, :, :]  # (1, T, N)
    shapely.intersects(ego_grid, obs_grid).any(axis=(1, 2))
    return (time.perf_counter() - start) * 1e3


def bench_plan(
    config: LatticeConfig,
    vehicle: VehicleConfig,  # type: ignore[valid-type]
    calls: int = 300,
    seed: int = 0,
    naive_calls: int = 10,
    behaviour: BehaviourConfig | None = None,
) -> dict:
    """Wall time of FrenetLatticePlanner.plan per call [ms] over generated scenes, for the
    loaded stack's `planner.lattice` and `vehicle` sections (and `planner.behaviour`, default
    BehaviourConfig()). The behaviour layer, on the scene's road map, gives each call its
    target and obstacles; scenes it sends to an emergency stop are not lattice calls and are
    counted, not timed. The road map is set before the clock starts (as a drive sets it once)."""
    behaviour = behaviour or BehaviourConfig()
    rng = np.random.default_rng(seed)
    shape = VehicleShape(vehicle.length_m, vehicle.width_m, vehicle.rear_overhang_m)
    planner = FrenetLatticePlanner(config, vehicle.length_m, vehicle.width_m,
                                   shape.length_m / 2 - shape.rear_overhang_m)
    maps: dict[float | None, RoadMap] = {}
    situations, radii, decisions, emergency = [], [], Counter(), 0
    while len(situations) < calls:
        scene = make_scene(rng, shape, behaviour, config.limits.max_longitudinal_jerk)
        if scene.radius not in maps:
            maps[scene.radius] = make_road_map(scene.radius)
        layer = BehaviourLayer(behaviour, shape, maps[scene.radius])  # fresh: scenes are unrelated
        decision, call = planner_call(scene, layer)
        if call is None:
            emergency += 1
            continue
        decisions[decision] += 1
        situations.append(call)
        radii.append(scene.radius)
    for situation, radius in list(zip(situations, radii))[:5]:  # warm caches and imports
        planner.use_road_map(maps[radius])
        planner.plan(*situation)
    planner.reset()
    times_ms, candidates, exact, reasons = [], [], [], Counter()
    for situation, radius in zip(situations, radii):
        planner.use_road_map(maps[radius])
        start = time.perf_counter()
        result = planner.plan(*situation)
        times_ms.append((time.perf_counter() - start) * 1e3)
        candidates.append(result.candidates)
        exact.append(result.exact_checks)
        if result.fallback:
            reasons[_reason_kind(result.reason)] += 1
    naive = []
    for situation, radius in list(zip(situations, radii))[:naive_calls]:
        planner.use_road_map(maps[radius])
        naive.append(naive_exact_ms(planner, situation))
    t = np.asarray(times_ms)
    return {
        "p50_ms": round(float(np.percentile(t, 50)), 3),
        "p99_ms": round(float(np.percentile(t, 99)), 3),
        "max_ms": round(float(t.max()), 3),
        "candidates": int(np.median(candidates)),
        "candidates_max": int(max(candidates)),
        "obstacles": 10,
        "calls": calls,
        "fallbacks": sum(reasons.values()),
        "fallback_reasons": dict(reasons.most_common()),
        "decisions": dict(decisions.most_common()),
        "emergency_stops_skipped": emergency,
        "exact_checks_mean": round(float(np.mean(exact)), 2),
        "naive_exact_collision_p50_ms": round(float(np.median(naive)), 3) if naive else None,
    }


def _reason_kind(reason: str) -> str:
    """A fallback reason with its counts as N (obstacle ids stay: 100-102 parked cars, 103-104
    left lane, 105-106 oncoming, 107-109 pedestrians)."""
    return re.sub(r"(?<!obstacle )\b\d+\b", "N", reason)

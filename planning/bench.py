"""Timing of the lattice planner on generated situations (`stagepilot bench plan --json`).

Each call gets a fresh situation: a straight road or an arc, the ego at 3-15 m/s, and ten
obstacles: parked cars (one often in the ego lane), cars moving in the left lane, oncoming
cars two lanes over, and pedestrians crossing, walking or standing. Each situation has its
road map, an OpenDRIVE road whose lanes are the ones the obstacles drive in, so obstacles are
predicted as the planner predicts them on a map. The naive reference is the exact shapely
test on every footprint of every candidate, timed on a few calls.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import numpy as np
import shapely

from stagepilot.core.config import VehicleConfig
from stagepilot.core.config_lattice import LatticeConfig
from stagepilot.core.messages import EgoState
from stagepilot.core.paths import Polyline
from stagepilot.core.roadmap import RoadMap
from stagepilot.planning.collision import Obstacle, rectangles
from stagepilot.planning.frenet import ReferenceFrame
from stagepilot.planning.lattice import FrenetLatticePlanner, LatticeTarget

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
    rng: np.random.Generator, frame: ReferenceFrame, ego_s: float, brake_m: float
) -> list[Obstacle]:
    """Ten obstacles around the ego's path; one parked in the lane in half the cases, at
    least brake_m + 10 m ahead."""
    u = rng.uniform
    specs = [  # (kind, s, d, speed along, speed across, length, width)
        ("vehicle", ego_s + u(10, 60), -2.9, 0.0, 0.0, 4.6, 1.9),
        ("vehicle", ego_s + u(40, 90), -2.9, 0.0, 0.0, 4.6, 1.9),
        (
            "vehicle",
            ego_s + brake_m + u(10, 40),
            u(-0.3, 0.3) if rng.random() < 0.5 else -2.9,
            0.0,
            0.0,
            4.6,
            1.9,
        ),
        ("vehicle", ego_s + u(-20, 60), LANE_M, u(5, 15), 0.0, 4.6, 1.9),
        ("vehicle", ego_s + u(30, 100), LANE_M, u(5, 15), 0.0, 4.8, 1.9),
        ("vehicle", ego_s + u(20, 80), 2 * LANE_M, -u(8, 14), 0.0, 4.6, 1.9),
        ("vehicle", ego_s + u(60, 120), 2 * LANE_M, -u(8, 14), 0.0, 12.0, 2.5),
        ("pedestrian", ego_s + u(15, 40), rng.choice([-6.0, 9.0]), 0.0, 0.0, 0.5, 0.6),
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


def make_situation(rng: np.random.Generator):
    """Ego, reference, ego_s, target and obstacles as the behaviour layer would pass them:
    speeds fit the curve, stops are at least a 2.5 m/s^2 stop away; and the road's radius
    [m] (None: straight) for make_road_map."""
    reference, max_speed, radius = make_reference(rng)
    frame = ReferenceFrame(reference)
    ego_s = rng.uniform(20.0, 40.0)
    x, y, yaw, _, _ = _at(frame, ego_s, rng.uniform(-0.3, 0.3))
    speed = rng.uniform(3.0, max_speed)
    yaw_rate = speed * float(reference.curvature_at(ego_s))
    ego = EgoState(
        x, y, yaw + rng.uniform(-0.05, 0.05), speed, yaw_rate, rng.uniform(-1.0, 1.0), 0.0
    )
    brake_m = speed**2 / (2.0 * 2.5) + 3.7
    stop_s = ego_s + brake_m + rng.uniform(0.0, 40.0) if rng.random() < 0.3 else None
    d_max = 4.0 if rng.random() < 0.5 else 0.5
    target = LatticeTarget(rng.uniform(0.6, 1.0) * max_speed, stop_s, -0.5, d_max)
    return (ego, reference, ego_s, target, make_obstacles(rng, frame, ego_s, brake_m)), radius


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
) -> dict:
    """Wall time of FrenetLatticePlanner.plan per call [ms] over generated situations, for the
    loaded stack's `planner.lattice` and `vehicle` sections; each call predicts on its
    situation's road map, set before the clock starts (as a drive sets it once)."""
    rng = np.random.default_rng(seed)
    rear_axle_to_center_m = vehicle.length_m / 2 - vehicle.rear_overhang_m
    planner = FrenetLatticePlanner(config, vehicle.length_m, vehicle.width_m, rear_axle_to_center_m)
    situations, radii = zip(*(make_situation(rng) for _ in range(calls)))
    maps = {r: make_road_map(r) for r in radii}
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
        "exact_checks_mean": round(float(np.mean(exact)), 2),
        "naive_exact_collision_p50_ms": round(float(np.median(naive)), 3) if naive else None,
    }


def _reason_kind(reason: str) -> str:
    """A fallback reason with its counts as N (obstacle ids stay: 100-102 parked cars, 103-104
    left lane, 105-106 oncoming, 107-109 pedestrians)."""
    return re.sub(r"(?<!obstacle )\b\d+\b", "N", reason)

"""Timing of the lattice planner on generated situations (`stagepilot bench plan --json`).

Each call gets a fresh situation: a straight road or an arc, the ego at 3-15 m/s, and ten
obstacles: parked cars (one often in the ego lane), cars moving in the left lane, oncoming
cars two lanes over, and pedestrians crossing, walking or standing. The naive reference is
the exact shapely test on every footprint of every candidate, timed on a few calls.
"""

from __future__ import annotations

import time

import numpy as np
import shapely

from stagepilot.core.config import VehicleConfig
from stagepilot.core.config_lattice import LatticeConfig
from stagepilot.core.messages import EgoState
from stagepilot.core.paths import Polyline
from stagepilot.planning.collision import Obstacle, forecast, rectangles
from stagepilot.planning.frenet import ReferenceFrame
from stagepilot.planning.lattice import FrenetLatticePlanner, LatticeTarget

LANE_M = 3.5


def make_reference(rng: np.random.Generator, length_m: float = 300.0) -> tuple[Polyline, float]:
    """A straight road, or an arc of radius 40-150 m turning either way, with 1 m vertices;
    and the speed [m/s] the behaviour layer would allow on it (2.5 m/s^2 lateral)."""
    s = np.arange(0.0, length_m + 1.0)
    if rng.random() < 0.5:
        return Polyline(np.stack([s, np.zeros_like(s)], axis=1)), 15.0
    radius = rng.uniform(40.0, 150.0) * rng.choice([-1.0, 1.0])
    phi = s / radius
    points = np.stack([radius * np.sin(phi), radius * (1.0 - np.cos(phi))], axis=1)
    return Polyline(points), min(15.0, float(np.sqrt(2.5 * abs(radius))))


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
    speeds fit the curve, stops are at least a 2.5 m/s^2 stop away."""
    reference, max_speed = make_reference(rng)
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
    return ego, reference, ego_s, target, make_obstacles(rng, frame, ego_s, brake_m)


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
    obs = forecast(obstacles, planner.times, planner.config.collision.extra_margin_by_kind_m)
    T = len(planner.times)
    n = np.repeat(np.arange(len(obs)), T)
    obs_polys = shapely.polygons(
        rectangles(
            obs.x.ravel(),
            obs.y.ravel(),
            obs.cos[n],
            obs.sin[n],
            obs.half_length[n] + obs.margin[n],
            obs.half_width[n] + obs.margin[n],
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
    loaded stack's `planner.lattice` and `vehicle` sections."""
    rng = np.random.default_rng(seed)
    rear_axle_to_center_m = vehicle.length_m / 2 - vehicle.rear_overhang_m
    planner = FrenetLatticePlanner(config, vehicle.length_m, vehicle.width_m, rear_axle_to_center_m)
    situations = [make_situation(rng) for _ in range(calls)]
    for situation in situations[:5]:  # warm caches and imports
        planner.plan(*situation)
    planner.reset()
    times_ms, candidates, fallbacks, exact = [], [], 0, []
    for situation in situations:
        start = time.perf_counter()
        result = planner.plan(*situation)
        times_ms.append((time.perf_counter() - start) * 1e3)
        candidates.append(result.candidates)
        fallbacks += result.fallback
        exact.append(result.exact_checks)
    naive = [naive_exact_ms(planner, s) for s in situations[:naive_calls]]
    t = np.asarray(times_ms)
    return {
        "p50_ms": round(float(np.percentile(t, 50)), 3),
        "p99_ms": round(float(np.percentile(t, 99)), 3),
        "max_ms": round(float(t.max()), 3),
        "candidates": int(np.median(candidates)),
        "candidates_max": int(max(candidates)),
        "obstacles": 10,
        "calls": calls,
        "fallbacks": fallbacks,
        "exact_checks_mean": round(float(np.mean(exact)), 2),
        "naive_exact_collision_p50_ms": round(float(np.median(naive)), 3) if naive else None,
    }

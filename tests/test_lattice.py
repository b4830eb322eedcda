"""Frenet lattice planner: behaviour on a straight road and on a 60 m arc, limits, fallback,
determinism, the broad phase against exact shapely checks, and config validation.

Closed-loop tests replan every 0.1 s from the plan's own state at 0.1 s (perfect tracking),
with obstacles moving at constant velocity.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import shapely
from pydantic import ValidationError

from stagepilot.core.config import ConfigError, load_stack
from stagepilot.core.messages import EgoState
from stagepilot.core.paths import Polyline
from stagepilot.core.config_lattice import LatticeConfig
from stagepilot.planning.collision import (
    EgoFootprints,
    Obstacle,
    broad_phase,
    exact_overlap,
    first_hits,
    forecast,
    make_discs,
    overlaps,
    rectangles,
)
from stagepilot.planning.frenet import ReferenceFrame
from stagepilot.planning.lattice import FrenetLatticePlanner, LatticeResult, LatticeTarget

LENGTH, WIDTH, REAR_TO_CENTER = 4.6, 1.8, 1.4
REAR_TO_FRONT = REAR_TO_CENTER + LENGTH / 2
STEP_S = 0.1  # replanning period


def straight() -> Polyline:
    s = np.arange(0.0, 401.0)
    return Polyline(np.stack([s, np.zeros_like(s)], axis=1))


def arc(radius: float = 60.0) -> Polyline:
    """A left-turning arc of radius 60 m, 1 m vertices, starting at the origin heading east."""
    phi = np.arange(0.0, 300.0) / radius
    return Polyline(np.stack([radius * np.sin(phi), radius * (1.0 - np.cos(phi))], axis=1))


ROADS = {"straight": straight, "arc": arc}


def planner(config: LatticeConfig | None = None) -> FrenetLatticePlanner:
    return FrenetLatticePlanner(config or LatticeConfig(), LENGTH, WIDTH, REAR_TO_CENTER)


def ego_at(ref: Polyline, s: float, d: float = 0.0, speed: float = 10.0) -> EgoState:
    x, y, yaw, kappa = (float(v) for v in ReferenceFrame(ref).sample(np.asarray(s)))
    return EgoState(x - d * np.sin(yaw), y + d * np.cos(yaw), yaw, speed, speed * kappa, 0.0, 0.0)


def car_at(ref: Polyline, s: float, d: float = 0.0, obstacle_id: int = 12) -> Obstacle:
    x, y, yaw, _ = (float(v) for v in ReferenceFrame(ref).sample(np.asarray(s)))
    return Obstacle(
        x - d * np.sin(yaw), y + d * np.cos(yaw), yaw, 4.6, 1.9, 0.0, 0.0, obstacle_id, "vehicle"
    )


def body(x: float, y: float, yaw: float) -> shapely.Polygon:
    """The bare ego rectangle for a rear-axle pose."""
    c, s = np.cos(yaw), np.sin(yaw)
    corners = rectangles(
        np.array([x + REAR_TO_CENTER * c]),
        np.array([y + REAR_TO_CENTER * s]),
        np.array([c]),
        np.array([s]),
        LENGTH / 2,
        WIDTH / 2,
    )
    return shapely.Polygon(corners[0])


def box(o: Obstacle) -> shapely.Polygon:
    corners = rectangles(
        np.array([o.x]),
        np.array([o.y]),
        np.array([np.cos(o.yaw)]),
        np.array([np.sin(o.yaw)]),
        o.length / 2,
        o.width / 2,
    )
    return shapely.Polygon(corners[0])


def front_s(ref: Polyline, x: float, y: float, yaw: float, s_hint: float) -> float:
    return ref.project(x + REAR_TO_FRONT * np.cos(yaw), y + REAR_TO_FRONT * np.sin(yaw), s_hint)[0]


def assert_within_limits(result: LatticeResult, config: LatticeConfig, jerk: bool = False) -> None:
    """The chosen trajectory keeps the limits after t=0 (jerk by finite differences, where
    asked: the instant a stop holds is a step in acceleration)."""
    lim = config.limits
    a, kappa, v = result.a[1:], result.curvature[1:], result.v[1:]
    assert np.all(a <= lim.max_accel + 1e-6) and np.all(a >= lim.min_accel - 1e-6)
    assert np.all(np.abs(kappa) <= lim.max_curvature + 1e-6)
    assert np.all(np.abs(v**2 * kappa) <= lim.max_lateral_accel + 1e-6)
    assert np.all(result.v >= -1e-9)
    if jerk:
        assert np.all(np.abs(np.diff(a) / config.dt_s) <= lim.max_longitudinal_jerk + 0.2)


def follow_plans(ref, target, obstacles=(), s0=20.0, d0=0.0, v0=10.0, duration_s=10.0, config=None):
    """Replan every STEP_S and follow the plan perfectly; returns the plans and the poses."""
    config = config or LatticeConfig()
    lattice = planner(config)
    ego, ego_s = ego_at(ref, s0, d0, v0), s0
    k = round(STEP_S / config.dt_s)
    plans, poses = [], []
    for step in range(round(duration_s / STEP_S)):
        dt = step * STEP_S
        moved = [replace(o, x=o.x + o.vx * dt, y=o.y + o.vy * dt) for o in obstacles]
        result = lattice.plan(ego, ref, ego_s, target, moved)
        plans.append(result)
        poses.append((ego.x, ego.y, ego.yaw, ego.speed, ego_s))
        r = result
        ego = EgoState(r.x[k], r.y[k], r.yaw[k], r.v[k], r.v[k] * r.curvature[k], r.a[k], 0.0)
        ego_s = ref.project(ego.x, ego.y, s_hint=ego_s)[0]
    return plans, poses


# ---------------------------------------------------------------- behaviour


@pytest.mark.parametrize("road", ROADS)
def test_keeps_the_lane_centre_and_reaches_the_target_speed(road):
    ref = ROADS[road]()
    config = LatticeConfig()
    plans, poses = follow_plans(ref, LatticeTarget(12.0), d0=0.4, v0=6.0, duration_s=10.0)
    assert all(p.feasible and not p.fallback for p in plans)
    for p in plans:
        assert_within_limits(p, config, jerk=True)
    x, y, _, speed, s = poses[-1]
    assert abs(ref.project(x, y, s_hint=s)[1]) < 0.1
    assert speed == pytest.approx(12.0, abs=0.2)


@pytest.mark.parametrize("road", ROADS)
def test_stops_with_the_front_bumper_before_stop_s(road):
    ref = ROADS[road]()
    stop_s = 20.0 + REAR_TO_FRONT + 45.0
    plans, poses = follow_plans(ref, LatticeTarget(10.0, stop_s=stop_s), duration_s=15.0)
    assert all(p.feasible for p in plans)
    for p in plans:
        assert_within_limits(p, LatticeConfig())
        # every planned pose keeps the bumper behind the line, not only the driven ones
        fronts = [front_s(ref, x, y, yaw, stop_s) for x, y, yaw in zip(p.x, p.y, p.yaw)]
        assert max(fronts) <= stop_s + 0.02
    x, y, yaw, speed, s = poses[-1]
    assert speed < 0.05
    assert stop_s - 2.0 < front_s(ref, x, y, yaw, s) <= stop_s + 0.02


@pytest.mark.parametrize("road", ROADS)
def test_passes_a_parked_car_when_the_left_lane_is_allowed(road):
    ref = ROADS[road]()
    car = car_at(ref, 70.0)
    plans, poses = follow_plans(ref, LatticeTarget(10.0, d_min=-0.5, d_max=4.0), [car], duration_s=12.0)
    assert all(p.feasible for p in plans)
    offsets = [ref.project(x, y, s_hint=s)[1] for x, y, _, _, s in poses]
    gaps = [body(x, y, yaw).distance(box(car)) for x, y, yaw, _, _ in poses]
    assert min(gaps) >= LatticeConfig().collision.safety_margin_m - 0.05  # never overlaps
    assert max(offsets) > 2.0  # went round it
    assert poses[-1][4] > 70.0 + 20.0  # and is well past it
    assert min(v for _, _, _, v, _ in poses) > 5.0  # without stopping


@pytest.mark.parametrize("road", ROADS)
def test_stops_behind_a_parked_car_when_held_in_the_lane(road):
    ref = ROADS[road]()
    car = car_at(ref, 70.0)
    plans, poses = follow_plans(ref, LatticeTarget(10.0), [car], duration_s=12.0)
    assert not any(p.fallback for p in plans)
    assert "blocked" in plans[-1].reason and "obstacle 12" in plans[-1].reason
    gaps = [body(x, y, yaw).distance(box(car)) for x, y, yaw, _, _ in poses]
    assert min(gaps) >= LatticeConfig().collision.safety_margin_m - 0.05
    x, y, yaw, speed, s = poses[-1]
    assert speed < 0.1
    assert front_s(ref, x, y, yaw, s) < 70.0 - 2.3  # behind the car's rear bumper
    assert max(abs(ref.project(x, y, s_hint=s)[1]) for x, y, _, _, s in poses) < 0.6


def test_no_feasible_candidate_returns_the_fallback_stop():
    ref = straight()
    config = LatticeConfig()
    car = car_at(ref, 20.0 + REAR_TO_FRONT + 10.0)  # 7.7 m of room at 15 m/s
    result = planner(config).plan(
        ego_at(ref, 20.0, speed=15.0), ref, 20.0, LatticeTarget(15.0), [car]
    )
    assert result.fallback and not result.feasible
    assert result.cost == float("inf")
    assert "obstacle 12" in result.reason and "216" in result.reason
    assert np.all(np.diff(result.v) <= 1e-9) and result.v[-1] == 0.0
    assert result.a.min() >= -config.fallback.decel - 1e-9
    assert np.allclose(result.y, 0.0, atol=1e-6)  # along the lane
    assert len(result.times) == config.num_samples


def test_fallback_when_the_stop_is_too_close():
    ref = straight()
    result = planner().plan(
        ego_at(ref, 20.0, speed=12.0),
        ref,
        20.0,
        LatticeTarget(12.0, stop_s=20.0 + REAR_TO_FRONT + 3.0),
        [],
    )
    assert result.fallback
    assert "stop_s" in result.reason


def test_output_is_deterministic():
    ref = arc()
    target = LatticeTarget(10.0, d_min=-0.5, d_max=4.0)
    obstacles = [car_at(ref, 60.0), car_at(ref, 45.0, 3.5, obstacle_id=3)]
    a = planner().plan(ego_at(ref, 20.0, 0.2), ref, 20.0, target, obstacles)
    b = planner().plan(ego_at(ref, 20.0, 0.2), ref, 20.0, target, obstacles)
    for name in ("times", "x", "y", "yaw", "v", "a", "curvature"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert (a.cost, a.chosen_offset_m, a.reason) == (b.cost, b.chosen_offset_m, b.reason)


def test_default_sampling_gives_at_least_200_candidates():
    ref = straight()
    lattice = planner()
    result = lattice.plan(ego_at(ref, 20.0), ref, 20.0, LatticeTarget(10.0), [])
    assert result.candidates >= 200
    assert len(result.times) >= 40
    with_stop = lattice.plan(ego_at(ref, 20.0), ref, 20.0, LatticeTarget(10.0, stop_s=80.0), [])
    assert with_stop.candidates > result.candidates


def test_target_rejects_bad_values():
    with pytest.raises(ValueError, match="target_speed"):
        LatticeTarget(-1.0)
    with pytest.raises(ValueError, match="d_min"):
        LatticeTarget(5.0, d_min=1.0, d_max=-1.0)


# ---------------------------------------------------------------- collision checks


def random_traffic():
    """Candidates on the arc among 12 random vehicles and pedestrians: (lattice, ego, obs, broad)."""
    rng = np.random.default_rng(3)
    ref = arc()
    config = LatticeConfig()
    lattice = planner(config)
    world = lattice.rollout(
        ego_at(ref, 20.0, 0.3, 8.0), ref, 20.0, LatticeTarget(10.0, d_min=-0.5, d_max=4.0)
    )
    frame = ReferenceFrame(ref)
    obstacles = []
    for i in range(12):
        x, y, yaw, _ = (float(v) for v in frame.sample(np.asarray(rng.uniform(25.0, 70.0))))
        d = rng.uniform(-3.0, 5.0)
        kind = "pedestrian" if i % 3 == 0 else "vehicle"
        size = (0.5, 0.6) if kind == "pedestrian" else (4.6, 1.9)
        obstacles.append(
            Obstacle(
                x - d * np.sin(yaw),
                y + d * np.cos(yaw),
                yaw + rng.uniform(-1, 1),
                *size,
                rng.uniform(-3, 3),
                rng.uniform(-3, 3),
                i,
                kind,
            )
        )
    obs = forecast(
        obstacles, lattice.times, config.collision.extra_margin_by_kind_m, lattice.margin_ramp, 0.3
    )
    cos, sin = np.cos(world.yaw), np.sin(world.yaw)
    margin = config.collision.safety_margin_m
    ego = EgoFootprints(
        world.x + REAR_TO_CENTER * cos,
        world.y + REAR_TO_CENTER * sin,
        cos,
        sin,
        LENGTH / 2,
        WIDTH / 2,
        margin,
        make_discs(LENGTH / 2, WIDTH / 2, margin),
    )
    broad = broad_phase(ego, obs, config.collision.proximity_range_m, lattice.margin_ramp)
    return lattice, ego, obs, broad


def test_broad_phase_never_contradicts_the_exact_check():
    """Pairs the broad phase clears do not intersect; sure hits do; on random traffic."""
    lattice, ego, obs, broad = random_traffic()
    C, T = ego.x.shape
    every_t, every_n = np.meshgrid(np.arange(T), np.arange(len(obs)), indexing="ij")
    truth = np.array(
        [
            exact_overlap(ego, obs, c, every_t.ravel(), every_n.ravel(), lattice.margin_ramp) >= 0
            for c in range(C)
        ]
    )  # (C,) any exact overlap
    undecided = np.zeros(C, dtype=bool)
    undecided[broad.pair_c] = True
    assert truth.any() and (~truth).any()
    assert np.all(truth[broad.hit])  # sure hits are hits
    assert not np.any(truth & ~broad.hit & ~undecided)  # nothing cleared collides
    for c in np.flatnonzero(undecided & ~truth)[:20]:  # undecided pairs decide correctly
        assert exact_overlap(ego, obs, c, *broad.pairs_of(c), lattice.margin_ramp) < 0


def test_the_exact_test_agrees_with_shapely_on_random_rectangles():
    """The separating-axis test against shapely's polygon intersection: 4000 random pairs of
    rectangles, most near each other, some nudged to touch corner to edge."""
    rng = np.random.default_rng(3)
    P = 4000
    T = 1
    yaw_e, yaw_o = rng.uniform(-np.pi, np.pi, (2, P))
    ego = EgoFootprints(rng.uniform(-4, 4, (P, T)), rng.uniform(-4, 4, (P, T)), np.cos(yaw_e)[:, None],
                        np.sin(yaw_e)[:, None], LENGTH / 2, WIDTH / 2, 0.3, make_discs(LENGTH / 2, WIDTH / 2, 0.3))
    half = rng.uniform(0.3, 3.0, (2, P))
    obs = forecast([Obstacle(0.0, 0.0, float(y), 2 * float(a), 2 * float(b), 0.0, 0.0, i, "vehicle")
                    for i, (y, a, b) in enumerate(zip(yaw_o, *half))], np.zeros(T), {}, np.ones(T), 0.2)
    c, t, n = np.arange(P), np.zeros(P, dtype=int), np.arange(P)
    ramp = np.ones(T)
    got = overlaps(ego, obs, c, t, n, ramp)
    grow_e, grow_o = 0.3, obs.margin[n, 0]
    want = shapely.intersects(
        shapely.polygons(rectangles(ego.x[:, 0], ego.y[:, 0], ego.cos[:, 0], ego.sin[:, 0],
                                    LENGTH / 2 + grow_e, WIDTH / 2 + grow_e)),
        shapely.polygons(rectangles(obs.x[n, 0], obs.y[n, 0], obs.cos[n, 0], obs.sin[n, 0],
                                    obs.half_length + grow_o, obs.half_width + grow_o)))
    assert 0.2 < want.mean() < 0.8  # both answers are common
    assert np.array_equal(got, want)


def test_first_hits_of_many_candidates_at_once_equal_one_at_a_time():
    lattice, ego, obs, broad = random_traffic()
    undecided = np.unique(broad.pair_c)
    together = first_hits(ego, obs, broad, undecided[::-1], lattice.margin_ramp)  # any order
    alone = {int(c): exact_overlap(ego, obs, c, *broad.pairs_of(c), lattice.margin_ramp) for c in undecided}
    assert len(undecided) > 10
    assert together == alone
    assert any(v >= 0 for v in alone.values()) and any(v < 0 for v in alone.values())


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "values, key",
    [
        ({"dt_s": -0.1}, "dt_s"),
        ({"num_offsets": 0}, "num_offsets"),
        ({"speed_fractions": [0.5, 2.0]}, "speed_fractions"),
        ({"horizons_s": [2.0, 9.0]}, "horizons_s"),
        ({"limits": {"min_accel": 1.0}}, "limits.min_accel"),
        ({"weights": {"offest": 1.0}}, "weights.offest"),
        ({"collision": {"safety_margin_m": -0.1}}, "collision.safety_margin_m"),
        ({"fallback": {"decel": 12.0}}, "fallback.decel"),
    ],
)
def test_bad_config_values_are_rejected_naming_the_key(values, key):
    with pytest.raises(ValidationError) as err:
        LatticeConfig.model_validate(values)
    assert key.split(".")[-1] in str(err.value)
    flat = [
        f"{k}.{sub}={v}"
        for k, sub_values in values.items()
        for sub, v in (sub_values.items() if isinstance(sub_values, dict) else [(None, sub_values)])
    ]
    overrides = [f.replace(".None", "") for f in flat]
    with pytest.raises(ConfigError, match=f"planner.lattice.{key}"):
        load_stack(overrides=[f"planner.lattice.{o}" for o in overrides])

"""Frenet lattice local planner: sample, check, cost, and pick the cheapest feasible trajectory.

Candidates are lateral offsets x target speeds x horizons (Werling et al. 2010, as in
PythonRobotics' frenet_optimal_trajectory, but vectorised over all candidates at once):
- lateral: a quintic d(s) from the ego's offset, slope and bend to each target offset, laid out
  over horizon x max(speed, lateral_min_speed_mps) metres of travel;
- longitudinal: a quartic s(t) to each target speed (velocity keeping) over the horizon,
  stretched where a large speed change needs longer; and, when the behaviour layer sets
  stop_s, quintics that come to rest exactly there.
All candidates share one time grid 0 .. plan_horizon_s; a profile that ends earlier carries on
at its end state. Candidates start from the ego's measured state (not from the previous plan),
so a plan always begins where the car is.

The planned point is the rear-axle centre, as in EgoState. `ego_s` is that point's arc length
on the reference (`reference.project(ego.x, ego.y)`); it is refined by one projection step.
[d_min, d_max] bounds the target offsets of the rear axle, which is the body centre's offset
once the car runs parallel to the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stagepilot.core.messages import EgoState
from stagepilot.core.paths import Polyline
from stagepilot.core.config_lattice import LatticeConfig
from stagepilot.planning.collision import (
    EgoFootprints,
    Obstacle,
    ObstacleForecast,
    broad_phase,
    exact_overlap,
    forecast,
    make_discs,
)
from stagepilot.planning.frenet import (
    FrenetState,
    Profiles,
    ReferenceFrame,
    WorldTrajectories,
    braking_profiles,
    evaluate,
    hold_at_rest,
    lateral_in_time,
    quartic_coefficients,
    quintic_coefficients,
)

__all__ = ["FrenetLatticePlanner", "LatticeResult", "LatticeTarget", "Obstacle"]

_EPS = 1e-6


@dataclass(frozen=True)
class LatticeTarget:
    """What the behaviour layer asks for this tick."""

    target_speed: float  # [m/s] >= 0
    stop_s: float | None = None  # [m] arc length the FRONT BUMPER must stop by, or None
    d_min: float = -0.5  # [m] allowed target offsets of the ego from the reference, + left
    d_max: float = 0.5
    follow: int | None = None  # id of a lead vehicle; gap keeping is the behaviour layer's

    def __post_init__(self) -> None:
        if not np.isfinite(self.target_speed) or self.target_speed < 0.0:
            raise ValueError(f"target_speed must be finite and >= 0, got {self.target_speed}")
        if not (np.isfinite(self.d_min) and np.isfinite(self.d_max) and self.d_min <= self.d_max):
            raise ValueError(f"need finite d_min <= d_max, got ({self.d_min}, {self.d_max})")
        if self.stop_s is not None and not np.isfinite(self.stop_s):
            raise ValueError(f"stop_s must be finite or None, got {self.stop_s}")


@dataclass(frozen=True)
class LatticeResult:
    """The chosen trajectory of the rear axle in the world frame; arrays (T,) as in Plan."""

    times: np.ndarray  # [s] from now
    x: np.ndarray  # [m]
    y: np.ndarray  # [m]
    yaw: np.ndarray  # [rad]
    v: np.ndarray  # [m/s]
    a: np.ndarray  # [m/s^2] longitudinal
    curvature: np.ndarray  # [1/m]
    feasible: bool  # a candidate passed every check
    fallback: bool  # not feasible: this is the emergency stopping trajectory
    candidates: int  # generated and evaluated this call
    chosen_offset_m: float  # target lateral offset (the present one for the fallback)
    cost: float  # inf for the fallback
    reason: str  # one line; says why when blocked or falling back
    chosen_speed_mps: float = 0.0  # end speed of the chosen longitudinal profile
    chosen_horizon_s: float = 0.0  # duration of the lateral manoeuvre
    exact_checks: int = 0  # candidates that needed the exact shapely test


@dataclass(frozen=True)
class _Lattice:
    """Candidates as pairs of a lateral profile and a longitudinal profile."""

    lat_coef: np.ndarray  # (A, 6) quintics d(s - s0) in arc length
    lat_length: np.ndarray  # (A,) [m] over which each reaches its offset
    lat_offset: np.ndarray  # (A,) [m]
    lat_horizon: np.ndarray  # (A,) [s]
    lon: Profiles  # (L, T) s(t)
    lon_speed: np.ndarray  # (L,) [m/s] end speed
    lon_stop: np.ndarray  # (L,) bool: a stop at stop_s
    lat_idx: np.ndarray  # (C,)
    lon_idx: np.ndarray  # (C,)


@dataclass(frozen=True)
class _Rollout:
    frame: ReferenceFrame
    state: FrenetState
    s_stop: float | None  # [m] for the rear axle
    lattice: _Lattice
    lat: Profiles  # (C, T) d(t)
    world: WorldTrajectories  # (C, T)


class FrenetLatticePlanner:
    """One `plan` call per tick. Keeps only the last plan's end point (offset hysteresis)."""

    def __init__(
        self,
        config: LatticeConfig,
        vehicle_length_m: float,
        vehicle_width_m: float,
        rear_axle_to_center_m: float,
    ):
        self.config = config
        self.length_m = vehicle_length_m
        self.width_m = vehicle_width_m
        self.rear_to_center_m = rear_axle_to_center_m
        self.rear_to_front_m = rear_axle_to_center_m + 0.5 * vehicle_length_m
        self.times = np.arange(config.num_samples) * config.dt_s  # (T,)
        ramp_s = config.collision.margin_ramp_s
        self.margin_ramp = (
            np.minimum(self.times / ramp_s, 1.0) if ramp_s > 0 else np.ones_like(self.times)
        )
        margin = config.collision.safety_margin_m
        half_l, half_w = 0.5 * vehicle_length_m, 0.5 * vehicle_width_m
        self._ego_discs = make_discs(half_l, half_w, margin)
        self._last_end_xy: tuple[float, float] | None = None

    def reset(self) -> None:
        self._last_end_xy = None

    def plan(
        self,
        ego: EgoState,
        reference: Polyline,
        ego_s: float,
        target: LatticeTarget,
        obstacles: list[Obstacle],
    ) -> LatticeResult:
        """The cheapest feasible candidate, or the fallback stop when there is none."""
        roll = self._rollout(ego, reference, ego_s, target)
        failed = self._check_limits(roll)  # (C,) index of the first failed check
        cost = self._cost(roll, target, self._previous_offset(reference, roll.state))
        obs = forecast(obstacles, self.times, self.config.collision.extra_margin_by_kind_m)
        chosen, collided, exact_checks = self._choose(roll.world, failed, cost, obs)
        if chosen < 0:
            reason = _infeasible_reason(len(cost), failed, collided, obs)
            result = self._fallback(roll, reason, len(cost), exact_checks)
        else:
            result = self._result(roll, chosen, cost, target, collided, obs, exact_checks)
        self._last_end_xy = (float(result.x[-1]), float(result.y[-1]))
        return result

    def rollout(
        self, ego: EgoState, reference: Polyline, ego_s: float, target: LatticeTarget
    ) -> WorldTrajectories:
        """Every candidate of this tick in the world frame, (C, T), unchecked (for benchmarks)."""
        return self._rollout(ego, reference, ego_s, target).world

    def _rollout(
        self, ego: EgoState, reference: Polyline, ego_s: float, target: LatticeTarget
    ) -> _Rollout:
        frame = ReferenceFrame(reference)
        state = _clip_accel(
            frame.ego_state(ego, ego_s, self.config.limits.max_curvature), self.config
        )
        s_stop = self._rear_axle_stop(frame, target)
        lattice = self._sample(state, target, s_stop)
        lon = lattice.lon.take(lattice.lon_idx)  # (C, T)
        i = lattice.lat_idx
        lat = lateral_in_time(lattice.lat_coef[i], lattice.lat_length[i], state.s, lon)  # (C, T)
        at_s = tuple(v[lattice.lon_idx] for v in frame.sample(lattice.lon.p))  # (C, T) from (L, T)
        world = frame.to_world(lon, lat, state.heading_error, at_s)
        return _Rollout(frame, state, s_stop, lattice, lat, world)

    # ------------------------------------------------------------------ sampling

    def _rear_axle_stop(self, frame: ReferenceFrame, target: LatticeTarget) -> float | None:
        """Arc length the rear axle must stop by so that the front bumper stops by stop_s; on a
        curve a bumper off the reference gains or loses arc length by 1 / (1 - kappa d)."""
        if target.stop_s is None:
            return None
        kappa = float(frame.sample(np.asarray(target.stop_s))[3])
        band = np.array([target.d_min, target.d_max])
        stretch = np.max(1.0 / np.maximum(1.0 - kappa * band, 0.5))
        return target.stop_s - self.rear_to_front_m * max(float(stretch), 1.0)

    def _previous_offset(self, reference: Polyline, state: FrenetState) -> float | None:
        """Where the last plan was heading, as an offset [m] on this reference (None: no plan)."""
        if self._last_end_xy is None:
            return None
        x, y = self._last_end_xy
        ahead = float(np.hypot(*np.subtract(self._last_end_xy, reference.interpolate(state.s)[:2])))
        return reference.project(x, y, s_hint=state.s + ahead)[1]

    def _sample(self, state: FrenetState, target: LatticeTarget, s_stop: float | None) -> _Lattice:
        cfg = self.config
        horizons = np.asarray(cfg.horizons_s)  # (H,)
        offsets = sample_offsets(
            target.d_min, target.d_max, cfg.num_offsets, cfg.lane_width_m, state.d
        )  # (O,)
        H, O = len(horizons), len(offsets)
        lat_offset = np.tile(offsets, H)  # (A,) = (H * O,), horizon-major
        lat_horizon = np.repeat(horizons, O)
        lat_length = lat_horizon * max(state.ds, cfg.lateral_min_speed_mps)
        lat_coef = quintic_coefficients(
            state.d, state.d_slope, state.d_bend, lat_offset, 0.0, lat_length
        )

        speeds = target.target_speed * np.asarray(cfg.speed_fractions)  # (V,)
        V = len(speeds)
        lon_speed = np.tile(speeds, H)  # (H * V,)
        lon = self._speed_profiles(state, lon_speed, np.repeat(horizons, V), s_stop)  # (H * V, T)
        S = cfg.stop_candidates if s_stop is not None else 0
        if S:
            lon = _concat(lon, self._stop_profiles(state, s_stop, S))
            lon_speed = np.concatenate([lon_speed, np.zeros(S)])
        lon_stop = np.arange(len(lon_speed)) >= H * V  # lon is (L, T), L = H * V + S

        # per horizon h: every offset with each of its V speed profiles and the S stops
        h, o, k = np.meshgrid(np.arange(H), np.arange(O), np.arange(V + S), indexing="ij")
        lat_idx = (h * O + o).ravel()  # (C,) = (H * O * (V + S),)
        lon_idx = np.where(k < V, h * V + k, H * V + k - V).ravel()
        return _Lattice(
            lat_coef,
            lat_length,
            lat_offset,
            lat_horizon,
            lon,
            lon_speed,
            lon_stop,
            lat_idx,
            lon_idx,
        )

    # durations tried for a speed change, as multiples of its horizon, in order of preference
    _STRETCH = np.array(
        [1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 0.75, 0.5, 0.3]
    )  # (G,)

    def _speed_profiles(
        self, state: FrenetState, v_end: np.ndarray, horizon: np.ndarray, s_stop: float | None
    ) -> Profiles:
        """(L, T) quartics to speeds v_end (L,), each over its horizon (L,) [s] or, where that
        breaks a longitudinal limit, over the first of _STRETCH x horizon that keeps them."""
        G = len(self._STRETCH)
        duration = (horizon[:, None] * self._STRETCH).ravel()  # (L * G,)
        coef = quartic_coefficients(state.s, state.ds, state.dds, np.repeat(v_end, G), duration)
        grid = evaluate(coef, duration, self.times)  # (L * G, T)
        stops = np.repeat(v_end <= 0.0, G)[:, None]  # (L * G, 1) these brake to a standstill
        held = hold_at_rest(grid)
        grid = Profiles(
            *(
                np.where(stops, u, w)
                for u, w in zip(
                    (held.p, held.dp, held.ddp, held.dddp), (grid.p, grid.dp, grid.ddp, grid.dddp)
                )
            )
        )
        ok = (self._longitudinal_failure(grid, s_stop) < 0).reshape(len(v_end), G)
        pick = np.arange(len(v_end)) * G + np.where(ok.any(axis=1), np.argmax(ok, axis=1), 0)
        return grid.take(pick)

    def _stop_profiles(self, state: FrenetState, s_stop: float, count: int) -> Profiles:
        """(count, T) quintics to rest at s_stop: of durations stop_time_factors x distance /
        max(speed, 1 m/s), those within the limits with the least jerk."""
        room = max(s_stop - state.s, 0.01)
        duration = np.minimum(
            np.asarray(self.config.stop_time_factors) * room / max(state.ds, 1.0), 60.0
        )
        coef = quintic_coefficients(state.s, state.ds, state.dds, s_stop, 0.0, duration)
        grid = hold_at_rest(evaluate(coef, duration, self.times))  # (G, T)
        bad = self._longitudinal_failure(grid, s_stop) >= 0
        order = np.lexsort((np.mean(grid.dddp**2, axis=1), bad))  # feasible first, then smooth
        return grid.take(np.resize(order, count))

    _LONGITUDINAL = ("reverse", "jerk", "stop_s", "accel")

    def _longitudinal_failure(self, lon: Profiles, s_stop: float | None) -> np.ndarray:
        """(L,) index into _LONGITUDINAL of the first limit each profile breaks, -1 if none.
        Acceleration here is s''; the world-frame check follows in _check_limits."""
        lim = self.config.limits
        bad = [
            np.any(lon.dp < -0.05, axis=1),  # (L,)
            np.any(np.abs(lon.dddp[:, 1:]) > lim.max_longitudinal_jerk + _EPS, axis=1),
            np.zeros(len(lon.p), dtype=bool),
            np.any(
                (lon.ddp[:, 1:] > lim.max_accel + _EPS) | (lon.ddp[:, 1:] < lim.min_accel - _EPS),
                axis=1,
            ),
        ]
        if s_stop is not None:
            stop_dist = lon.p[:, -1] + lon.dp[:, -1] ** 2 / (2.0 * self.config.stop_decel)
            bad[2] = np.any(lon.p > s_stop + 0.01, axis=1) | (stop_dist > s_stop + 0.01)
        bad = np.stack(bad)  # (checks, L)
        return np.where(bad.any(axis=0), np.argmax(bad, axis=0), -1)

    # ------------------------------------------------------------------ checks and cost

    _CHECKS = _LONGITUDINAL + ("lateral_accel", "curvature", "heading")

    def _check_limits(self, roll: _Rollout) -> np.ndarray:
        """(C,) index into _CHECKS of the first limit each candidate breaks, -1 if none.
        The present state (t=0) is not judged: nothing can change it."""
        lim = self.config.limits
        failed = self._longitudinal_failure(roll.lattice.lon, roll.s_stop)[
            roll.lattice.lon_idx
        ]  # (C,)
        w = roll.world
        bad = np.stack(
            [
                np.any(
                    (w.a[:, 1:] > lim.max_accel + _EPS) | (w.a[:, 1:] < lim.min_accel - _EPS),
                    axis=1,
                ),
                np.any(np.abs(w.lateral_accel[:, 1:]) > lim.max_lateral_accel + _EPS, axis=1),
                np.any(np.abs(w.curvature[:, 1:]) > lim.max_curvature + _EPS, axis=1),
                np.any(
                    (np.abs(w.heading_error) > lim.max_heading_error_rad) | (w.one_minus_kd < 0.1),
                    axis=1,
                ),
            ]
        )  # (4, C): world accel, then the lateral checks
        world_failed = np.where(bad.any(axis=0), np.argmax(bad, axis=0) + 3, -1)
        return np.where(failed >= 0, failed, world_failed)

    def _cost(self, roll: _Rollout, target: LatticeTarget, d_prev: float | None) -> np.ndarray:
        """(C,) cost without the proximity term; see LatticeWeights for the terms. d_prev [m]
        is where the last plan was heading, as an offset on this reference."""
        wt = self.config.weights
        lattice, lat, lon, s_stop = roll.lattice, roll.lat, roll.lattice.lon, roll.s_stop
        lat_cost = (
            wt.offset * np.mean(lat.p**2, axis=1)
            + wt.lateral_jerk * np.mean(lat.dddp**2, axis=1)
            + wt.time * lattice.lat_horizon[lattice.lat_idx]
        )  # (C,)
        if d_prev is not None:
            lat_cost += wt.offset_change * (lattice.lat_offset[lattice.lat_idx] - d_prev) ** 2
        v_ref = np.full_like(lon.p, target.target_speed)  # (L, T)
        if s_stop is not None:
            room = np.maximum(s_stop - lon.p, 0.0)
            v_ref = np.minimum(v_ref, np.sqrt(2.0 * self.config.stop_decel * room))
        lon_cost = wt.longitudinal_jerk * np.mean(lon.dddp**2, axis=1) + wt.speed_error * np.mean(
            (lon.dp - v_ref) ** 2, axis=1
        )  # (L,)
        return lat_cost + lon_cost[lattice.lon_idx]

    _CHUNK = 96  # candidates per broad-phase batch

    def _choose(
        self, world: WorldTrajectories, failed: np.ndarray, cost: np.ndarray, obs: ObstacleForecast
    ):
        """Cheapest collision-free candidate within limits, by branch and bound over batches
        in order of cost without proximity (a lower bound of the full cost): per batch the
        broad phase rules out sure hits, clears distant pairs and measures proximity, then
        the exact test runs lazily in cost order; later batches run only while they could
        still hold a cheaper candidate. Returns (index or -1, (C,) index of an obstacle each
        checked candidate hits or -1, exact checks run). Adds proximity to `cost` in place."""
        collided = np.full(len(cost), -1)
        alive = np.flatnonzero(failed < 0)
        alive = alive[np.argsort(cost[alive], kind="stable")]  # (K,) by lower bound
        best, best_cost, exact_checks = -1, np.inf, 0
        for start in range(0, len(alive), self._CHUNK):
            rows = alive[start : start + self._CHUNK]
            if cost[rows[0]] >= best_cost:
                break
            ego = self._footprints(world, rows)
            broad = broad_phase(ego, obs, self.config.collision.proximity_range_m, self.margin_ramp)
            cost[rows] += self._proximity_cost(broad.clearance)
            collided[rows] = broad.hit_obstacle
            for k in np.argsort(np.where(broad.hit, np.inf, cost[rows]), kind="stable"):
                if broad.hit[k] or cost[rows[k]] >= best_cost:
                    break
                t_idx, n_idx = broad.pairs_of(k)
                if len(t_idx):
                    exact_checks += 1
                    n_hit = exact_overlap(ego, obs, k, t_idx, n_idx, self.margin_ramp)
                    if n_hit >= 0:
                        collided[rows[k]] = n_hit
                        continue
                best, best_cost = int(rows[k]), float(cost[rows[k]])
                break
        return best, collided, exact_checks

    def _proximity_cost(self, clearance: np.ndarray) -> np.ndarray:
        """(K,) cost of the smallest bare-body gaps clearance (K,) [m]."""
        reach = self.config.collision.proximity_range_m
        if reach <= 0:
            return np.zeros_like(clearance)
        return self.config.weights.proximity * np.clip(1.0 - clearance / reach, 0.0, 1.0) ** 2

    def _footprints(self, world: WorldTrajectories, rows: np.ndarray) -> EgoFootprints:
        cos, sin = np.cos(world.yaw[rows]), np.sin(world.yaw[rows])  # (K, T)
        return EgoFootprints(
            x=world.x[rows] + self.rear_to_center_m * cos,
            y=world.y[rows] + self.rear_to_center_m * sin,
            cos=cos,
            sin=sin,
            half_length=0.5 * self.length_m,
            half_width=0.5 * self.width_m,
            margin=self.config.collision.safety_margin_m,
            discs=self._ego_discs,
        )

    # ------------------------------------------------------------------ output

    def _result(
        self, roll: _Rollout, chosen: int, cost, target, collided, obs, exact_checks: int
    ) -> LatticeResult:
        lattice, world = roll.lattice, roll.world
        offset = float(lattice.lat_offset[lattice.lat_idx[chosen]])
        horizon = float(lattice.lat_horizon[lattice.lat_idx[chosen]])
        speed = float(lattice.lon_speed[lattice.lon_idx[chosen]])
        v_end = float(world.v[chosen, -1])
        if lattice.lon_stop[lattice.lon_idx[chosen]]:
            reason = f"stop by s {target.stop_s:.1f} m, offset {offset:+.2f} m"
        else:
            reason = f"offset {offset:+.2f} m, speed {speed:.1f} m/s, lateral T {horizon:.0f} s"
        blocked = collided >= 0
        if target.target_speed > 0.5 and v_end < 0.5 * target.target_speed and blocked.any():
            worst = int(obs.ids[np.argmax(np.bincount(collided[blocked]))])
            reason = f"blocked by obstacle {worst}: slowing to {v_end:.1f} m/s"
        return LatticeResult(
            times=self.times.copy(),
            x=world.x[chosen],
            y=world.y[chosen],
            yaw=world.yaw[chosen],
            v=world.v[chosen],
            a=world.a[chosen],
            curvature=world.curvature[chosen],
            feasible=True,
            fallback=False,
            candidates=len(cost),
            chosen_offset_m=offset,
            cost=float(cost[chosen]),
            reason=reason,
            chosen_speed_mps=speed,
            chosen_horizon_s=horizon,
            exact_checks=exact_checks,
        )

    def _fallback(
        self, roll: _Rollout, reason: str, candidates: int, exact_checks: int
    ) -> LatticeResult:
        """Brake as hard as config.fallback allows, holding the present lateral drift until the
        path runs parallel to the reference by the time the car stops."""
        fb, state = self.config.fallback, roll.state
        s, d = braking_profiles(state, self.times, fb.decel, fb.jerk)
        world = roll.frame.to_world(s, d, state.heading_error)  # (1, T)
        return LatticeResult(
            times=self.times.copy(),
            x=world.x[0],
            y=world.y[0],
            yaw=world.yaw[0],
            v=world.v[0],
            a=world.a[0],
            curvature=world.curvature[0],
            feasible=False,
            fallback=True,
            candidates=candidates,
            chosen_offset_m=state.d,
            cost=float("inf"),
            reason=reason,
            chosen_speed_mps=0.0,
            chosen_horizon_s=0.0,
            exact_checks=exact_checks,
        )


def _concat(a: Profiles, b: Profiles) -> Profiles:
    return Profiles(
        *(
            np.concatenate([u, w])
            for u, w in zip((a.p, a.dp, a.ddp, a.dddp), (b.p, b.dp, b.ddp, b.dddp))
        )
    )


def sample_offsets(
    d_min: float, d_max: float, count: int, lane_width_m: float, d_now: float
) -> np.ndarray:
    """(count,) target offsets [m] spread over [d_min, d_max]; the nearest free sample snaps to
    each lane centre in the band (nearest first) and then to the present offset."""
    offsets = (
        np.linspace(d_min, d_max, count) if count > 1 else np.array([np.clip(0.0, d_min, d_max)])
    )
    centres = (
        np.arange(np.ceil(d_min / lane_width_m), np.floor(d_max / lane_width_m) + 1) * lane_width_m
    )
    anchors = [
        *centres[np.argsort(np.abs(centres), kind="stable")],
        float(np.clip(d_now, d_min, d_max)),
    ]
    free = np.ones(count, dtype=bool)
    for anchor in anchors:
        if not free.any():
            break
        if np.any(np.abs(offsets[~free] - anchor) < 1e-3):
            continue
        i = int(np.argmin(np.where(free, np.abs(offsets - anchor), np.inf)))
        offsets[i], free[i] = anchor, False
    return offsets


def _clip_accel(state: FrenetState, config: LatticeConfig) -> FrenetState:
    """A measured acceleration outside the limits would fail every candidate at its first step,
    and one below zero at a standstill would start every candidate in reverse."""
    lim = config.limits
    dds = float(np.clip(state.dds, 0.0 if state.ds < 0.1 else lim.min_accel, lim.max_accel))
    return FrenetState(
        state.s, state.ds, dds, state.d, state.d_slope, state.d_bend, state.heading_error
    )


def _infeasible_reason(
    candidates: int, failed: np.ndarray, collided: np.ndarray, obs: ObstacleForecast
) -> str:
    """'all 216 candidates collide (mostly obstacle 12)', or counts of collisions and of the
    limits broken."""
    hits = collided[collided >= 0]
    parts = []
    if len(hits):
        worst = int(obs.ids[np.argmax(np.bincount(hits))])
        if len(hits) == candidates:
            return f"all {candidates} candidates collide (mostly obstacle {worst})"
        parts.append(f"{len(hits)} collide (mostly obstacle {worst})")
    limits = failed[failed >= 0]
    if len(limits):
        names = FrenetLatticePlanner._CHECKS
        counts = np.bincount(limits, minlength=len(names))
        top = ", ".join(
            f"{names[i]} {counts[i]}" for i in np.argsort(-counts, kind="stable") if counts[i]
        )
        parts.append(f"{len(limits)} break limits ({top})")
    return f"no feasible candidate of {candidates}: " + "; ".join(parts)

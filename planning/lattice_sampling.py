"""Sampling lattice candidates: offsets x speeds x horizons, and stops, laid out in the world.

- lateral: a quintic d(s) from the ego's offset, slope and bend to each target offset, over
  horizon x max(speed, lateral_min_speed_mps) metres of travel;
- longitudinal: a quartic s(t) to each target speed over the horizon, stretched where a large
  speed change needs longer; and, with a stop, quintics that come to rest exactly there.
All profiles share one time grid `times` (T,) [s]; one that ends earlier carries on at its end
state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stagepilot.core.config_lattice import LatticeConfig
from stagepilot.planning.frenet import (
    FrenetState,
    Profiles,
    ReferenceFrame,
    WorldTrajectories,
    evaluate,
    hold_at_rest,
    lateral_in_time,
    quartic_coefficients,
    quintic_coefficients,
)
from stagepilot.planning.lattice_checks import longitudinal_failure


@dataclass(frozen=True)
class Lattice:
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
class Rollout:
    """A tick's candidates in the reference's Frenet frame and in the world frame."""

    frame: ReferenceFrame
    state: FrenetState
    s_stop: float | None  # [m] for the rear axle
    lattice: Lattice
    lat: Profiles  # (C, T) d(t)
    world: WorldTrajectories  # (C, T)


def lay_out(
    frame: ReferenceFrame, state: FrenetState, s_stop: float | None, lattice: Lattice
) -> Rollout:
    """Every candidate of the lattice as d(t) and in the world frame, (C, T)."""
    lon = lattice.lon.take(lattice.lon_idx)  # (C, T)
    i = lattice.lat_idx
    lat = lateral_in_time(lattice.lat_coef[i], lattice.lat_length[i], state.s, lon)  # (C, T)
    at_s = tuple(v[lattice.lon_idx] for v in frame.sample(lattice.lon.p))  # (C, T) from (L, T)
    world = frame.to_world(lon, lat, state.heading_error, at_s)
    return Rollout(frame, state, s_stop, lattice, lat, world)


def rear_axle_stop(
    frame: ReferenceFrame, stop_s: float | None, d_min: float, d_max: float, rear_to_front_m: float
) -> float | None:
    """Arc length the rear axle must stop by so that the front bumper stops by stop_s [m]; on a
    curve a bumper off the reference gains or loses arc length by 1 / (1 - kappa d)."""
    if stop_s is None:
        return None
    kappa = float(frame.sample(np.asarray(stop_s))[3])
    band = np.array([d_min, d_max])
    stretch = np.max(1.0 / np.maximum(1.0 - kappa * band, 0.5))
    return stop_s - rear_to_front_m * max(float(stretch), 1.0)


def sample_lattice(
    state: FrenetState,
    target_speed: float,
    d_min: float,
    d_max: float,
    s_stop: float | None,
    config: LatticeConfig,
    times: np.ndarray,
) -> Lattice:
    """Offsets in [d_min, d_max] [m] x speed fractions of target_speed [m/s] x horizons, plus
    config.stop_candidates stops at s_stop [m] (rear axle) when there is one."""
    cfg = config
    horizons = np.asarray(cfg.horizons_s)  # (H,)
    offsets = sample_offsets(d_min, d_max, cfg.num_offsets, cfg.lane_width_m, state.d)  # (O,)
    H, O = len(horizons), len(offsets)
    lat_offset = np.tile(offsets, H)  # (A,) = (H * O,), horizon-major
    lat_horizon = np.repeat(horizons, O)
    lat_length = lat_horizon * max(state.ds, cfg.lateral_min_speed_mps)
    lat_coef = quintic_coefficients(
        state.d, state.d_slope, state.d_bend, lat_offset, 0.0, lat_length
    )

    speeds = target_speed * np.asarray(cfg.speed_fractions)  # (V,)
    V = len(speeds)
    lon_speed = np.tile(speeds, H)  # (H * V,)
    lon_horizon = np.repeat(horizons, V)
    lon = _speed_profiles(state, lon_speed, lon_horizon, s_stop, cfg, times)  # (H * V, T)
    S = cfg.stop_candidates if s_stop is not None else 0
    if S:
        lon = _concat(lon, _stop_profiles(state, s_stop, S, cfg, times))
        lon_speed = np.concatenate([lon_speed, np.zeros(S)])
    lon_stop = np.arange(len(lon_speed)) >= H * V  # lon is (L, T), L = H * V + S

    # per horizon h: every offset with each of its V speed profiles and the S stops
    h, o, k = np.meshgrid(np.arange(H), np.arange(O), np.arange(V + S), indexing="ij")
    lat_idx = (h * O + o).ravel()  # (C,) = (H * O * (V + S),)
    lon_idx = np.where(k < V, h * V + k, H * V + k - V).ravel()
    return Lattice(
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
_STRETCH = np.array([1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 0.75, 0.5, 0.3])  # (G,)


def _speed_profiles(
    state: FrenetState,
    v_end: np.ndarray,
    horizon: np.ndarray,
    s_stop: float | None,
    config: LatticeConfig,
    times: np.ndarray,
) -> Profiles:
    """(L, T) quartics to speeds v_end (L,), each over its horizon (L,) [s] or, where that
    breaks a longitudinal limit, over the first of _STRETCH x horizon that keeps them."""
    G = len(_STRETCH)
    duration = (horizon[:, None] * _STRETCH).ravel()  # (L * G,)
    coef = quartic_coefficients(state.s, state.ds, state.dds, np.repeat(v_end, G), duration)
    grid = evaluate(coef, duration, times)  # (L * G, T)
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
    ok = (longitudinal_failure(grid, s_stop, config) < 0).reshape(len(v_end), G)
    pick = np.arange(len(v_end)) * G + np.where(ok.any(axis=1), np.argmax(ok, axis=1), 0)
    return grid.take(pick)


def _stop_profiles(
    state: FrenetState, s_stop: float, count: int, config: LatticeConfig, times: np.ndarray
) -> Profiles:
    """(count, T) quintics to rest at s_stop: of durations stop_time_factors x distance /
    max(speed, 1 m/s), those within the limits with the least jerk."""
    room = max(s_stop - state.s, 0.01)
    duration = np.minimum(np.asarray(config.stop_time_factors) * room / max(state.ds, 1.0), 60.0)
    coef = quintic_coefficients(state.s, state.ds, state.dds, s_stop, 0.0, duration)
    grid = hold_at_rest(evaluate(coef, duration, times))  # (G, T)
    bad = longitudinal_failure(grid, s_stop, config) >= 0
    order = np.lexsort((np.mean(grid.dddp**2, axis=1), bad))  # feasible first, then smooth
    return grid.take(np.resize(order, count))


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


def clip_accel(state: FrenetState, config: LatticeConfig) -> FrenetState:
    """A measured acceleration outside the limits would fail every candidate at its first step,
    and one below zero at a standstill would start every candidate in reverse."""
    lim = config.limits
    dds = float(np.clip(state.dds, 0.0 if state.ds < 0.1 else lim.min_accel, lim.max_accel))
    return FrenetState(
        state.s, state.ds, dds, state.d, state.d_slope, state.d_bend, state.heading_error
    )

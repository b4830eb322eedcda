"""Limit checks of lattice candidates: the first limit each longitudinal profile or candidate
breaks, and the one-line reason when no candidate is left."""

from __future__ import annotations

import numpy as np

from stagepilot.core.config_lattice import LatticeConfig
from stagepilot.planning.collision import ObstacleForecast
from stagepilot.planning.frenet import Profiles, WorldTrajectories

_EPS = 1e-6

LONGITUDINAL = ("reverse", "jerk", "stop_s", "accel")
CHECKS = LONGITUDINAL + ("lateral_accel", "curvature", "heading")


def longitudinal_failure(lon: Profiles, s_stop: float | None, config: LatticeConfig) -> np.ndarray:
    """(L,) index into LONGITUDINAL of the first limit each profile breaks, -1 if none.
    Acceleration here is s''; the world-frame check follows in check_limits."""
    lim = config.limits
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
        stop_dist = lon.p[:, -1] + lon.dp[:, -1] ** 2 / (2.0 * config.stop_decel)
        bad[2] = np.any(lon.p > s_stop + 0.01, axis=1) | (stop_dist > s_stop + 0.01)
    bad = np.stack(bad)  # (checks, L)
    return np.where(bad.any(axis=0), np.argmax(bad, axis=0), -1)


def check_limits(
    lon: Profiles,
    lon_idx: np.ndarray,
    world: WorldTrajectories,
    s_stop: float | None,
    config: LatticeConfig,
) -> np.ndarray:
    """(C,) index into CHECKS of the first limit each candidate breaks, -1 if none; lon (L, T)
    are the longitudinal profiles, lon_idx (C,) each candidate's, world (C, T) the candidates.
    The present state (t=0) is not judged: nothing can change it."""
    lim = config.limits
    failed = longitudinal_failure(lon, s_stop, config)[lon_idx]  # (C,)
    w = world
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


def infeasible_reason(
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
        counts = np.bincount(limits, minlength=len(CHECKS))
        top = ", ".join(
            f"{CHECKS[i]} {counts[i]}" for i in np.argsort(-counts, kind="stable") if counts[i]
        )
        parts.append(f"{len(limits)} break limits ({top})")
    return f"no feasible candidate of {candidates}: " + "; ".join(parts)

"""Frenet frame pieces of the lattice planner: polynomial motion profiles and Frenet <-> world.

Frenet coordinates follow a reference Polyline: s is arc length [m], d the lateral offset [m],
positive left. The moving point is the ego's rear-axle centre, whose velocity points along
the body (no slip), so the heading of its path is the vehicle yaw.
Profile arrays are (P, T): P profiles sampled at T times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stagepilot.core.messages import EgoState
from stagepilot.core.paths import Polyline

_MIN_CURVATURE_SPEED = 0.2  # [m/s] below this, path curvature and heading are held, not computed


@dataclass(frozen=True)
class Profiles:
    """P one-dimensional profiles and their first three time derivatives, each (P, T)."""

    p: np.ndarray
    dp: np.ndarray
    ddp: np.ndarray
    dddp: np.ndarray

    def take(self, index: np.ndarray) -> Profiles:
        return Profiles(self.p[index], self.dp[index], self.ddp[index], self.dddp[index])


@dataclass(frozen=True)
class FrenetState:
    """The rear axle in Frenet coordinates: s with its time derivatives s' [m/s], s'' [m/s^2],
    and d with its arc-length derivatives dd/ds [-] and d2d/ds2 [1/m]."""

    s: float
    ds: float
    dds: float
    d: float
    d_slope: float
    d_bend: float
    heading_error: float  # [rad] ego yaw minus the reference heading


def quintic_coefficients(x0, v0, a0, x_end, v_end, duration) -> np.ndarray:
    """(P, 6) coefficients of x(t) from (x0, v0, a0) to (x_end, v_end, 0) over duration [s]."""
    x_end, v_end, T = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (x_end, v_end, duration))
    )
    b0 = x_end - (x0 + v0 * T + 0.5 * a0 * T**2)  # (P,)
    b1 = v_end - (v0 + a0 * T)
    b2 = -a0
    c = np.empty(T.shape + (6,))
    c[..., 0], c[..., 1], c[..., 2] = x0, v0, 0.5 * a0
    c[..., 3] = (10.0 * b0 - 4.0 * b1 * T + 0.5 * b2 * T**2) / T**3
    c[..., 4] = (-15.0 * b0 + 7.0 * b1 * T - b2 * T**2) / T**4
    c[..., 5] = (6.0 * b0 - 3.0 * b1 * T + 0.5 * b2 * T**2) / T**5
    return c


def quartic_coefficients(x0, v0, a0, v_end, duration) -> np.ndarray:
    """(P, 6) coefficients (last one 0) of x(t) reaching speed v_end with zero accel at duration."""
    v_end, T = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (v_end, duration)))
    dv = v_end - (v0 + a0 * T)  # (P,)
    da = -a0
    c = np.zeros(T.shape + (6,))
    c[..., 0], c[..., 1], c[..., 2] = x0, v0, 0.5 * a0
    c[..., 3] = (3.0 * dv - T * da) / (3.0 * T**2)
    c[..., 4] = (0.5 * T * da - dv) / (2.0 * T**3)
    return c


def evaluate(coefficients: np.ndarray, end: np.ndarray, at: np.ndarray) -> Profiles:
    """Sample P polynomials (P, 6) at `at`, (T,) shared or (P, T) per row, with derivatives
    with respect to that variable. Past its end (P,) each one carries on at its end slope with
    zero second and third derivatives."""
    c = [coefficients[:, k : k + 1] for k in range(6)]  # 6 x (P, 1)
    T = np.asarray(end, dtype=np.float64)[:, None]  # (P, 1)
    at = np.broadcast_to(at, (len(coefficients), at.shape[-1]))  # (P, T)
    tau = np.minimum(at, T)
    p = c[0] + tau * (c[1] + tau * (c[2] + tau * (c[3] + tau * (c[4] + tau * c[5]))))
    dp = c[1] + tau * (2 * c[2] + tau * (3 * c[3] + tau * (4 * c[4] + tau * 5 * c[5])))
    ddp = 2 * c[2] + tau * (6 * c[3] + tau * (12 * c[4] + tau * 20 * c[5]))
    dddp = 6 * c[3] + tau * (24 * c[4] + tau * 60 * c[5])
    after = at > T  # (P, T)
    p = p + dp * (at - tau)
    ddp = np.where(after, 0.0, ddp)
    dddp = np.where(after, 0.0, dddp)
    return Profiles(p, dp, ddp, dddp)


def hold_at_rest(lon: Profiles) -> Profiles:
    """Longitudinal profiles that stop and stay stopped: from the first step after t=0 where
    the speed reaches zero, the brakes hold (the undershoot into reverse is cut off)."""
    rest = lon.dp <= 0.0
    rest[:, 0] = False
    rest = np.maximum.accumulate(rest, axis=1)  # (P, T)
    first = np.argmax(rest, axis=1)  # (P,) index of the stop, 0 if it never stops
    s_rest = np.take_along_axis(lon.p, first[:, None], axis=1)
    return Profiles(
        np.where(rest, s_rest, lon.p),
        np.where(rest, 0.0, lon.dp),
        np.where(rest, 0.0, lon.ddp),
        np.where(rest, 0.0, lon.dddp),
    )


def lateral_in_time(
    coefficients: np.ndarray, length: np.ndarray, s0: float, lon: Profiles
) -> Profiles:
    """Lateral profiles d(t) = D(s(t) - s0) of quintics D in arc length, (C, 6) over length
    (C,) [m], along matching (C, T) longitudinal profiles; derivatives by the chain rule, so a
    car that stops mid-manoeuvre stops where it is instead of sliding sideways."""
    D = evaluate(coefficients, length, lon.p - s0)  # derivatives in s
    v, a, j = lon.dp, lon.ddp, lon.dddp
    return Profiles(
        D.p,
        D.dp * v,
        D.ddp * v**2 + D.dp * a,
        D.dddp * v**3 + 3.0 * D.ddp * v * a + D.dp * j,
    )


@dataclass(frozen=True)
class WorldTrajectories:
    """Trajectories of the rear axle in the world frame, each array (C, T)."""

    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    v: np.ndarray  # [m/s] speed along the path
    a: np.ndarray  # [m/s^2] tangential (longitudinal) acceleration
    curvature: np.ndarray  # [1/m] of the path, positive left
    lateral_accel: np.ndarray  # [m/s^2] v^2 * curvature
    heading_error: np.ndarray  # [rad] yaw minus the reference heading
    # 1 - kappa_ref * d; <= 0 means beyond the reference's centre of curvature
    one_minus_kd: np.ndarray


class ReferenceFrame:
    """A Polyline prepared for Frenet conversions: positions on its chords, heading linear
    between vertices (so offset points do not jump at vertices), straight beyond the ends."""

    def __init__(self, polyline: Polyline):
        self.polyline = polyline
        self.s = polyline.s  # (N,)
        seg_yaw = np.unwrap(polyline.yaw[:-1])  # (N-1,)
        yaw = np.empty(len(self.s))
        yaw[0], yaw[-1] = seg_yaw[0], seg_yaw[-1]
        yaw[1:-1] = 0.5 * (seg_yaw[:-1] + seg_yaw[1:])
        self.yaw = yaw
        self.kappa = polyline.curvature

    def sample(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, yaw, kappa) of the reference at arc lengths s (any shape)."""
        s_in = np.clip(s, 0.0, self.s[-1])
        beyond = s - s_in  # nonzero only past either end
        pts = self.polyline.points
        yaw = np.interp(s_in, self.s, self.yaw)
        cos, sin = np.cos(yaw), np.sin(yaw)
        x = np.interp(s_in, self.s, pts[:, 0]) + beyond * cos
        y = np.interp(s_in, self.s, pts[:, 1]) + beyond * sin
        kappa = np.where(beyond == 0.0, np.interp(s_in, self.s, self.kappa), 0.0)
        return x, y, yaw, kappa

    def ego_state(self, ego: EgoState, ego_s: float, max_curvature: float) -> FrenetState:
        """The ego rear axle's Frenet state. ego_s, its projection, is refined by one step.
        The path curvature is yaw_rate / speed, clipped to max_curvature [1/m], 0 when slow."""
        x_r, y_r, yaw_r, _ = self.sample(np.asarray(ego_s))
        s = float(ego_s + (ego.x - x_r) * np.cos(yaw_r) + (ego.y - y_r) * np.sin(yaw_r))
        x_r, y_r, yaw_r, kappa = (float(v) for v in self.sample(np.asarray(s)))
        d = float(-(ego.x - x_r) * np.sin(yaw_r) + (ego.y - y_r) * np.cos(yaw_r))
        dyaw = float(np.angle(np.exp(1j * (ego.yaw - yaw_r))))
        v = max(ego.speed, 0.0)
        omk = max(1.0 - kappa * d, 0.1)
        cos = max(np.cos(dyaw), 0.1)  # a car across the reference cannot follow it anyway
        kappa_ego = (
            float(np.clip(ego.yaw_rate / v, -max_curvature, max_curvature)) if v > 0.5 else 0.0
        )
        d_slope = omk * np.tan(dyaw)
        # Frenet geometry (Werling et al. 2010, dkappa/ds ignored)
        d_bend = -kappa * d_slope * np.tan(dyaw) + omk / cos**2 * (kappa_ego * omk / cos - kappa)
        return FrenetState(
            s,
            v * np.cos(dyaw) / omk,
            ego.accel * np.cos(dyaw),
            d,
            float(d_slope),
            float(d_bend),
            dyaw,
        )

    def to_world(
        self, s: Profiles, d: Profiles, heading_error0: float = 0.0, at_s: tuple | None = None
    ) -> WorldTrajectories:
        """World-frame trajectories for matching (C, T) longitudinal and lateral profiles.

        Derivatives are exact for a reference of piecewise-constant curvature (dkappa/ds is
        ignored). Where the speed is below 0.2 m/s heading and curvature hold their last value;
        at t=0 those fall back to heading_error0 [rad], the ego's, and straight.
        at_s: self.sample(s.p) when the caller already has it.
        """
        x_r, y_r, yaw_r, kappa = self.sample(s.p) if at_s is None else at_s  # (C, T) each
        cos, sin = np.cos(yaw_r), np.sin(yaw_r)
        x = x_r - d.p * sin
        y = y_r + d.p * cos
        omk = 1.0 - kappa * d.p  # (C, T)
        v_t = s.dp * omk  # velocity along the reference tangent
        v_n = d.dp  # and along its normal
        a_t = s.ddp * omk - 2.0 * kappa * s.dp * d.dp
        a_n = kappa * s.dp**2 * omk + d.ddp
        speed = np.hypot(v_t, v_n)
        moving = speed > _MIN_CURVATURE_SPEED
        safe_speed = np.where(moving, speed, 1.0)
        cross = v_t * a_n - v_n * a_t
        heading_error = np.arctan2(v_n, v_t)
        curvature = cross / safe_speed**3
        heading_error[:, 0] = np.where(moving[:, 0], heading_error[:, 0], heading_error0)
        curvature[:, 0] = np.where(moving[:, 0], curvature[:, 0], 0.0)
        heading_error = _hold(heading_error, moving)
        curvature = _hold(curvature, moving)
        accel = np.where(moving, (v_t * a_t + v_n * a_n) / safe_speed, a_t)
        lateral_accel = np.where(moving, cross / safe_speed, 0.0)
        return WorldTrajectories(
            x, y, yaw_r + heading_error, speed, accel, curvature, lateral_accel, heading_error, omk
        )


def _hold(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid entries of (C, T) values by the last valid one in the row; column 0
    is kept as it is (the present state)."""
    valid = valid.copy()
    valid[:, 0] = True
    index = np.where(valid, np.arange(values.shape[1])[None, :], 0)
    np.maximum.accumulate(index, axis=1, out=index)
    return np.take_along_axis(values, index, axis=1)


def braking_profiles(
    state: FrenetState, times: np.ndarray, decel: float, jerk: float
) -> tuple[Profiles, Profiles]:
    """(1, T) longitudinal and lateral profiles of an emergency stop: deceleration builds up at
    `jerk` [m/s^3] to `decel` [m/s^2] and holds until standstill. The lateral drift d' = dd/ds
    [m/m] fades linearly over the stopping distance, so the car stops parallel to the reference."""
    dt = np.diff(times, prepend=times[0])  # (T,)
    accel = np.maximum(min(state.dds, 0.0) - jerk * times, -decel)  # (T,)
    v = state.ds + np.cumsum(0.5 * (accel + np.concatenate([[accel[0]], accel[:-1]])) * dt)
    stopped = np.maximum.accumulate(v <= 0.0)
    v = np.where(stopped, 0.0, v)
    accel = np.where(stopped, 0.0, accel)
    s = state.s + np.cumsum(0.5 * (v + np.concatenate([[v[0]], v[:-1]])) * dt)
    slope = state.d_slope
    length = max(s[-1] - state.s, 1.0)
    sigma = (s - state.s) / length
    d = state.d + slope * length * (sigma - 0.5 * sigma**2)
    d_slope = slope * (1.0 - sigma)  # dd/ds
    d_curve = -slope / length  # d2d/ds2
    zero = np.zeros_like(times)
    lon = Profiles(s[None], v[None], accel[None], zero[None])
    lat = Profiles(
        d[None], (d_slope * v)[None], (d_curve * v**2 + d_slope * accel)[None], zero[None]
    )
    return lon, lat

"""PlanReference: a Plan as a path parameterised by arc length and a profile in time.

Lateral trackers look the plan up by place (project the vehicle onto the path); speed
trackers look it up by time (the plan's times are relative to `plan.t`). Repeated points
(a plan standing at a stop) are dropped from the path but kept in the time profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stagepilot.core.messages import Plan

_MIN_SEGMENT_M = 1e-6


@dataclass(frozen=True)
class PathPoint:
    """Where a point projects onto the plan's path."""

    s: float  # [m] arc length from the plan's first point
    lateral_m: float  # [m] offset of the point from the path, positive left
    yaw: float  # [rad] path heading there
    curvature: float  # [1/m] positive turning left


class PlanReference:
    def __init__(self, plan: Plan):
        x = np.asarray(plan.x, dtype=np.float64)
        y = np.asarray(plan.y, dtype=np.float64)
        self.t = float(plan.t)
        self.times = np.asarray(plan.times, dtype=np.float64)  # (N,) [s] from plan.t
        self.v = np.asarray(plan.v, dtype=np.float64)  # (N,) [m/s]
        self.a = np.asarray(plan.a, dtype=np.float64)  # (N,) [m/s^2]
        step = np.hypot(np.diff(x), np.diff(y))
        self.s_of_sample = np.concatenate([[0.0], np.cumsum(step)])  # (N,) [m], non-decreasing
        keep = np.concatenate([[True], step > _MIN_SEGMENT_M])
        self.s = self.s_of_sample[keep]  # (M,) strictly increasing
        self.x, self.y = x[keep], y[keep]
        self.yaw = np.unwrap(np.asarray(plan.yaw, dtype=np.float64))[keep]
        self.curvature = np.asarray(plan.curvature, dtype=np.float64)[keep]
        self.has_path = len(self.s) >= 2
        if self.has_path:
            seg = np.stack([np.diff(self.x), np.diff(self.y)], axis=1)  # (M-1, 2)
            self._seg_len = np.hypot(seg[:, 0], seg[:, 1])
            self._seg_dir = seg / self._seg_len[:, None]

    @property
    def length_m(self) -> float:
        return float(self.s[-1])

    # ------------------------------------------------------------ by place

    def project(self, x: float, y: float) -> PathPoint:
        """Nearest point of the path to (x, y); beyond the ends the path runs on straight."""
        rel = np.array([x - self.x[:-1], y - self.y[:-1]]).T  # (M-1, 2)
        along = np.einsum("ij,ij->i", rel, self._seg_dir)
        t = np.clip(along, 0.0, self._seg_len)
        dist2 = np.sum((rel - self._seg_dir * t[:, None]) ** 2, axis=1)
        k = int(np.argmin(dist2))
        if k == 0 and along[0] < 0.0:
            t_k = along[0]  # before the start
        elif k == len(self._seg_len) - 1 and along[k] > self._seg_len[k]:
            t_k = along[k]  # past the end
        else:
            t_k = t[k]
        d = self._seg_dir[k]
        lateral = d[0] * rel[k, 1] - d[1] * rel[k, 0]
        s = self.s[k] + t_k
        yaw, curvature = self.heading_at(s)
        return PathPoint(s=float(s), lateral_m=float(lateral), yaw=yaw, curvature=curvature)

    def heading_at(self, s: float) -> tuple[float, float]:
        """(yaw [rad], curvature [1/m]) at arc length s, clamped to the ends."""
        return float(np.interp(s, self.s, self.yaw)), float(np.interp(s, self.s, self.curvature))

    def point_at(self, s: float) -> tuple[float, float]:
        """(x, y) [m] at arc length s; beyond the ends along the end headings."""
        if s <= self.s[0]:
            return self.x[0] + s * math.cos(self.yaw[0]), self.y[0] + s * math.sin(self.yaw[0])
        if s >= self.s[-1]:
            extra = s - self.s[-1]
            return self.x[-1] + extra * math.cos(self.yaw[-1]), self.y[-1] + extra * math.sin(self.yaw[-1])
        return float(np.interp(s, self.s, self.x)), float(np.interp(s, self.s, self.y))

    def curvature_at(self, s: np.ndarray) -> np.ndarray:
        """Path curvature [1/m] at arc lengths s, clamped to the ends."""
        return np.interp(s, self.s, self.curvature)

    # ------------------------------------------------------------ by time

    def speed_at(self, tau_s: float | np.ndarray) -> np.ndarray:
        """Planned speed [m/s] at plan-relative time tau, held beyond the ends."""
        return np.interp(tau_s, self.times, self.v)

    def accel_at(self, tau_s: float | np.ndarray) -> np.ndarray:
        """Planned acceleration [m/s^2]; 0 after the plan's end (it holds its last speed)."""
        a = np.interp(tau_s, self.times, self.a)
        return np.where(np.asarray(tau_s) > self.times[-1], 0.0, a)

    def station_at(self, tau_s: float | np.ndarray) -> np.ndarray:
        """Planned arc length [m] at plan-relative time tau; after the end it runs on at the
        last speed."""
        tau = np.asarray(tau_s, dtype=np.float64)
        s = np.interp(tau, self.times, self.s_of_sample)
        return s + np.maximum(tau - self.times[-1], 0.0) * self.v[-1]

"""Polylines parameterised by arc length, in the world frame.

Shared by the simulators (NPC lanes, route progress) and the planner (reference paths).
"""

from __future__ import annotations

import numpy as np


class Polyline:
    """A 2D path through `points` (N, 2) [m], with arc length s (N,) [m] from the first point."""

    def __init__(self, points: np.ndarray):
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
            raise ValueError(f"a polyline needs (N>=2, 2) points, got shape {points.shape}")
        keep = np.ones(len(points), dtype=bool)
        keep[1:] = np.hypot(*np.diff(points, axis=0).T) > 1e-6
        self.points = points[keep]
        if len(self.points) < 2:
            raise ValueError("a polyline needs two distinct points")
        seg = np.diff(self.points, axis=0)  # (N-1, 2)
        self.seg_len = np.hypot(seg[:, 0], seg[:, 1])
        self.s = np.concatenate([[0.0], np.cumsum(self.seg_len)])
        self.seg_dir = seg / self.seg_len[:, None]
        seg_yaw = np.arctan2(seg[:, 1], seg[:, 0])
        self.yaw = np.concatenate([seg_yaw, seg_yaw[-1:]])
        self.curvature = self._curvature(seg_yaw)

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def _curvature(self, seg_yaw: np.ndarray) -> np.ndarray:
        """Heading change per metre at each vertex [1/m], positive turning left."""
        kappa = np.zeros(len(self.points))
        if len(seg_yaw) >= 2:
            dyaw = np.angle(np.exp(1j * np.diff(seg_yaw)))
            ds = 0.5 * (self.seg_len[1:] + self.seg_len[:-1])
            kappa[1:-1] = dyaw / ds
            kappa[0], kappa[-1] = kappa[1], kappa[-2]
        return kappa

    def interpolate(self, s: float | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, yaw) at arc length s, clamped to the ends; linear between vertices."""
        s_arr = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length)
        i = np.clip(np.searchsorted(self.s, s_arr, side="right") - 1, 0, len(self.seg_len) - 1)
        t = s_arr - self.s[i]
        x = self.points[i, 0] + self.seg_dir[i, 0] * t
        y = self.points[i, 1] + self.seg_dir[i, 1] * t
        return x, y, self.yaw[np.minimum(i, len(self.yaw) - 1)]

    def curvature_at(self, s: float | np.ndarray) -> np.ndarray:
        return np.interp(s, self.s, self.curvature)

    def project(
        self, x: float, y: float, s_hint: float | None = None, window_m: float = 30.0
    ) -> tuple[float, float]:
        """(s, lateral offset) of the point's projection; offset positive to the left.

        With `s_hint`, only segments within `window_m` of it are searched, so a path that
        passes near itself (a loop, a junction) projects onto the right branch.
        """
        lo, hi = 0, len(self.seg_len)
        if s_hint is not None:
            lo = max(int(np.searchsorted(self.s, s_hint - window_m)) - 1, 0)
            hi = min(int(np.searchsorted(self.s, s_hint + window_m)) + 1, len(self.seg_len))
        a = self.points[lo:hi]
        d = self.seg_dir[lo:hi]
        rel = np.array([x, y]) - a
        t = np.clip(np.einsum("ij,ij->i", rel, d), 0.0, self.seg_len[lo:hi])
        foot = a + d * t[:, None]
        dist2 = np.sum((np.array([x, y]) - foot) ** 2, axis=1)
        k = int(np.argmin(dist2))
        cross = d[k, 0] * rel[k, 1] - d[k, 1] * rel[k, 0]
        offset = float(np.sqrt(dist2[k])) * (1.0 if cross >= 0 else -1.0)
        return float(self.s[lo + k] + t[k]), offset

    def resampled(self, step_m: float) -> "Polyline":
        n = max(int(np.ceil(self.length / step_m)), 1)
        x, y, _ = self.interpolate(np.linspace(0.0, self.length, n + 1))
        return Polyline(np.stack([x, y], axis=1))

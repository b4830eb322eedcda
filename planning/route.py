"""The reference path the planner follows: the route, smoothed and parameterised by arc length,
with heading, curvature and the speed limit along it.

The lane-level route itself is searched on the road graph (core.roadmap.RoadMap.route,
shared with the simulators, which place traffic with it); here it becomes a reference that
is smooth enough to differentiate twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d

from stagepilot.core.messages import Route
from stagepilot.core.paths import Polyline


@dataclass(frozen=True)
class ReferencePath:
    path: Polyline  # resampled and smoothed, world frame
    speed_limit: np.ndarray  # (N,) [m/s] at path vertices
    source: Route

    @property
    def length(self) -> float:
        return self.path.length

    def limit_at(self, s: float) -> float:
        return float(np.interp(s, self.path.s, self.speed_limit))

    def curve_speed(self, s0: float, s1: float, max_lateral_accel: float, decel: float) -> float:
        """The highest speed at s0 from which every curve in [s0, s1] can be taken at
        `max_lateral_accel`, braking at `decel` before it [m/s]."""
        ahead = np.linspace(s0, max(s1, s0 + 1.0), 41)
        kappa = np.abs(self.path.curvature_at(ahead))
        allowed = np.sqrt(max_lateral_accel / np.maximum(kappa, 1e-5))
        return float(np.min(np.sqrt(allowed**2 + 2.0 * decel * (ahead - s0))))


def reference_from_route(route: Route, step_m: float = 0.5, smooth_window_m: float = 4.0) -> ReferencePath:
    """Resample the route every `step_m` and smooth it over `smooth_window_m` (ends fixed)."""
    raw = Polyline(route.points).resampled(step_m)
    points = raw.points.copy()
    window = max(int(round(smooth_window_m / step_m)) | 1, 1)
    if window > 1 and len(points) > 2 * window:
        smoothed = uniform_filter1d(points, size=window, axis=0, mode="nearest")
        keep = window // 2 + 1
        points[keep:-keep] = smoothed[keep:-keep]
    path = Polyline(points)
    # Curvature from second differences is noisy at 0.5 m steps; average it over the window.
    kappa = uniform_filter1d(path.curvature, size=window, mode="nearest")
    path.curvature = kappa
    return ReferencePath(path=path, speed_limit=np.full(len(path.s), route.speed_limit), source=route)

"""Prediction of obstacles over the plan horizon: vehicles along the road-map lanes they follow,
everything else at constant velocity.

Matching: a moving vehicle (speed >= min_speed_mps) is matched to the lane-centre piece of any
driving lane, junction connectors included, that minimises (offset / max_offset_m)^2 +
(heading error / max_heading_error_rad)^2, its heading being its course (the direction of its
velocity). Beyond either limit, off the map, standing, or not a vehicle: constant velocity.

Following: a matched vehicle drives along the lane's centre line and on through its successors
at its measured speed, heading along the lane at each time; its present offset from the centre
and heading error fade out linearly over CONVERGE_S. One hypothesis per vehicle: where a lane
has several successors (a junction entrance) it takes the one that turns least, since before
the turn nothing says which way it will go; once it turns, its heading matches it to the
connector it is on, and it follows that. Lane changes are not predicted; past a lane with no
successor it goes straight on.

Margins: an obstacle's rectangle grows by its kind's extra margin (ramped in from t = 0 as the
ego's) plus a growth rate times t: lane_margin_growth_mps for lane followers,
constant_velocity_margin_growth_mps for other moving obstacles, nothing for standing ones.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from stagepilot.core.config_lattice import LatticeCollision, LatticePrediction
from stagepilot.core.roadmap import RoadMap
from stagepilot.planning.collision import Obstacle, ObstacleForecast, forecast, margin_ramp
from stagepilot.planning.prediction_lanes import LaneIndex, LaneMatches

__all__ = ["CONVERGE_S", "LaneMatches", "ObstaclePredictor"]

CONVERGE_S = 2.0  # [s] a lane follower is back on the centre line, along it, after this
LAID_OUT_MPS = 30.0  # lane courses are laid out in advance for vehicles up to this fast


class ObstaclePredictor:
    """Forecasts of obstacles at times (T,) [s]; lane following needs a road map and
    config.kind "lanes", else every obstacle moves at constant velocity."""

    def __init__(
        self,
        config: LatticePrediction,
        collision: LatticeCollision,
        times: np.ndarray,
        road_map: RoadMap | None = None,
    ):
        self.config = config
        self.margin_by_kind = collision.extra_margin_by_kind_m
        self.times = times
        self.ramp = margin_ramp(times, collision.margin_ramp_s)  # (T,)
        self.fade = np.maximum(1.0 - times / CONVERGE_S, 0.0)  # (T,)
        use_lanes = road_map is not None and config.kind == "lanes"
        ahead_m = LAID_OUT_MPS * float(times[-1])
        self.lanes = LaneIndex(road_map, config.max_offset_m, ahead_m) if use_lanes else None

    def match(self, obstacles: list[Obstacle]) -> LaneMatches:
        """The lanes the obstacles follow; lane -1 for those at constant velocity."""
        cfg, n = self.config, len(obstacles)
        state = np.array([[o.x, o.y, o.vx, o.vy] for o in obstacles], dtype=np.float64)
        x, y, vx, vy = state.reshape(n, 4).T  # (N,) each
        vehicle = np.array([o.kind == "vehicle" for o in obstacles], dtype=bool)
        rows = np.flatnonzero(vehicle & (np.hypot(vx, vy) >= cfg.min_speed_mps))
        found = LaneMatches(np.full(n, -1), np.zeros(n), np.zeros(n), np.zeros(n))
        if self.lanes is None or not len(rows):
            return found
        course = np.arctan2(vy[rows], vx[rows])
        sub = self.lanes.match(
            x[rows], y[rows], course, cfg.max_offset_m, cfg.max_heading_error_rad
        )
        for name in ("lane", "s", "offset", "heading_error"):
            getattr(found, name)[rows] = getattr(sub, name)
        return found

    def predict(self, obstacles: list[Obstacle]) -> ObstacleForecast:
        """Every obstacle at every time: (N, T) centres, long axes and margins."""
        cfg = self.config
        matches = self.match(obstacles)
        speed = np.array([math.hypot(o.vx, o.vy) for o in obstacles], dtype=np.float64)
        on_lane = matches.lane >= 0
        growth = np.where(
            on_lane, cfg.lane_margin_growth_mps, cfg.constant_velocity_margin_growth_mps
        )
        growth[speed < cfg.min_speed_mps] = 0.0
        cv = forecast(obstacles, self.times, self.margin_by_kind, self.ramp, growth)
        if not on_lane.any():
            return cv
        rows = np.flatnonzero(on_lane)  # (M,)
        x, y, cos, sin = cv.x.copy(), cv.y.copy(), cv.cos.copy(), cv.sin.copy()
        cx, cy, yaw = self._along_lanes(matches.lane[rows], matches.s[rows], speed[rows])
        d = matches.offset[rows, None] * self.fade  # (M, T) offset from the centre, fading out
        x[rows], y[rows] = cx - np.sin(yaw) * d, cy + np.cos(yaw) * d
        # the box turns with the lane, and its heading error fades out with the offset
        axis0 = np.arctan2(cv.sin[rows, :1], cv.cos[rows, :1])  # (M, 1)
        axis = axis0 + (yaw - yaw[:, :1]) - matches.heading_error[rows, None] * (1.0 - self.fade)
        cos[rows], sin[rows] = np.cos(axis), np.sin(axis)
        return replace(cv, x=x, y=y, cos=cos, sin=sin)

    def _along_lanes(self, lane: np.ndarray, s0: np.ndarray, speed: np.ndarray):
        """Centre line points x, y (M, T) [m] and directions (M, T) [rad] reached from arc
        lengths s0 (M,) [m] on lanes (M,) at speed (M,) [m/s]; one interpolation for all."""
        s = s0[:, None] + speed[:, None] * self.times  # (M, T) along each lane's course
        courses = [self.lanes.course(int(k), float(end)) for k, end in zip(lane, s[:, -1])]
        stride = max(c.s[-1] for c in courses) + 1.0  # lays the courses end to end
        at = (s + stride * np.arange(len(courses))[:, None]).ravel()
        along = np.concatenate([c.s + stride * k for k, c in enumerate(courses)])
        x, y, yaw = (
            np.interp(at, along, np.concatenate([getattr(c, name) for c in courses])).reshape(s.shape)
            for name in ("x", "y", "yaw")
        )
        return x, y, yaw

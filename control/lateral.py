"""Geometric path trackers. Each returns a front-wheel angle [rad], positive left.

PurePursuit (rear axle): steer onto the arc through the plan point a look-ahead
Ld = gain * v + min along the path (PythonRobotics: 0.1 v + 2.0 m).
Stanley (front axle): delta = heading error + atan2(k e, v + softening) (Hoffmann et al.,
2007; PythonRobotics k = 0.5), plus a feed-forward of the front tyre's slip from the
plan's curvature. Both are exact on a circle for a kinematic car, so they need no
kinematic curvature feed-forward; only Stanley's slip term does.
"""

from __future__ import annotations

import math

from stagepilot.control.geometry import VehicleGeometry
from stagepilot.control.reference import PlanReference
from stagepilot.core.messages import EgoState
from stagepilot.core.config_control import PurePursuitConfig, StanleyConfig


def _wrap(angle_rad: float) -> float:
    return math.remainder(angle_rad, 2.0 * math.pi)


class PurePursuit:
    name = "pure_pursuit"

    def __init__(self, config: PurePursuitConfig, vehicle: VehicleGeometry):
        self.config = config
        self.vehicle = vehicle

    def lookahead_m(self, speed_mps: float) -> float:
        return self.config.lookahead_gain_s * max(speed_mps, 0.0) + self.config.lookahead_min_m

    def steer_angle(self, ego: EgoState, ref: PlanReference) -> float:
        """Front-wheel angle [rad] that puts the rear axle on an arc through the look-ahead point."""
        here = ref.project(ego.x, ego.y)
        goal_x, goal_y = ref.point_at(here.s + self.lookahead_m(ego.speed))
        dx, dy = goal_x - ego.x, goal_y - ego.y
        lateral = -math.sin(ego.yaw) * dx + math.cos(ego.yaw) * dy  # goal in the body frame, left
        if ego.speed < 0.0:  # reversing: the arc is driven backwards, the wheel turns the other way
            lateral = -lateral
        curvature = 2.0 * lateral / max(dx * dx + dy * dy, 1e-6)
        angle = math.atan(self.vehicle.wheelbase_m * curvature)
        return max(min(angle, self.vehicle.max_steer_angle_rad), -self.vehicle.max_steer_angle_rad)


class Stanley:
    name = "stanley"

    def __init__(self, config: StanleyConfig, vehicle: VehicleGeometry):
        self.config = config
        self.vehicle = vehicle

    def steer_angle(self, ego: EgoState, ref: PlanReference) -> float:
        """Front-wheel angle [rad] from the front axle's cross-track and heading errors."""
        cfg, wheelbase = self.config, self.vehicle.wheelbase_m
        front_x = ego.x + wheelbase * math.cos(ego.yaw)
        front_y = ego.y + wheelbase * math.sin(ego.yaw)
        here = ref.project(front_x, front_y)
        speed = max(ego.speed, 0.0)
        heading_error = _wrap(here.yaw - ego.yaw)
        # here.lateral_m > 0: the axle is left of the path, so steer right
        cross_track = math.atan2(-cfg.cross_track_gain_per_s * here.lateral_m, speed + cfg.softening_mps)
        slip = cfg.front_slip_rad_per_mps2 * speed * speed * here.curvature
        damping = -cfg.yaw_rate_damping_s * (ego.yaw_rate - speed * here.curvature)
        angle = heading_error + cross_track + slip + damping
        return max(min(angle, self.vehicle.max_steer_angle_rad), -self.vehicle.max_steer_angle_rad)

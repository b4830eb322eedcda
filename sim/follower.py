"""ReferenceFollower: a PLACEHOLDER driver that follows the route until the planner lands.

It reads the simulator's ground truth (which a real stage never does): pure pursuit on the
route for steering, and a speed target from the speed limit, the route's curvature, the goal,
red lights and whatever stands in the lane ahead. It exists so that `stagepilot sim render`
and the simulator tests can drive a route; planning/ and control/ replace it.
"""

from __future__ import annotations

import math

import numpy as np

from stagepilot.core.config import FollowerConfig
from stagepilot.core.messages import Control, Observation

COMFORT_DECEL = 3.0  # [m/s^2] for stopping at the goal, lights and obstacles
STOP_MARGIN_M = 4.0  # [m] kept to an obstacle or stop line


class ReferenceFollower:
    """Pure pursuit + proportional speed control along `Observation.route`."""

    def __init__(self, config: FollowerConfig, wheelbase_m: float, max_steer_rad: float,
                 front_reach_m: float):
        self.config = config
        self.wheelbase = wheelbase_m
        self.max_steer = max_steer_rad
        self.front_reach = front_reach_m  # rear axle to front bumper [m]
        self._path = None

    def __call__(self, obs: Observation) -> Control:
        from stagepilot.core.paths import Polyline

        if self._path is None or self._path.points is not obs.route.points:
            self._path = Polyline(obs.route.points)
        path, ego = self._path, obs.ego
        s = obs.route_progress
        steer_angle = self._pure_pursuit(path, s, ego)
        target = self._target_speed(path, s, obs)
        error = target - ego.speed
        throttle = float(np.clip(self.config.speed_gain * error + 0.15 * (target > 0.5), 0.0, 1.0))
        brake = float(np.clip(-self.config.speed_gain * error, 0.0, 1.0))
        if target < 0.05 and ego.speed < 0.5:
            throttle, brake = 0.0, 0.6  # hold still
        if brake > 0.0:
            throttle = 0.0
        return Control(steer=float(np.clip(-steer_angle / self.max_steer, -1, 1)), throttle=throttle, brake=brake)

    def _pure_pursuit(self, path, s, ego) -> float:
        lookahead = self.config.lookahead_min_m + self.config.lookahead_gain_s * max(ego.speed, 0.0)
        x, y, _ = path.interpolate(s + lookahead)
        dx, dy = float(x) - ego.x, float(y) - ego.y
        local_y = -math.sin(ego.yaw) * dx + math.cos(ego.yaw) * dy
        dist2 = max(dx * dx + dy * dy, 1e-6)
        return math.atan(2.0 * self.wheelbase * local_y / dist2)

    def _target_speed(self, path, s, obs: Observation) -> float:
        limit = obs.route.speed_limit
        ahead = np.linspace(s, s + 40.0, 21)
        kappa = np.abs(path.curvature_at(ahead))
        # Speed allowed at each point ahead, braking back to now at COMFORT_DECEL.
        curve = np.sqrt(self.config.max_lateral_accel / np.maximum(kappa, 1e-4))
        reach = np.sqrt(curve**2 + 2 * COMFORT_DECEL * (ahead - s))
        # Stop with the body centre on the goal; keep a margin to obstacles and stop lines.
        target = min(limit, float(reach.min()), math.sqrt(2 * COMFORT_DECEL * max(path.length - s, 0.0)))
        for gap in self._obstacle_gaps(path, s, obs):
            target = min(target, math.sqrt(2 * COMFORT_DECEL * max(gap - STOP_MARGIN_M, 0.0)))
        return target

    def _obstacle_gaps(self, path, s, obs: Observation) -> list[float]:
        """Distances from the front bumper to things that block the route ahead [m]."""
        truth = obs.ground_truth
        if truth is None:
            return []
        gaps = []
        for obj in truth.objects:
            if obj.kind == "traffic_light":
                continue
            ox, oy = obj.center_world[:2]
            if math.hypot(ox - obs.ego.x, oy - obs.ego.y) > 60.0:
                continue
            s_obj, offset = path.project(ox, oy, s_hint=s + 30.0, window_m=32.0)
            if s_obj > s and abs(offset) < 1.0 + max(obj.extent[1], 0.6) / 2 + 0.6:
                gaps.append(s_obj - s - self.front_reach - obj.extent[0] / 2)
        if self.config.stop_for_red:
            for light in truth.traffic_lights:
                if light.state == "green":
                    continue
                cx = (light.stop_line[0] + light.stop_line[2]) / 2
                cy = (light.stop_line[1] + light.stop_line[3]) / 2
                s_line, offset = path.project(cx, cy, s_hint=s + 30.0, window_m=32.0)
                gap = s_line - s - self.front_reach + STOP_MARGIN_M - 1.0
                if abs(offset) < 4.0 and gap > 0.0:
                    stopping = obs.ego.speed**2 / (2 * COMFORT_DECEL)
                    if light.state == "red" or gap > stopping:
                        gaps.append(gap)
        return gaps


def make_follower(sim) -> ReferenceFollower:
    """A follower for an EmbeddedSimulator's ego vehicle."""
    p = sim.vehicle_params
    return ReferenceFollower(sim.config.follower, p.cg_to_front_axle_m + p.cg_to_rear_axle_m,
                             p.max_steer_angle_rad, front_reach_m=p.length_m / 2)

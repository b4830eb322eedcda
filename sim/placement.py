"""Scenario poses on a road map: the ego's route and each pose as a world (x, y, yaw).

Both simulators place a scenario through this, so that a scenario means the same on the
embedded simulator and on a CARLA server; the CARLA backend also computes its spawn plan
with it, offline (sim/carla/spawn.py).
"""

from __future__ import annotations

import math

from stagepilot.core.config import ConfigError
from stagepilot.core.lanes import RoutePath
from stagepilot.core.roadmap import MapError, RoadMap
from stagepilot.sim.scenario import Pose, Scenario


class Placement:
    """The ego route of `scenario` on `road_map`, and its poses resolved against both."""

    def __init__(self, road_map: RoadMap, scenario: Scenario):
        self.road_map = road_map
        self.scenario = scenario
        self.route = self._build_route()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.scenario.source}: {key}: {problem}")

    def resolve(self, pose: Pose, key: str, on_road: bool = True) -> tuple[float, float, float]:
        """A scenario pose as world (x [m], y [m], yaw [rad]); `key` names it in errors. A world
        pose off the road is an error unless `on_road` is False (a pedestrian's path)."""
        if pose.route_s is not None:
            if pose.route_s > self.route.path.length:
                raise self.fail(key, f"route_s {pose.route_s} is beyond the route's {self.route.path.length:.0f} m")
            x, y, yaw = (float(v) for v in self.route.path.interpolate(pose.route_s))
        elif pose.road is not None:
            lane = self.road_map.lane_at(pose.road, pose.lane, pose.s)
            if lane is None:
                raise self.fail(key, f"no lane {pose.lane} on road {pose.road} at s={pose.s} in {self.road_map.source}")
            x, y, yaw = lane.x, lane.y, lane.yaw
        else:
            x, y = pose.x, pose.y
            yaw = math.radians(pose.yaw_deg) if pose.yaw_deg is not None else None
            if on_road:
                lane = self.road_map.waypoint(x, y, project=False)
                if lane is None:
                    raise self.fail(key, f"({x:.1f}, {y:.1f}) is off the road in {self.road_map.source}")
                yaw = lane.yaw if yaw is None else yaw
            yaw = 0.0 if yaw is None else yaw
        if pose.offset:
            x, y = x - math.sin(yaw) * pose.offset, y + math.cos(yaw) * pose.offset
        return x, y, yaw

    def _build_route(self) -> RoutePath:
        ego = self.scenario.ego
        poses = [("ego.start", ego.start)]
        poses += [(f"ego.waypoints.{i}", p) for i, p in enumerate(ego.waypoints)]
        if ego.goal is not None:
            poses.append(("ego.goal", ego.goal))
        # (route_s poses need the route itself; the ego's poses cannot use them: sim/scenario.py)
        points = [self.resolve(pose, key)[:2] for key, pose in poses]
        try:
            return self.road_map.route(points)
        except MapError as exc:
            raise self.fail("ego", str(exc)) from None


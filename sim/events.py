"""Per-tick events: collisions, leaving the lane or the road, red lights, route progress.

Definitions follow the CARLA Leaderboard where it has one (REFERENCE.md): outside the lane is
beyond half the lane width plus 0.5 m and is not checked inside junctions; a collision below
0.1 m/s ego speed, or a repeat with the same actor within 5 s, does not count. Something that
moves into the standing ego is still reported, as a ``contact_at_standstill`` event, which is
not an infraction.
"""

from __future__ import annotations

import math

from shapely.geometry import LineString, Polygon

from stagepilot.core.messages import Event
from stagepilot.core.paths import Polyline
from stagepilot.core.roadmap import RoadMap
from stagepilot.sim.traffic import Agent, TrafficLight

COLLISION_REPEAT_S = 5.0
COLLISION_MIN_SPEED = 0.1  # [m/s]
LANE_MARGIN_M = 0.5
ROUTE_END_TOLERANCE_M = 5.0  # [m] the body centre this close to the goal has arrived


class EventMonitor:
    """Watches the ego each tick and reports what changed as Events."""

    def __init__(self, road_map: RoadMap, route: Polyline, lights: list[TrafficLight]):
        self.road_map = road_map
        self.route = route
        self.lights = lights
        self.progress = 0.0  # [m] along the route
        self.route_completed = False
        self.off_road = False
        self.out_of_lane = False
        self._last_hit: dict[int, float] = {}
        self._touching: set[int] = set()
        self._last_front: tuple[float, float] | None = None
        self.counts: dict[str, int] = {}

    def update(self, t: float, ego: Agent, front: tuple[float, float], others: list[Agent]) -> list[Event]:
        events = self._collisions(t, ego, others)
        events += self._lane(t, ego)
        events += self._red_lights(t, front)
        events += self._progress(t, ego)
        for event in events:
            self.counts[event.kind] = self.counts.get(event.kind, 0) + 1
        return events

    def _collisions(self, t: float, ego: Agent, others: list[Agent]) -> list[Event]:
        events = []
        ego_poly = None
        reach = math.hypot(ego.size[0], ego.size[1]) / 2
        touching = set()
        for other in others:
            if not other.active:
                continue
            other_reach = math.hypot(other.size[0], other.size[1]) / 2
            if math.hypot(other.x - ego.x, other.y - ego.y) > reach + other_reach:
                continue
            ego_poly = ego_poly or Polygon(ego.corners())
            if not ego_poly.intersects(Polygon(other.corners())):
                continue
            touching.add(other.id)
            if other.id in self._touching:
                continue
            last = self._last_hit.get(other.id)
            if ego.speed < COLLISION_MIN_SPEED and other.speed < COLLISION_MIN_SPEED:
                continue
            if last is not None and t - last < COLLISION_REPEAT_S:
                continue
            self._last_hit[other.id] = t
            if ego.speed < COLLISION_MIN_SPEED:  # it moved into the standing ego: not the ego's infraction
                events.append(Event(t, "contact_at_standstill", f"{other.kind} {other.id} moved into the standing "
                                    f"ego at {other.speed:.1f} m/s", other.id))
            else:
                events.append(Event(t, "collision", f"collision with {other.kind} {other.id} at {ego.speed:.1f} m/s",
                                    other.id))
        self._touching = touching
        return events

    def _lane(self, t: float, ego: Agent) -> list[Event]:
        events = []
        lane = self.road_map.waypoint(ego.x, ego.y, project=False)
        off_road = lane is None
        if off_road != self.off_road:
            self.off_road = off_road
            if off_road:
                events.append(Event(t, "off_road", f"left the road at ({ego.x:.1f}, {ego.y:.1f})"))
        if lane is None or not lane.is_junction:
            out, detail = self._outside_route_lanes(ego, lane)
            if out != self.out_of_lane:
                self.out_of_lane = out
                if out:
                    events.append(Event(t, "lane_departure", detail))
        return events

    def _outside_route_lanes(self, ego: Agent, lane) -> tuple[bool, str]:
        """Out of the route's lanes: further than half a lane plus LANE_MARGIN_M from every
        lane that runs the route's way (a lane change to a parallel lane is not a departure;
        the oncoming lane, the shoulder or the sidewalk is)."""
        _, offset = self.route.project(ego.x, ego.y, s_hint=self.progress)
        if lane is not None:
            _, _, route_yaw = self.route.interpolate(self.progress)
            along = math.cos(lane.yaw - float(route_yaw)) > 0.0
            beside = -math.sin(lane.yaw) * (ego.x - lane.x) + math.cos(lane.yaw) * (ego.y - lane.y)
            if along and abs(beside) <= lane.width / 2 + LANE_MARGIN_M:
                return False, ""
        return True, f"{offset:+.2f} m off the route lane centre, outside the lanes that run the route's way"

    def _red_lights(self, t: float, front: tuple[float, float]) -> list[Event]:
        events = []
        if self._last_front is not None and front != self._last_front:
            moved = LineString([self._last_front, front])
            for light in self.lights:
                line = light.stop_line
                if light.state(t) != "red" or not moved.intersects(LineString([line.p0, line.p1])):
                    continue
                dx, dy = front[0] - self._last_front[0], front[1] - self._last_front[1]
                if dx * math.cos(line.heading) + dy * math.sin(line.heading) > 0:
                    events.append(Event(t, "red_light", f"ran the red light {light.id}", light.id))
        self._last_front = front
        return events

    def _progress(self, t: float, ego: Agent) -> list[Event]:
        s, _ = self.route.project(ego.x, ego.y, s_hint=self.progress, window_m=15.0)
        self.progress = max(self.progress, s)
        if not self.route_completed and self.progress >= self.route.length - ROUTE_END_TOLERANCE_M:
            self.route_completed = True
            return [Event(t, "route_completed", f"reached the goal after {self.progress:.0f} m")]
        return []

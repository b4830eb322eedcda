"""Per-frame criteria of a drive, from ground truth: where the ego was against the route's
lanes, how far from the route, and its time to collision. pipeline/score.py turns them into
the driving score.

Outside the route lanes (after the Leaderboard 2.0's OutsideRouteLanesTest): the ego's body
centre is inside when it lies within half the lane width plus 0.5 m of the centre of a route
lane, or of the route line itself (which also covers its lane changes). A route lane is a
driving lane on one of the route's roads that runs the route's way on that road (same sign of
lane id): a lane change to a parallel lane is not outside, the oncoming lane, the shoulder and
the sidewalk are, as in the Leaderboard's wrong-lane and outside-driving-lanes tests. Frames
inside a junction are not checked (None).

Time to collision: both boxes move on at their present velocity (the ego along its heading at
its speed, the other at its ground-truth velocity), neither turns. The TTC is the first time
in [0, `TTC_HORIZON_S`] at which the two oriented boxes overlap, solved exactly on their four
separating axes; 0 when they overlap now. Only actors whose centre is ahead of the ego's body
centre count (the ego closing in on them), and only while the ego moves (at least 0.1 m/s, the
Leaderboard's collision epsilon). Traffic lights are not actors. None: nothing on a collision
course within the horizon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stagepilot.core.config import ConfigError
from stagepilot.core.messages import Observation
from stagepilot.core.paths import Polyline
from stagepilot.sim.events import COLLISION_MIN_SPEED, LANE_MARGIN_M  # beyond half a lane + margin: outside

MOVING_MPS = COLLISION_MIN_SPEED  # [m/s] the Leaderboard's epsilon: slower is standing
TTC_HORIZON_S = 5.0  # [s] a constant-velocity projection is not worth more
ACTOR_KINDS = ("vehicle", "pedestrian", "static")


@dataclass(frozen=True)
class CriteriaFrame:
    """One frame of the criteria; positions are the ego's body centre, world frame."""

    t: float  # [s]
    x: float  # [m]
    y: float  # [m]
    speed: float  # [m/s]
    route_progress: float  # [m] along the route (the simulator's, never decreasing)
    route_distance: float  # [m] from the route line
    outside_lanes: bool | None  # None: in a junction, not checked
    ttc_s: float | None  # None: nothing on a collision course within the horizon


def time_to_collision(ego_box: np.ndarray, ego_velocity: np.ndarray, boxes: np.ndarray, velocities: np.ndarray,
                      horizon_s: float = TTC_HORIZON_S) -> np.ndarray:
    """Constant-velocity time to collision of the ego with each box [s], inf where they do not
    meet within `horizon_s`. A box is (x, y, yaw, length, width) [m, rad], centre and full
    size; ego_box (5,), boxes (N, 5), velocities (N, 2) and ego_velocity (2,) [m/s] world."""
    boxes = np.asarray(boxes, float).reshape(-1, 5)
    rel_v = np.asarray(velocities, float).reshape(-1, 2) - np.asarray(ego_velocity, float)  # (N, 2)
    rel_p = boxes[:, :2] - ego_box[:2]  # (N, 2)
    ego_axes = _axes(np.full(len(boxes), ego_box[2]))  # (N, 2, 2): forward, left
    other_axes = _axes(boxes[:, 2])
    start, stop = np.zeros(len(boxes)), np.full(len(boxes), float(horizon_s))
    for axis in (ego_axes[:, 0], ego_axes[:, 1], other_axes[:, 0], other_axes[:, 1]):  # each (N, 2)
        reach = _half_extent(ego_axes, ego_box[3], ego_box[4], axis) + _half_extent(other_axes, boxes[:, 3],
                                                                                    boxes[:, 4], axis)
        gap = np.einsum("ij,ij->i", rel_p, axis)
        closing = np.einsum("ij,ij->i", rel_v, axis)
        still = np.abs(closing) < 1e-9
        with np.errstate(divide="ignore", invalid="ignore"):
            t0, t1 = (-reach - gap) / closing, (reach - gap) / closing
        lo = np.where(still, np.where(np.abs(gap) <= reach, -np.inf, np.inf), np.minimum(t0, t1))
        hi = np.where(still, np.where(np.abs(gap) <= reach, np.inf, -np.inf), np.maximum(t0, t1))
        start, stop = np.maximum(start, lo), np.minimum(stop, hi)
    return np.where(start <= stop, start, np.inf)


def _axes(yaw: np.ndarray) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], 1)  # (N, 2 axes, 2)


def _half_extent(axes: np.ndarray, length, width, direction: np.ndarray) -> np.ndarray:
    """Half the size of boxes with `axes` (N, 2, 2) projected on unit `direction` (N, 2)."""
    along = np.abs(np.einsum("ij,ij->i", axes[:, 0], direction))
    across = np.abs(np.einsum("ij,ij->i", axes[:, 1], direction))
    return np.asarray(length) / 2 * along + np.asarray(width) / 2 * across


class CriteriaObserver:
    """A driver observer (`drive(..., observers=(criteria,))`) that keeps one `CriteriaFrame`
    per frame, aligned with the drive's series, and the kind of every actor it saw."""

    def __init__(self, ttc_horizon_s: float = TTC_HORIZON_S):
        self.ttc_horizon_s = ttc_horizon_s
        self.frames: list[CriteriaFrame] = []
        self.actor_kinds: dict[int, str] = {}
        self.route: Polyline | None = None
        self._route_ways: set[tuple[int, int]] = set()  # (road id, sign of lane id)
        self._ego_size = (0.0, 0.0)  # [m] length, width
        self._centre_ahead_m = 0.0  # [m] body centre ahead of the rear axle

    def start(self, sim, obs: Observation) -> None:
        if obs.ground_truth is None:
            raise ConfigError("sim.ground_truth: the driving criteria need ground truth; set sim.ground_truth: true")
        self.frames, self.actor_kinds = [], {}
        self.route = Polyline(obs.route.points)
        keys = getattr(getattr(sim, "route", None), "segment_keys", ())
        self._route_ways = {(road, int(np.sign(lane))) for road, _, lane in keys}
        vehicle = sim.config.vehicle
        self._ego_size = (vehicle.length_m, vehicle.width_m)
        self._centre_ahead_m = vehicle.length_m / 2 - vehicle.rear_overhang_m

    def frame(self, obs: Observation, record) -> None:
        ego = obs.ego
        x = ego.x + self._centre_ahead_m * math.cos(ego.yaw)
        y = ego.y + self._centre_ahead_m * math.sin(ego.yaw)
        _, offset = self.route.project(x, y, s_hint=obs.route_progress)
        for obj in obs.ground_truth.objects:
            self.actor_kinds.setdefault(obj.id, obj.kind)
        self.frames.append(CriteriaFrame(
            t=float(obs.t), x=x, y=y, speed=float(ego.speed), route_progress=float(obs.route_progress),
            route_distance=abs(offset), outside_lanes=self._outside(obs, abs(offset)), ttc_s=self._ttc(obs, x, y)))

    def end(self, result) -> None:
        pass

    def _outside(self, obs: Observation, route_distance: float) -> bool | None:
        lane = obs.ground_truth.lane
        if lane.is_junction:
            return None
        reach = lane.lane_width / 2 + LANE_MARGIN_M
        on_route_lane = (lane.road_id, int(np.sign(lane.lane_id))) in self._route_ways
        return not ((on_route_lane and abs(lane.lateral_offset) <= reach) or route_distance <= reach)

    def _ttc(self, obs: Observation, x: float, y: float) -> float | None:
        ego = obs.ego
        if ego.speed < MOVING_MPS:
            return None
        heading = np.array([math.cos(ego.yaw), math.sin(ego.yaw)])
        actors = [o for o in obs.ground_truth.objects if o.kind in ACTOR_KINDS
                  and (o.center_world[0] - x) * heading[0] + (o.center_world[1] - y) * heading[1] > 0.0]
        if not actors:
            return None
        boxes = np.array([(*o.center_world[:2], o.yaw_world, o.extent[0], o.extent[1]) for o in actors])
        velocities = np.array([o.velocity_world for o in actors])
        ego_box = np.array([x, y, ego.yaw, *self._ego_size])
        ttc = float(time_to_collision(ego_box, ego.speed * heading, boxes, velocities, self.ttc_horizon_s).min())
        return ttc if math.isfinite(ttc) else None

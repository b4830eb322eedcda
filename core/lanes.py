"""Lane-level values of the road map, in the world frame.

`carla.Map` answers in CARLA's left-handed frame; `core/carla_frame.py` converts what it
gives into the world frame (x east, y north, yaw CCW [rad]).
"""

from __future__ import annotations

from dataclasses import dataclass

import carla
import numpy as np

from stagepilot.core.carla_frame import to_world_xy, world_yaw
from stagepilot.core.paths import Polyline

DRIVING = carla.LaneType.Driving


@dataclass(frozen=True)
class LanePoint:
    """A point on a lane centre line."""

    x: float
    y: float
    yaw: float  # [rad] along the lane's driving direction
    road_id: int
    section_id: int
    lane_id: int
    s: float  # OpenDRIVE s along the road [m]
    width: float  # [m]
    is_junction: bool
    junction_id: int
    lane_type: str

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.road_id, self.section_id, self.lane_id)


def lane_point(wp: carla.Waypoint) -> LanePoint:
    x, y = to_world_xy(wp.transform.location)
    return LanePoint(
        x=x,
        y=y,
        yaw=world_yaw(wp.transform.rotation),
        road_id=wp.road_id,
        section_id=wp.section_id,
        lane_id=wp.lane_id,
        s=wp.s,
        width=wp.lane_width,
        is_junction=wp.is_junction,
        junction_id=wp.junction_id if wp.is_junction else -1,
        lane_type=str(wp.lane_type),
    )


@dataclass(frozen=True)
class LaneSegment:
    """One driving lane of one road section, in driving order (a road-graph edge)."""

    key: tuple[int, int, int]
    path: Polyline
    width: np.ndarray  # (N,) [m] at path vertices (before de-duplication: same length as path)
    is_junction: bool
    junction_id: int


@dataclass(frozen=True)
class StopLine:
    """Where traffic entering a junction from one approach must stop."""

    junction_id: int
    road_id: int
    lane_keys: tuple[tuple[int, int, int], ...]
    p0: tuple[float, float]  # left end [m]
    p1: tuple[float, float]  # right end [m]
    heading: float  # [rad] direction of travel across the line

    @property
    def center(self) -> tuple[float, float]:
        return ((self.p0[0] + self.p1[0]) / 2, (self.p0[1] + self.p1[1]) / 2)


@dataclass(frozen=True)
class RoutePath:
    """A lane-level route: a dense polyline and the lane segment of each leg."""

    path: Polyline
    segment_keys: tuple[tuple[int, int, int], ...]
    junction_ids: tuple[int, ...]  # junctions crossed, in order

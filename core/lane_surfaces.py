"""What is drawn of the road: quads of lane surfaces and the painted markings, in the world frame.

Both are built from the waypoints the road map sampled along each lane segment
(`RoadMap._samples`, key -> waypoints in driving order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import carla
import numpy as np

from stagepilot.core.carla_frame import to_world_xy, world_yaw
from stagepilot.core.lanes import DRIVING


@dataclass(frozen=True)
class LaneSurface:
    lane_type: str  # CARLA lane type name: Driving, Sidewalk, Shoulder, Parking, ...
    polygon: np.ndarray  # (4, 2) world [m]
    is_junction: bool


@dataclass(frozen=True)
class LaneMarking:
    points: np.ndarray  # (N, 2) world [m]
    width_m: float
    color: str  # white | yellow
    dashed: bool

    @property
    def rgb(self) -> tuple[int, int, int]:
        return (235, 190, 40) if self.color == "yellow" else (235, 235, 230)


def _edge(wp: carla.Waypoint, side: int) -> tuple[float, float]:
    """A lane edge point: side +1 is the left edge in the driving direction, -1 the right."""
    x, y = to_world_xy(wp.transform.location)
    yaw = world_yaw(wp.transform.rotation)
    half = side * wp.lane_width / 2
    return x - math.sin(yaw) * half, y + math.cos(yaw) * half


def _quad(a: carla.Waypoint, b: carla.Waypoint) -> np.ndarray | None:
    if a.transform.location.distance(b.transform.location) < 1e-3:
        return None
    return np.array([_edge(a, 1), _edge(b, 1), _edge(b, -1), _edge(a, -1)])


def _outer_lanes(wp: carla.Waypoint) -> list[carla.Waypoint]:
    """Non-driving lanes to the right of the outermost driving lane, inner to outer."""
    out = []
    lane = wp.get_right_lane()
    if lane is not None and lane.lane_type == DRIVING:
        return out
    while lane is not None and lane.lane_type != DRIVING and np.sign(lane.lane_id) == np.sign(wp.lane_id):
        out.append(lane)
        lane = lane.get_right_lane()
    return out


_PAINTED = {
    carla.LaneMarkingType.Solid: (False, 1),
    carla.LaneMarkingType.Broken: (True, 1),
    carla.LaneMarkingType.SolidSolid: (False, 2),
    carla.LaneMarkingType.SolidBroken: (False, 2),
    carla.LaneMarkingType.BrokenSolid: (False, 2),
    carla.LaneMarkingType.BrokenBroken: (True, 2),
}


def _marking_runs(wps: list[carla.Waypoint], side: int) -> list[LaneMarking]:
    """Polylines of one lane edge, split where the marking type changes."""
    runs: list[LaneMarking] = []
    current: list[tuple[float, float]] = []
    style = None
    for wp in [*wps, None]:
        mark = None if wp is None else (wp.left_lane_marking if side > 0 else wp.right_lane_marking)
        kind = None if mark is None else _PAINTED.get(mark.type)
        new_style = None if kind is None else (kind, str(mark.color).lower())
        if new_style != style or wp is None:
            if style is not None and len(current) >= 2:
                (dashed, lines), color = style
                pts = np.array(current)
                for offset in ((0.0,) if lines == 1 else (-0.12, 0.12)):
                    runs.append(LaneMarking(_offset(pts, offset), 0.15, color if color == "yellow" else "white", dashed))
            current = []
            style = new_style
        if wp is not None and style is not None:
            current.append(_edge(wp, side))
    return runs


def _offset(points: np.ndarray, offset: float) -> np.ndarray:
    if offset == 0.0:
        return points
    d = np.gradient(points, axis=0)
    n = np.stack([-d[:, 1], d[:, 0]], axis=1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    return points + n * offset


def lane_surfaces(samples: dict[tuple[int, int, int], list[carla.Waypoint]]) -> list[LaneSurface]:
    """Quads covering every driving lane and the lanes beside it (shoulder, sidewalk...),
    in drawing order: side lanes first, then driving lanes, junctions last."""
    side, driving = [], []
    for key in sorted(samples):
        wps = samples[key]
        for a, b in zip(wps[:-1], wps[1:]):
            quad = _quad(a, b)
            if quad is not None:
                driving.append(LaneSurface("Driving", quad, a.is_junction))
            if a.is_junction:
                continue
            for sa, sb in zip(_outer_lanes(a), _outer_lanes(b)):
                if sa.lane_id == sb.lane_id and (quad := _quad(sa, sb)) is not None:
                    side.append(LaneSurface(str(sa.lane_type), quad, False))
    driving.sort(key=lambda surface: surface.is_junction)
    return side + driving


def lane_markings(samples: dict[tuple[int, int, int], list[carla.Waypoint]]) -> list[LaneMarking]:
    """Painted lines outside junctions: each lane's left line, and the right edge line of
    the outermost driving lane."""
    marks = []
    for key in sorted(samples):
        wps = [w for w in samples[key] if not w.is_junction]
        if len(wps) < 2:
            continue
        marks += _marking_runs(wps, side=+1)
        right = wps[0].get_right_lane()
        if right is None or right.lane_type != DRIVING:
            marks += _marking_runs(wps, side=-1)
    return marks

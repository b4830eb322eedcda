"""The road map: OpenDRIVE through `carla.Map`, converted to the world frame.

`carla.Map(name, xodr_text)` parses OpenDRIVE offline but answers in CARLA's left-handed
frame (y flipped, yaw clockwise in degrees). The road map modules (this one, `lanes`,
`lane_surfaces`) and the CARLA backend are the only code that sees that frame: everything they
return is in the world frame (x east, y north, yaw CCW [rad]). It is shared by the simulators
and the planner. Lane values live in `lanes`, surfaces and markings in `lane_surfaces`.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import carla
import networkx as nx
import numpy as np

from stagepilot.core.lane_surfaces import LaneMarking, LaneSurface, lane_markings, lane_surfaces
from stagepilot.core.carla_frame import to_carla_location, to_world_xy
from stagepilot.core.lanes import DRIVING, LanePoint, LaneSegment, RoutePath, StopLine, lane_point
from stagepilot.core.inputs import MAX_MAP_BYTES, read_text
from stagepilot.core.paths import Polyline
from stagepilot.core.signals import signal_heads

SAMPLE_STEP_M = 1.0
LANE_CHANGE_COST_M = 30.0  # route-length penalty of one lane change
LANE_CHANGE_LEAD_M = 5.0  # [m] driven on the old lane before the change starts
LANE_CHANGE_LENGTH_M = 30.0  # [m] along which the route moves across


class MapError(ValueError):
    """A map that cannot be read or used; the message names the file."""


def _check_xml(text: str, source: str) -> dict[int, list[tuple[float, float]]]:
    """Reject what is not OpenDRIVE with a clear message; return each road's lane-section
    s ranges."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        line, col = exc.position
        raise MapError(f"{source}: malformed OpenDRIVE XML at line {line}, column {col + 1}") from None
    if root.tag != "OpenDRIVE":
        raise MapError(f"{source}: not an OpenDRIVE file (root element <{root.tag}>)")
    if root.find("road") is None:
        raise MapError(f"{source}: OpenDRIVE file has no <road> elements")
    sections: dict[int, list[tuple[float, float]]] = {}
    for road in root.iter("road"):
        try:
            length = float(road.get("length"))
            starts = [float(ls.get("s", 0.0)) for ls in road.iter("laneSection")]
            sections[int(road.get("id"))] = list(zip(starts, [*starts[1:], length]))
        except (TypeError, ValueError):
            continue  # carla decides what it makes of an odd road; routing skips it
    return sections


class RoadMap:
    """Lanes, junctions, stop lines and the lane-level road graph of one OpenDRIVE map."""

    def __init__(self, name: str, xodr_text: str, source: str = "<memory>"):
        sections = _check_xml(xodr_text, source)
        try:
            self.carla_map = carla.Map(name, xodr_text)
        except RuntimeError as exc:
            raise MapError(f"{source}: carla could not build the map ({exc})") from None
        self.name = name
        self.source = source
        self.xodr_text = xodr_text  # kept so that a recording can carry its map
        topology = self.carla_map.get_topology()
        if not topology:
            raise MapError(f"{source}: the map has no drivable lanes")
        self.graph = nx.DiGraph()
        self.segments: dict[tuple[int, int, int], LaneSegment] = {}
        self._samples: dict[tuple[int, int, int], list[carla.Waypoint]] = {}
        for entry_wp, exit_wp in topology:
            self._add_segment(entry_wp, exit_wp)
        self._add_dead_end_lanes(sections)
        self._add_lane_changes()
        self._finish_graph()
        self.stop_lines = self._find_stop_lines()
        self.signal_heads = signal_heads(self.stop_lines)
        self.bounds = self._bounds()

    @classmethod
    def load(cls, path: str | Path) -> "RoadMap":
        path = Path(path)
        text = read_text(path, error=MapError, kind="map file", max_bytes=MAX_MAP_BYTES)
        return cls(path.stem, text, str(path))

    # ------------------------------------------------------------ graph

    def _add_segment(self, entry_wp: carla.Waypoint, exit_wp: carla.Waypoint) -> None:
        # Topology pairs are (start of a lane, start of a lane that continues it).
        key = (entry_wp.road_id, entry_wp.section_id, entry_wp.lane_id)
        next_key = (exit_wp.road_id, exit_wp.section_id, exit_wp.lane_id)
        if key not in self.segments:
            wps = [entry_wp, *entry_wp.next_until_lane_end(SAMPLE_STEP_M)]
            wps = [w for w in wps if (w.road_id, w.section_id, w.lane_id) == key] or [entry_wp]
            pts = np.array([to_world_xy(w.transform.location) for w in wps])
            end = np.array(to_world_xy(exit_wp.transform.location))
            if np.hypot(*(pts[-1] - end)) > 0.05:
                pts = np.vstack([pts, end])
                wps.append(exit_wp)
            keep = np.ones(len(pts), dtype=bool)
            keep[1:] = np.hypot(*np.diff(pts, axis=0).T) > 1e-6
            wps = [w for w, k in zip(wps, keep) if k]
            pts = pts[keep]
            if len(pts) < 2:
                pts = np.vstack([pts, pts[-1] + 1e-3])
                wps = [wps[0], wps[0]]
            self.segments[key] = LaneSegment(
                key=key,
                path=Polyline(pts),
                width=np.array([w.lane_width for w in wps]),
                is_junction=entry_wp.is_junction,
                junction_id=entry_wp.junction_id if entry_wp.is_junction else -1,
            )
            self._samples[key] = wps
            self.graph.add_node(key)
        self.graph.add_edge(key, next_key)

    def _add_dead_end_lanes(self, sections: dict[int, list[tuple[float, float]]]) -> None:
        # get_topology() leaves out lanes that end without a successor (the far end of a
        # straight road); take them from the waypoint grid so they can be routed on too.
        # (Waypoint.previous_until_lane_start crashes on such lanes in carla 0.9.16, so the
        # lane start comes from the section's s range instead.)
        for wp in self.carla_map.generate_waypoints(2.0):
            key = (wp.road_id, wp.section_id, wp.lane_id)
            if key in self.segments or wp.road_id not in sections:
                continue
            s0, s1 = sections[wp.road_id][wp.section_id]
            start = self.carla_map.get_waypoint_xodr(wp.road_id, wp.lane_id, s0 + 0.01 if wp.lane_id < 0 else s1 - 0.01)
            if start is None:
                continue
            ends = start.next_until_lane_end(SAMPLE_STEP_M)
            last = ends[-1] if ends else start
            successors = [w for w in last.next(SAMPLE_STEP_M) if (w.road_id, w.section_id, w.lane_id) != key]
            for nxt in successors or [last]:
                self._add_segment(start, nxt)
            if not successors and self.graph.has_edge(key, key):
                self.graph.remove_edge(key, key)

    def _add_lane_changes(self) -> None:
        # A lane change is an edge to the parallel lane of the same direction, where the
        # marking between them allows it; it costs LANE_CHANGE_COST_M of route length.
        for key, wps in list(self._samples.items()):
            wp = wps[len(wps) // 2]
            if wp.is_junction or self.segments[key].path.length < 2 * LANE_CHANGE_LEAD_M:
                continue
            for side, allowed in ((wp.get_left_lane(), (carla.LaneChange.Left, carla.LaneChange.Both)),
                                  (wp.get_right_lane(), (carla.LaneChange.Right, carla.LaneChange.Both))):
                if side is None or side.lane_type != DRIVING or side.lane_id * wp.lane_id <= 0:
                    continue
                other = (side.road_id, side.section_id, side.lane_id)
                if other in self.segments and wp.lane_change in allowed:
                    self.graph.add_edge(key, other, lane_change=True, weight=LANE_CHANGE_COST_M)

    def _finish_graph(self) -> None:
        # Edge weight: the length of the lane being left, so a path's cost is its length.
        for u, v in list(self.graph.edges):
            if v not in self.segments:
                self.graph.remove_edge(u, v)
            elif not self.graph.edges[u, v].get("lane_change"):
                self.graph.edges[u, v]["weight"] = self.segments[u].path.length
        self.graph.remove_nodes_from([n for n in list(self.graph.nodes) if n not in self.segments])

    def successors(self, key: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        """Lane segments that continue `key`, in a stable order."""
        return sorted(self.graph.successors(key))

    # ------------------------------------------------------------ queries

    def waypoint(
        self, x: float, y: float, project: bool = True, lane_type=DRIVING
    ) -> LanePoint | None:
        """The lane point nearest (x, y); None when not on a lane and `project` is False."""
        wp = self.carla_map.get_waypoint(
            to_carla_location(x, y), project_to_road=project, lane_type=lane_type
        )
        return None if wp is None else lane_point(wp)

    def on_road(self, x: float, y: float) -> bool:
        """Whether the point lies on a driving lane (shoulders and sidewalks are not road)."""
        return self.waypoint(x, y, project=False) is not None

    def lane_at(self, road_id: int, lane_id: int, s: float) -> LanePoint | None:
        wp = self.carla_map.get_waypoint_xodr(int(road_id), int(lane_id), float(s))
        return None if wp is None else lane_point(wp)

    def segment_at(self, x: float, y: float) -> tuple[LaneSegment, float] | None:
        """The driving-lane segment under (x, y) and the arc length along it."""
        lp = self.waypoint(x, y, project=True)
        if lp is None or lp.key not in self.segments:
            return None
        segment = self.segments[lp.key]
        s, _ = segment.path.project(x, y)
        return segment, s

    # ------------------------------------------------------------ routing

    def route(self, points: list[tuple[float, float]]) -> RoutePath:
        """The shortest lane-level route through `points` (start, ..., goal), in order.

        Raises MapError when a point is off the road or no route connects two points.
        """
        pieces: list[np.ndarray] = []
        keys: list[tuple[int, int, int]] = []
        for a, b in zip(points[:-1], points[1:]):
            leg_pts, leg_keys = self._route_leg(a, b)
            pieces.append(leg_pts if not pieces else leg_pts[1:])
            keys.extend(k for k in leg_keys if not keys or keys[-1] != k)
        points_xy = np.concatenate(pieces)
        if len(points_xy) < 2 or not np.any(np.hypot(*np.diff(points_xy, axis=0).T) > 1e-6):
            raise MapError(f"{self.source}: the route from ({points[0][0]:.1f}, {points[0][1]:.1f}) to "
                           f"({points[-1][0]:.1f}, {points[-1][1]:.1f}) has no length: the goal is at the start")
        path = Polyline(points_xy)
        junctions = []
        for k in keys:
            j = self.segments[k].junction_id
            if j >= 0 and (not junctions or junctions[-1] != j):
                junctions.append(j)
        return RoutePath(path=path, segment_keys=tuple(keys), junction_ids=tuple(junctions))

    def _locate(self, xy: tuple[float, float]) -> tuple[LaneSegment, float]:
        found = self.segment_at(*xy)
        if found is None:
            raise MapError(f"{self.source}: point ({xy[0]:.1f}, {xy[1]:.1f}) is not near a driving lane")
        return found

    def _route_leg(self, a, b) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        seg_a, s_a = self._locate(a)
        seg_b, s_b = self._locate(b)
        if seg_a.key == seg_b.key and s_b >= s_a:
            return _cut(seg_a.path, s_a, s_b), [seg_a.key]
        def heuristic(u, v):
            return math.dist(self.segments[u].path.points[-1], self.segments[v].path.points[0])

        try:
            if seg_a.key != seg_b.key:
                keys = nx.astar_path(self.graph, seg_a.key, seg_b.key, heuristic=heuristic, weight="weight")
            else:  # behind us on the same lane: leave it and come round again
                loops = [[seg_a.key, *nx.astar_path(self.graph, n, seg_b.key, heuristic=heuristic, weight="weight")]
                         for n in self.successors(seg_a.key) if nx.has_path(self.graph, n, seg_b.key)]
                if not loops:
                    raise nx.NetworkXNoPath
                keys = min(loops, key=lambda ks: sum(self.segments[k].path.length for k in ks))
        except nx.NetworkXNoPath:
            raise MapError(
                f"{self.source}: no route from ({a[0]:.1f}, {a[1]:.1f}) to ({b[0]:.1f}, {b[1]:.1f})"
            ) from None
        return self._leg_points(keys, s_a, s_b), keys

    def _leg_points(self, keys: list[tuple[int, int, int]], s_a: float, s_b: float) -> np.ndarray:
        """The centre line through `keys`, from s_a on the first to s_b on the last, with a
        smooth blend across each lane change."""
        parts, s_from = [], s_a
        for i, key in enumerate(keys):
            path = self.segments[key].path
            last = i == len(keys) - 1
            if not last and self.graph.edges[key, keys[i + 1]].get("lane_change"):
                nxt = self.segments[keys[i + 1]].path
                start = min(s_from + LANE_CHANGE_LEAD_M, path.length)
                length = float(np.clip(0.8 * (path.length - start), 1.0, LANE_CHANGE_LENGTH_M))
                parts.append(_cut(path, s_from, start))
                blend, s_from = _blend(path, nxt, start, length)
                parts.append(blend)
                continue
            parts.append(_cut(path, s_from, s_b if last else path.length))
            s_from = 0.0
        return np.concatenate([p if k == 0 else p[1:] for k, p in enumerate(parts) if len(p)])

    # ------------------------------------------------------------ surfaces

    def surfaces(self) -> list[LaneSurface]:
        """Lane surface quads in drawing order (`lane_surfaces`)."""
        return lane_surfaces(self._samples)

    def markings(self) -> list[LaneMarking]:
        """Painted lines outside junctions (`lane_markings`)."""
        return lane_markings(self._samples)

    # ------------------------------------------------------------ junctions

    def _find_stop_lines(self) -> list[StopLine]:
        """One stop line per approach (road and direction) entering a junction."""
        approaches: dict[tuple[int, int, int], list[LaneSegment]] = {}
        for seg in self.segments.values():
            if seg.is_junction:
                continue
            nexts = [self.segments[k] for k in self.successors(seg.key)]
            junction_ids = {n.junction_id for n in nexts if n.is_junction}
            for j in junction_ids:
                approaches.setdefault((j, seg.key[0], int(np.sign(seg.key[2]))), []).append(seg)
        lines = []
        for (j, road, _), segs in sorted(approaches.items()):
            ends = []
            for seg in segs:
                x, y, yaw = (float(v) for v in seg.path.interpolate(seg.path.length))
                half = float(seg.width[-1]) / 2
                nx_, ny_ = -math.sin(yaw), math.cos(yaw)
                ends.append(((x + nx_ * half, y + ny_ * half), (x - nx_ * half, y - ny_ * half), yaw))
            heading = ends[0][2]
            # Order lanes from the left edge to the right edge of the approach.
            lat = [(-math.sin(heading)) * e[0][0] + math.cos(heading) * e[0][1] for e in ends]
            order = np.argsort(lat)[::-1]
            p0 = ends[order[0]][0]
            p1 = ends[order[-1]][1]
            lines.append(
                StopLine(
                    junction_id=j,
                    road_id=road,
                    lane_keys=tuple(sorted(s.key for s in segs)),
                    p0=p0,
                    p1=p1,
                    heading=heading,
                )
            )
        return lines

    def _bounds(self) -> tuple[float, float, float, float]:
        pts = np.concatenate([s.path.points for s in self.segments.values()])
        xmin, ymin = pts.min(axis=0) - 40.0
        xmax, ymax = pts.max(axis=0) + 40.0
        return float(xmin), float(ymin), float(xmax), float(ymax)


def _blend(src: Polyline, dst: Polyline, start: float, length: float) -> tuple[np.ndarray, float]:
    """Points moving from `src` (from arc length `start`, over `length`) onto the parallel
    `dst` with a smoothstep, and the arc length on `dst` where the blend ends."""
    u = np.linspace(0.0, 1.0, max(int(length / SAMPLE_STEP_M), 2) + 1)
    xs, ys, _ = src.interpolate(start + u * length)
    weight = u * u * (3 - 2 * u)
    out, hint = [], None
    for x, y, w in zip(xs, ys, weight):
        s_dst, _ = dst.project(float(x), float(y), s_hint=hint)
        hint = s_dst
        dx, dy, _ = dst.interpolate(s_dst)
        out.append((x + w * (float(dx) - x), y + w * (float(dy) - y)))
    return np.array(out), hint


def _cut(path: Polyline, s0: float, s1: float) -> np.ndarray:
    """Points of `path` between arc lengths s0 and s1, with interpolated end points."""
    inner = path.points[(path.s > s0) & (path.s < s1)]
    x0, y0, _ = path.interpolate(s0)
    x1, y1, _ = path.interpolate(s1)
    return np.concatenate([[[x0, y0]], inner, [[x1, y1]]])

"""The driving lanes of a road map as arrays, for the lane-following prediction: which lane a
vehicle is on (`LaneIndex.match`), and the centre line it drives along from there
(`LaneIndex.course`).

Built once per road map: every lane centre line is cut into its pieces (about 1 m each, as the
road map samples them), and the pieces are binned on a square grid, so a match only measures
the pieces near the vehicle. The centre line through each lane and on (its preferred successor,
and so on) is laid out then too, ahead_m past the lane's end; a longer one is laid out when
asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stagepilot.core.roadmap import RoadMap

CELL_M = 10.0  # grid cell side; larger than a piece plus twice the match reach
EXTEND_M = 200.0  # straight on past a lane with no successor
_NONE = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class LaneMatches:
    """Where N vehicles are on lanes: each one's lane (index into LaneIndex.keys, -1: none),
    the arc length of its projection on it [m], its offset from the centre [m, + left] and
    its course minus the lane's direction [rad]; (N,) each."""

    lane: np.ndarray
    s: np.ndarray
    offset: np.ndarray
    heading_error: np.ndarray


@dataclass(frozen=True)
class Course:
    """A centre line through successive lanes: vertices (K,) with arc length s [m] from the start
    of the first lane, position [m] and unwrapped direction [rad]."""

    s: np.ndarray
    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray


class LaneIndex:
    """Lane centre pieces of one road map: start (M, 2), unit direction (M, 2), length (M,),
    direction (M,) [rad], arc length of the start on its lane (M,) and lane (M,)."""

    def __init__(self, road_map: RoadMap, reach_m: float, ahead_m: float):
        self.road_map = road_map
        self.keys = sorted(road_map.segments)
        paths = [road_map.segments[k].path for k in self.keys]
        self.start = np.concatenate([p.points[:-1] for p in paths])
        self.direction = np.concatenate([p.seg_dir for p in paths])
        self.length = np.concatenate([p.seg_len for p in paths])
        self.yaw = np.arctan2(self.direction[:, 1], self.direction[:, 0])
        self.s0 = np.concatenate([p.s[:-1] for p in paths])
        self.lane = np.concatenate([np.full(len(p.seg_len), i) for i, p in enumerate(paths)])
        self._cells = _bin(self.start, self.start + self.direction * self.length[:, None], reach_m)
        self._index = {k: i for i, k in enumerate(self.keys)}
        self._next = [self._preferred_successor(k) for k in self.keys]
        self._courses = [self._build(i, paths[i].length + ahead_m) for i in range(len(paths))]

    def _preferred_successor(self, key: tuple[int, int, int]) -> int:
        """Index of the lane that continues `key` turning least (lane changes are not
        continuations), -1 if none."""
        graph, segments = self.road_map.graph, self.road_map.segments
        nexts = [n for n in self.road_map.successors(key) if not graph.edges[key, n].get("lane_change")]
        if not nexts:
            return -1
        yaws = [segments[n].path.yaw for n in nexts]
        turns = [abs(math.remainder(yaw[-1] - yaw[0], math.tau)) for yaw in yaws]
        return self._index[nexts[int(np.argmin(turns))]]  # a tie: the first in the map's order

    def match(self, x: np.ndarray, y: np.ndarray, course: np.ndarray, max_offset_m: float,
              max_heading_error_rad: float) -> LaneMatches:
        """The lane pieces that best fit vehicles at (x, y) (N,) [m] heading `course` (N,)
        [rad]: each the least (offset / max_offset_m)^2 + (heading error /
        max_heading_error_rad)^2 among those within both limits; lane -1 where none is (off the
        map, across the lanes, against the traffic)."""
        found = [self._cells.get(_cell(px, py), _NONE) for px, py in zip(x, y)]
        owner = np.repeat(np.arange(len(found)), [len(f) for f in found])  # (K,)
        idx = np.concatenate(found) if found else _NONE
        rel_x, rel_y = x[owner] - self.start[idx, 0], y[owner] - self.start[idx, 1]  # (K,)
        ux, uy = self.direction[idx, 0], self.direction[idx, 1]
        along = np.clip(rel_x * ux + rel_y * uy, 0.0, self.length[idx])
        cross = ux * rel_y - uy * rel_x  # + left of the piece
        dist = np.hypot(rel_x - ux * along, rel_y - uy * along)
        heading = np.remainder(course[owner] - self.yaw[idx] + np.pi, 2.0 * np.pi) - np.pi
        score = (dist / max_offset_m) ** 2 + (heading / max_heading_error_rad) ** 2
        fits = (dist <= max_offset_m) & (np.abs(heading) <= max_heading_error_rad)
        order = np.flatnonzero(fits)[np.lexsort((score[fits], owner[fits]))]  # by owner, score
        best = order[np.concatenate([[True], np.diff(owner[order]) != 0])] if len(order) else order
        n, who = len(found), owner[best]
        lane, s, offset, error = np.full(n, -1), np.zeros(n), np.zeros(n), np.zeros(n)
        lane[who] = self.lane[idx[best]]
        s[who] = self.s0[idx[best]] + along[best]
        offset[who] = np.where(cross[best] >= 0, dist[best], -dist[best])
        error[who] = heading[best]
        return LaneMatches(lane, s, offset, error)

    def course(self, lane: int, length_m: float) -> Course:
        """The centre line from the start of `lane` on through preferred successors, at least
        length_m [m] long (straight on past a lane with no successor)."""
        known = self._courses[lane]
        if known.s[-1] < length_m:
            known = self._courses[lane] = self._build(lane, 2.0 * length_m)
        return known

    def _build(self, lane: int, length_m: float) -> Course:
        points, total, i = [], 0.0, lane
        while i >= 0 and total < length_m:
            path = self.road_map.segments[self.keys[i]].path
            points.append(path.points if not points else path.points[1:])
            total += path.length
            i = self._next[i]
        xy = np.concatenate(points)  # (K, 2)
        if total < length_m:  # a dead end: straight on
            d = xy[-1] - xy[-2]
            xy = np.vstack([xy, xy[-1] + d / np.hypot(*d) * (length_m - total + EXTEND_M)])
        step = np.diff(xy, axis=0)
        seg_len = np.hypot(step[:, 0], step[:, 1])
        keep = np.concatenate([[True], seg_len > 1e-6])  # successors start where lanes end
        xy, step, seg_len = xy[keep], step[keep[1:]], seg_len[keep[1:]]
        seg_yaw = np.unwrap(np.arctan2(step[:, 1], step[:, 0]))
        # vertex direction: the mean of the pieces on either side (the ends take their piece's)
        yaw = np.concatenate([seg_yaw[:1], 0.5 * (seg_yaw[1:] + seg_yaw[:-1]), seg_yaw[-1:]])
        return Course(np.concatenate([[0.0], np.cumsum(seg_len)]), xy[:, 0], xy[:, 1], yaw)


def _cell(x: float, y: float) -> tuple[int, int]:
    return math.floor(x / CELL_M), math.floor(y / CELL_M)


def _bin(a: np.ndarray, b: np.ndarray, reach_m: float) -> dict[tuple[int, int], np.ndarray]:
    """Piece indices by every grid cell that the piece a -> b (M, 2), grown by reach_m, touches."""
    lo = np.floor((np.minimum(a, b) - reach_m) / CELL_M).astype(np.int64)  # (M, 2)
    hi = np.floor((np.maximum(a, b) + reach_m) / CELL_M).astype(np.int64)
    span = int(np.max(hi - lo)) + 1
    pieces, cx, cy = [], [], []
    for i in range(span):
        for j in range(span):
            ok = (lo[:, 0] + i <= hi[:, 0]) & (lo[:, 1] + j <= hi[:, 1])
            pieces.append(np.flatnonzero(ok))
            cx.append(lo[ok, 0] + i)
            cy.append(lo[ok, 1] + j)
    pieces, cx, cy = np.concatenate(pieces), np.concatenate(cx), np.concatenate(cy)
    order = np.lexsort((pieces, cy, cx))
    pieces, cx, cy = pieces[order], cx[order], cy[order]
    starts = np.flatnonzero(np.concatenate([[True], (np.diff(cx) != 0) | (np.diff(cy) != 0)]))
    groups = np.split(pieces, starts[1:])
    return {(int(cx[s]), int(cy[s])): g for s, g in zip(starts, groups)}

"""Late fusion of the rig's detections in the ego frame: one object, one measurement.

Each camera's boxes are placed on the ground through that camera's model (perception/learned.py);
where two views overlap, one object gives a box in each. Measurements of one kind from
different cameras whose ground centres lie within the gate are one object. The one kept is
the box that the image edge does not cut (a cut box's bottom centre is not the object's), then
the better-scoring one. Boxes of one camera never merge here: that camera's NMS already chose
among them. This is fusion after detection (as in multi-camera BEV stacks' late-fusion
baselines), not inside the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stagepilot.perception.tracking import Measurement

EDGE_PX = 2.0  # a box within this of the image edge is cut by it
# [m] centres of one object seen by two cameras: base + per metre of range (placement error grows
# with range, perception/tracking.py's noise model)
GATE_M = {"vehicle": (2.5, 0.05), "pedestrian": (1.0, 0.03), "static": (1.0, 0.03)}


@dataclass(frozen=True)
class Placed:
    """A measurement with what fusion needs to know about its box."""

    measurement: Measurement
    cut: bool  # the box touches its image's edge


def is_cut(box, width: int, height: int) -> bool:
    return bool(box[0] < EDGE_PX or box[1] < EDGE_PX or box[2] > width - EDGE_PX or box[3] > height - EDGE_PX)


def fuse(placed: list[Placed]) -> list[Measurement]:
    """One measurement per object across the rig's cameras (input order kept for the survivors)."""
    if len(placed) < 2:
        return [p.measurement for p in placed]
    order = sorted(range(len(placed)), key=lambda i: (placed[i].cut, -placed[i].measurement.score))
    kept: list[int] = []
    for i in order:
        m = placed[i].measurement
        base, per_m = GATE_M.get(m.kind, GATE_M["static"])
        gate = base + per_m * math.hypot(*m.position)
        duplicate = any(
            placed[k].measurement.kind == m.kind and placed[k].measurement.camera != m.camera
            and math.dist(placed[k].measurement.position, m.position) <= gate
            for k in kept)
        if not duplicate:
            kept.append(i)
    return [placed[i].measurement for i in sorted(kept)]


def in_any_view(views, points_xy: np.ndarray) -> np.ndarray:
    """(N, 2) ego-frame ground points -> (N,) bool: inside at least one of ``views`` (callables
    of the same signature, one per camera)."""
    seen = np.zeros(len(points_xy), dtype=bool)
    for view in views:
        seen |= np.asarray(view(points_xy), dtype=bool)
    return seen

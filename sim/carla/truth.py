"""Occlusion-aware 2D ground truth for a CARLA camera from actor boxes, depth and semantics.

CARLA gives us actor bounding boxes, a depth camera and a semantic camera, no instance masks.
A box's silhouette comes from casting a ray through every pixel centre near its projection and
intersecting it with the oriented box (slab method). A silhouette pixel is unoccluded when the
depth image shows nothing nearer than the box surface there, and it is the object's own when
the semantic image also shows the box's tag: a cuboid is larger than the car or walker in it,
and the tag keeps the 2D box tight to the real shape.

Frames: world x east, y north, z up; camera OpenCV (x right, y down, z forward).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from stagepilot.sim.render.boxes import CORNER_SIGNS

NEAR_M = 0.05  # [m] rays and corners nearer than this camera-frame z are ignored
# The 12 box edges as corner-index pairs (corners differ in one sign bit).
_EDGES = np.array([(k, k | bit) for k in range(8) for bit in (1, 2, 4) if not k & bit], np.intp)


@dataclass(frozen=True)
class Box3D:
    """An actor's 3D bounding box, world frame."""

    id: int
    tag: int  # CARLA semantic tag of the object (sim/render/palette.py)
    center: tuple[float, float, float]  # [m] box centre
    yaw: float  # [rad] about world z, CCW from +x
    extent: tuple[float, float, float]  # [m] FULL length, width, height
    other_tags: tuple[int, ...] = ()  # further tags its pixels may show (an actor's semantic_tags)


@dataclass(frozen=True)
class _CameraBox:
    """A box in the camera frame: centre (3,), axes (3, 3) with the box x, y, z axes as
    columns, half sizes (3,) [m]."""

    center: np.ndarray
    axes: np.ndarray
    half: np.ndarray

    @classmethod
    def of(cls, box: Box3D, T_world_cam: np.ndarray) -> "_CameraBox":  # noqa: N803
        rotation, position = T_world_cam[:3, :3], T_world_cam[:3, 3]
        c, s = math.cos(box.yaw), math.sin(box.yaw)
        axes_world = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        center = rotation.T @ (np.asarray(box.center, float) - position)
        return cls(center, rotation.T @ axes_world, np.asarray(box.extent, float) / 2.0)

    def corners(self) -> np.ndarray:
        """(8, 3) camera-frame corners [m], indexed as CORNER_SIGNS."""
        return self.center + (CORNER_SIGNS * self.half) @ self.axes.T


def project_boxes(
    boxes: Iterable[Box3D],
    K: np.ndarray,  # noqa: N803
    T_world_cam: np.ndarray,  # noqa: N803
    depth: np.ndarray,
    semantic: np.ndarray | None = None,
    *,
    depth_tolerance_m: float = 0.5,
    min_pixels: int = 1,
) -> dict[int, tuple[int, int, int, int, float]]:
    """Occlusion-aware 2D boxes: id -> (x0, y0, x1, y1, visible_fraction).

    K (3, 3) intrinsics, pixel (r, c) centred at (c, r); T_world_cam (4, 4) maps camera-frame
    points to the world; depth (H, W) camera-frame z [m]; semantic (H, W) CARLA tags or None.
    Bounds are pixel indices, x1 and y1 exclusive, around the object's visible pixels (those
    with nothing nearer than the box surface minus depth_tolerance_m and, given `semantic`,
    showing the box's tag), as sim/render/renderer.py `visible_boxes`. visible_fraction is the
    share of the box's silhouette inside the image with nothing in front of it: the object's
    visible share if it fills its box evenly (empty parts of a cuboid seen against the
    background count as seen). Boxes with fewer than max(min_pixels, 1) visible pixels are
    left out. depth_tolerance_m covers parts that stick out of an actor's box (mirrors, wheels)
    and depth quantisation.
    """
    K = np.asarray(K, float)  # noqa: N806
    K_inv = np.linalg.inv(K)  # noqa: N806
    T_world_cam = np.asarray(T_world_cam, float)  # noqa: N806
    result = {}
    for box in boxes:
        cam_box = _CameraBox.of(box, T_world_cam)
        window = _pixel_window(cam_box, K, depth.shape)
        if window is None:
            continue
        hit, entry_z = _ray_hits(cam_box, K_inv, window)
        c0, r0, c1, r1 = window
        unoccluded = hit & (depth[r0:r1, c0:c1] >= entry_z - depth_tolerance_m)
        own = unoccluded if semantic is None else unoccluded & np.isin(semantic[r0:r1, c0:c1], (box.tag, *box.other_tags))
        if np.count_nonzero(own) < max(min_pixels, 1):
            continue
        rows, cols = np.nonzero(own.any(axis=1))[0], np.nonzero(own.any(axis=0))[0]
        fraction = float(np.count_nonzero(unoccluded) / np.count_nonzero(hit))
        x0, y0, x1, y1 = c0 + int(cols[0]), r0 + int(rows[0]), c0 + int(cols[-1]) + 1, r0 + int(rows[-1]) + 1
        result[box.id] = (x0, y0, x1, y1, fraction)
    return result


def _pixel_window(
    box: _CameraBox, K: np.ndarray, shape: tuple[int, ...]  # noqa: N803
) -> tuple[int, int, int, int] | None:
    """(c0, r0, c1, r1), c1 and r1 exclusive: the pixels whose centres can see the part of the
    box in front of the near plane, clipped to the image; None when there are none."""
    corners = _clip_to_near(box.corners())
    if len(corners) == 0:
        return None
    uvw = corners @ K.T
    uv = uvw[:, :2] / uvw[:, 2:]
    height, width = shape[:2]
    c0, r0 = np.maximum(np.ceil(uv.min(axis=0)), 0).astype(int)
    c1, r1 = np.minimum(np.floor(uv.max(axis=0)) + 1, (width, height)).astype(int)
    if c1 <= c0 or r1 <= r0:
        return None
    return int(c0), int(r0), int(c1), int(r1)


def _clip_to_near(corners: np.ndarray) -> np.ndarray:
    """Vertices (k, 3) of the box cut by the plane z = NEAR_M: the corners in front of it and
    the points where edges cross it."""
    z = corners[:, 2]
    a, b = corners[_EDGES[:, 0]], corners[_EDGES[:, 1]]
    za, zb = z[_EDGES[:, 0]], z[_EDGES[:, 1]]
    crossing = (za > NEAR_M) != (zb > NEAR_M)
    t = (NEAR_M - za[crossing]) / (zb[crossing] - za[crossing])
    cut = a[crossing] + t[:, None] * (b[crossing] - a[crossing])
    return np.concatenate([corners[z > NEAR_M], cut])


def _ray_hits(
    box: _CameraBox, K_inv: np.ndarray, window: tuple[int, int, int, int]  # noqa: N803
) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of the rays through the window's pixel centres: hit mask (h, w) and the
    camera-frame z [m] where each ray enters the box, negative from inside it (K's last row is
    (0, 0, 1), so a ray's parameter is its camera z)."""
    c0, r0, c1, r1 = window
    cols = np.arange(c0, c1, dtype=float)[None, :]
    rows = np.arange(r0, r1, dtype=float)[:, None]
    per_col, per_row, offset = (K_inv[:, i] @ box.axes for i in range(3))  # box-frame ray terms
    origin = -box.center @ box.axes  # camera centre in the box frame
    t_enter = np.full((r1 - r0, c1 - c0), -np.inf)
    t_exit = np.full((r1 - r0, c1 - c0), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in range(3):
            inverse = 1.0 / (per_col[axis] * cols + per_row[axis] * rows + offset[axis])  # (h, w)
            t_low = (-box.half[axis] - origin[axis]) * inverse
            t_high = (box.half[axis] - origin[axis]) * inverse
            np.maximum(t_enter, np.minimum(t_low, t_high), out=t_enter)
            np.minimum(t_exit, np.maximum(t_low, t_high), out=t_exit)
    hit = (t_enter <= t_exit) & (t_exit > NEAR_M)
    return hit, t_enter

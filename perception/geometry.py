"""Camera geometry shared by the learned perception stage and its evaluation.

Frames (DESIGN.md): the ego frame has x forward, y left, z up, with its origin on the ground
under the rear axle, so the road is the plane z = 0. ``T_ego_cam`` maps camera-frame points
(OpenCV: x right, y down, z forward) into the ego frame; ``K`` is the pinhole intrinsics of the
image the pixels come from.
"""

from __future__ import annotations

import numpy as np


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics of the same camera after resizing its image by (sx, sy)."""
    S = np.diag([sx, sy, 1.0])
    return S @ np.asarray(K, dtype=float)


def pixel_ray(u: float, v: float, K: np.ndarray, T_ego_cam: np.ndarray) -> np.ndarray:
    """Pixel (u, v) -> the direction of its viewing ray in the ego frame (3,), not normalised."""
    ray_cam = np.linalg.solve(K, np.array([u, v, 1.0]))   # camera frame (x right, y down, z forward)
    return T_ego_cam[:3, :3] @ ray_cam


def point_at_height(u: float, v: float, K: np.ndarray, T_ego_cam: np.ndarray, z: float) -> np.ndarray | None:
    """Pixel (u, v) -> where its ray crosses the horizontal plane at height z, (x, y) ego frame [m];
    None when the ray never reaches that plane in front of the camera."""
    ray = pixel_ray(u, v, K, T_ego_cam)
    origin = T_ego_cam[:3, 3]
    dz = z - origin[2]
    if abs(ray[2]) < 1e-6 or dz / ray[2] <= 0.0:
        return None
    return (origin + (dz / ray[2]) * ray)[:2]


def ground_point(u: float, v: float, K: np.ndarray, T_ego_cam: np.ndarray) -> np.ndarray | None:
    """Pixel (u, v) -> its ray's crossing of the ground plane z = 0, (x, y) ego frame [m];
    None when the ray does not point down."""
    return point_at_height(u, v, K, T_ego_cam, 0.0)


def centre_from_box(box: np.ndarray, half_depth_m: float, K: np.ndarray, T_ego_cam: np.ndarray) -> np.ndarray | None:
    """Box (4,) xyxy px -> estimated object centre (x, y) in the ego frame [m].

    The bottom-centre of the box is the object's nearest contact with the road: it is placed on
    the ground through the camera model, then pushed back half the object's depth along the
    horizontal viewing ray (the centre lies behind the visible face)."""
    contact = ground_point(0.5 * (float(box[0]) + float(box[2])), float(box[3]), K, T_ego_cam)
    if contact is None:
        return None
    direction = contact - T_ego_cam[:2, 3]
    norm = float(np.linalg.norm(direction))
    return contact if norm < 1e-6 else contact + half_depth_m * direction / norm

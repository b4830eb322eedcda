"""Camera geometry shared by the learned perception stage and its evaluation.

Frames (DESIGN.md): the ego frame has x forward, y left, z up, with its origin on the ground
under the rear axle, so the road is the plane z = 0. ``T_ego_cam`` maps camera-frame points
(OpenCV: x right, y down, z forward) into the ego frame; ``K`` is the pinhole intrinsics of the
image the pixels come from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

NEAR_M = 0.5  # [m] points closer to the camera plane than this do not project


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


def world_to_ego(xy: np.ndarray, ego) -> np.ndarray:
    """(N, 2) world points -> (N, 2) ego frame (rear-axle origin, x forward, y left) [m];
    ``ego`` is an EgoState (x, y, yaw)."""
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    d = np.asarray(xy, float).reshape(-1, 2) - (ego.x, ego.y)
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], 1)


def project_to_image(points_ego: np.ndarray, K: np.ndarray, T_ego_cam: np.ndarray,  # noqa: N803
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) ego-frame points [m] -> (N, 2) pixels and (N,) whether each lies in front of the
    camera (depth > NEAR_M); pixels of points behind it are NaN."""
    p = np.asarray(points_ego, float).reshape(-1, 3)
    cam = (p - T_ego_cam[:3, 3]) @ T_ego_cam[:3, :3]  # R^T (p - t), row-wise: (N, 3) camera frame
    in_front = cam[:, 2] > NEAR_M
    uv = np.full((len(p), 2), np.nan)
    uvw = cam[in_front] @ np.asarray(K, float).T
    uv[in_front] = uvw[:, :2] / uvw[:, 2:3]
    return uv, in_front


def stop_line_ahead(route, progress_m: float, lines: Iterable[tuple[Any, tuple[float, float], tuple[float, float]]],
                    max_range_m: float) -> tuple[Any, float] | None:
    """The first stop line the route crosses ahead: (its key, metres ahead along the route), or None.

    ``route`` is the route's Polyline, ``progress_m`` the ego's arc length on it; each line is
    (key, p0, p1) in the world frame with p0 its left end, so it governs traffic crossing it in
    the direction of p0 -> p1 turned left by 90 degrees, which must run with the route."""
    best = None
    for key, p0, p1 in lines:
        cx, cy = (p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2
        s, offset = route.project(cx, cy, s_hint=progress_m + 40.0, window_m=45.0)
        ahead = s - progress_m
        half_length = math.hypot(p1[0] - p0[0], p1[1] - p0[1]) / 2
        if abs(offset) > half_length + 1.0 or ahead <= -2.0 or ahead > max_range_m:
            continue
        travel = math.atan2(p1[1] - p0[1], p1[0] - p0[0]) + math.pi / 2
        _, _, route_yaw = route.interpolate(s)
        if math.cos(travel - float(route_yaw)) < 0.5:
            continue
        if best is None or ahead < best[1]:
            best = (key, ahead)
    return best

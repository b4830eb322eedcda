"""Camera geometry shared by the learned perception stage and its evaluation.

Frames (DESIGN.md): the ego frame has x forward, y left, z up, with its origin on the ground
under the rear axle, so the road is the plane z = 0. ``T_ego_cam`` maps camera-frame points
(OpenCV: x right, y down, z forward) into the ego frame; ``K`` is the pinhole intrinsics of the
image the pixels come from; core/camera.py builds both from a camera's config values (size, field
of view, mount in the ego frame), for the renderer and perception alike.

Pixels (OpenCV's convention, which ``K`` follows): the centre of pixel (row r, column c) lies at
(c, r), so column c spans [c - 0.5, c + 0.5]. 2D boxes (ground truth, COCO files, detections)
count edges instead: a box x0 <= x < x1 covers columns x0 .. x1 - 1, so column c spans [c, c + 1]
and an edge at e lies at e - 0.5 in K's coordinates (``box_to_pixels``). A camera whose
silhouettes reach past the true outline (``CameraImage.outline_margin_px``; the embedded renderer
fills the pixels an outline crosses) has boxes that much too large on every side, which
``box_to_pixels`` takes off again. Ignoring both half pixels placed a car 30 m ahead about 1 m short.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

NEAR_M = 0.5  # [m] points closer to the camera plane than this do not project


EDGE_TO_PIXEL = -0.5  # a box edge at e lies at e + EDGE_TO_PIXEL in K's pixel coordinates
_INWARD = np.array([1.0, 1.0, -1.0, -1.0])  # x0, y0 move right / down, x1, y1 left / up


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics of the same camera after resizing its image by (sx, sy), with pixel centres
    where a half-pixel-aligned resize puts them (cv2.resize, F.interpolate with
    align_corners=False): column c' of the resized image is centred on c = (c' + 0.5) / sx - 0.5."""
    S = np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]])
    return S @ np.asarray(K, dtype=float)


def box_to_pixels(box, margin_px: float = 0.0) -> np.ndarray:
    """Box (4,) xyxy in edge coordinates -> the object's outline (x0, y0, x1, y1) in K's pixel
    coordinates, the camera's outline margin taken off every side (module docstring)."""
    return np.asarray(box, dtype=float)[:4] + EDGE_TO_PIXEL + _INWARD * margin_px


def contact_pixel(box, margin_px: float = 0.0) -> tuple[float, float]:
    """Box (4,) xyxy edges -> (u, v) in K's pixel coordinates of its bottom-centre, where an object
    standing on the road touches it."""
    x0, _, x1, y1 = box_to_pixels(box, margin_px)
    return 0.5 * (x0 + x1), y1


def centre_pixel(box) -> tuple[float, float]:
    """Box (4,) xyxy edges -> (u, v) in K's pixel coordinates of its centre."""
    x0, y0, x1, y1 = box_to_pixels(box)
    return 0.5 * (x0 + x1), 0.5 * (y0 + y1)


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


def centre_from_box(box: np.ndarray, depth_m: float, K: np.ndarray, T_ego_cam: np.ndarray,
                    margin_px: float = 0.0) -> np.ndarray | None:
    """Box (4,) xyxy px, edge coordinates -> estimated object centre (x, y) in the ego frame [m].

    The bottom-centre of the box is the object's nearest contact with the road: it is placed on
    the ground through the camera model, then pushed back ``depth_m`` along the horizontal
    viewing ray (the centre lies behind the visible contact: for a car seen from behind, the
    rear tyres' contact, not the bumper, which rides above the road). ``margin_px``: the
    camera's outline margin."""
    contact = ground_point(*contact_pixel(box, margin_px), K, T_ego_cam)
    if contact is None:
        return None
    direction = contact - T_ego_cam[:2, 3]
    norm = float(np.linalg.norm(direction))
    return contact if norm < 1e-6 else contact + depth_m * direction / norm


def elevation_row(K: np.ndarray, T_ego_cam: np.ndarray, elevation_deg: float) -> float | None:
    """The image row [px] where a ray ``elevation_deg`` above the horizontal, in the camera's
    heading, lands at the image's centre column (0 deg: the horizon of a flat road); None when
    that ray points behind the camera."""
    R = np.asarray(T_ego_cam, float)[:3, :3]
    forward = R[:, 2]                                              # optical axis in the ego frame
    heading = math.atan2(forward[1], forward[0])
    e = math.radians(elevation_deg)
    ray = np.array([math.cos(e) * math.cos(heading), math.cos(e) * math.sin(heading), math.sin(e)])
    cam = R.T @ ray                                                # the ray in the camera frame
    if cam[2] <= 1e-6:
        return None
    K = np.asarray(K, float)
    return float(K[1, 1] * cam[1] / cam[2] + K[1, 2])


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

"""Pinhole camera model shared by the renderer, perception and evaluation.

Frames (DESIGN.md): the ego frame has x forward, y left, z up, origin on the ground under the
rear axle; the camera frame is OpenCV's (x right, y down, z forward). A camera is mounted at
(x, y, z) [m] in the ego frame with its body (x forward, y left, z up) turned by
R = Rz(yaw) Ry(pitch) Rx(roll): positive yaw turns left, positive pitch tilts the nose down,
positive roll lowers the right side (CARLA's pitch has the opposite sign; convert at the CARLA
boundary).
"""

from __future__ import annotations

import math

import numpy as np

# Camera body (x forward, y left, z up) -> OpenCV optical frame: columns are the optical
# axes expressed in the body frame.
BODY_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def focal_px(width: int, fov_deg: float) -> float:
    """f = w / (2 tan(fov / 2)) [px] for a horizontal field of view, as CARLA."""
    return width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


def pinhole_intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """(3, 3) K of a ``width`` x ``height`` px camera; principal point (w/2, h/2), pixel
    centres at integer coordinates (OpenCV)."""
    f = focal_px(width, fov_deg)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def camera_pose(x: float, y: float, z: float, roll_deg: float = 0.0, pitch_deg: float = 0.0,
                yaw_deg: float = 0.0) -> np.ndarray:
    """(4, 4) T_ego_cam: maps camera-frame (OpenCV) points into the ego frame."""
    roll, pitch, yaw = (math.radians(a) for a in (roll_deg, pitch_deg, yaw_deg))
    cr, sr, cp, sp = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    transform = np.eye(4)
    transform[:3, :3] = rz @ ry @ rx @ BODY_FROM_OPTICAL
    transform[:3, 3] = (x, y, z)
    return transform


# ---------------------------------------------------------------- the camera stream
# A camera delivers its frames compressed, as a real one does over its link: `jpeg` (lossy,
# small) or `png` (lossless, about 10x larger and 12 ms per 640x360 frame to encode). The
# stack sees the decoded frame, so a recording of the compressed bytes replays bit-exactly.

STREAM_FORMATS = ("jpeg", "png")


def encode_frame(rgb: np.ndarray, stream: str, jpeg_quality: int = 90) -> bytes:
    """The (H, W, 3) uint8 RGB frame as the camera sends it."""
    import cv2

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    if stream == "jpeg":
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif stream == "png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        raise ValueError(f"camera stream {stream!r}: expected one of {STREAM_FORMATS}")
    if not ok:
        raise ValueError(f"camera stream {stream}: could not encode a {rgb.shape} frame")
    return data.tobytes()


def decode_frame(data: bytes) -> np.ndarray:
    """The (H, W, 3) uint8 RGB frame the stack sees, from the bytes the camera sent. The one
    decoder of camera frames: the simulator and the replay of a recording both call it."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3:
        raise ValueError("camera frame: the bytes do not decode as an image")
    return np.ascontiguousarray(bgr[:, :, ::-1])

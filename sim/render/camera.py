"""Pinhole cameras mounted on the planar ego: intrinsics, extrinsics and projection.

Frames (DESIGN.md): world x east, y north, z up; ego origin at the rear-axle centre on the
ground, x forward, y left, z up; camera frame OpenCV (x right, y down, z forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from stagepilot.core.camera import camera_pose, focal_px, pinhole_intrinsics

def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True)
class CameraSpec:
    """A camera rigidly mounted on the ego.

    (x, y, z) [m] is the optical centre in the ego frame. Angles are right-handed rotations
    of the camera body (x forward, y left, z up) about the ego axes, applied yaw, then pitch,
    then roll (R = Rz(yaw) Ry(pitch) Rx(roll)): positive yaw turns left, positive pitch
    tilts the nose DOWN, positive roll lowers the right side. CARLA's pitch has the opposite
    sign (its positive pitch looks up); convert at the CARLA boundary. `fov_deg` is the
    horizontal field of view.
    """

    name: str
    width: int  # [px]
    height: int  # [px]
    fov_deg: float
    x: float  # [m]
    y: float  # [m]
    z: float  # [m]
    roll_deg: float = 0.0
    pitch_deg: float = 0.0
    yaw_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera {self.name!r}: size must be positive, got {self.width}x{self.height}")
        if not 0.0 < self.fov_deg < 180.0:
            raise ValueError(f"camera {self.name!r}: fov_deg must be in (0, 180), got {self.fov_deg}")

    @property
    def focal_px(self) -> float:
        """f = w / (2 tan(fov / 2)) [px], as CARLA."""
        return focal_px(self.width, self.fov_deg)

    @cached_property
    def K(self) -> np.ndarray:  # noqa: N802 (the conventional name)
        """(3, 3) intrinsics; principal point (w/2, h/2), pixel centres at integer coordinates."""
        return _frozen(pinhole_intrinsics(self.width, self.height, self.fov_deg))

    @cached_property
    def T_ego_cam(self) -> np.ndarray:  # noqa: N802
        """(4, 4) maps camera-frame (OpenCV) points to the ego frame."""
        return _frozen(camera_pose(self.x, self.y, self.z, self.roll_deg, self.pitch_deg, self.yaw_deg))


def T_world_ego(ego_pose: tuple[float, float, float]) -> np.ndarray:  # noqa: N802
    """(4, 4) maps ego-frame points to the world frame for a planar pose (x, y, yaw)."""
    x, y, yaw = (float(v) for v in ego_pose)
    c, s = math.cos(yaw), math.sin(yaw)
    transform = np.eye(4)
    transform[:2, :2] = ((c, -s), (s, c))
    transform[:2, 3] = (x, y)
    return transform


def T_world_cam(spec: CameraSpec, ego_pose: tuple[float, float, float]) -> np.ndarray:  # noqa: N802
    """(4, 4) maps camera-frame points to the world frame."""
    return T_world_ego(ego_pose) @ spec.T_ego_cam


def project_points(
    spec: CameraSpec, ego_pose: tuple[float, float, float], points_world: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, 3) world points [m] -> (uv (N, 2) [px], z (N,) camera depth [m]).

    uv is NaN where z <= 0 (the point is behind the camera).
    """
    points = np.asarray(points_world, np.float64).reshape(-1, 3)
    transform = T_world_cam(spec, ego_pose)
    cam = (points - transform[:3, 3]) @ transform[:3, :3]  # (N, 3) camera frame
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = cam @ spec.K.T
        uv = uvw[:, :2] / uvw[:, 2:3]
    uv[z <= 0.0] = np.nan
    return uv, z

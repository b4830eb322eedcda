"""Every conversion between CARLA's frame and ours, in one place.

CARLA (Unreal) is left-handed: x forward/east, y right/south, z up, angles in degrees, yaw
clockwise seen from above, positive pitch lifts the nose. Ours (DESIGN.md) is right-handed:
x east, y north, z up, angles in radians, yaw counter-clockwise, and a body turned by
R = Rz(yaw) Ry(pitch) Rx(roll), so positive pitch lowers the nose. Mirroring y maps one onto
the other: (x, y, z) -> (x, -y, z), and (roll, pitch, yaw) -> (roll, -pitch, -yaw), which
`tests/test_carla_frames.py` checks against `carla.Transform`'s own matrices.

The road map (`roadmap`, `lanes`, `lane_surfaces`) and the CARLA backend (`sim/carla`) call
these; nothing else sees a CARLA value.
"""

from __future__ import annotations

import math

import carla
import numpy as np

from stagepilot.core.camera import pinhole_intrinsics


def to_world_xy(location: carla.Location) -> tuple[float, float]:
    return location.x, -location.y


def to_world_xyz(location: carla.Location) -> tuple[float, float, float]:
    return location.x, -location.y, location.z


def to_carla_location(x: float, y: float, z: float = 0.0) -> carla.Location:
    return carla.Location(x=float(x), y=float(-y), z=float(z))


def world_yaw(rotation: carla.Rotation) -> float:
    """[rad] CCW from +x."""
    return -math.radians(rotation.yaw)


def world_rotation(rotation: carla.Rotation) -> tuple[float, float, float]:
    """(roll, pitch, yaw) [rad] in our convention (positive pitch lowers the nose)."""
    return math.radians(rotation.roll), -math.radians(rotation.pitch), -math.radians(rotation.yaw)


def to_carla_rotation(roll: float = 0.0, pitch: float = 0.0, yaw: float = 0.0) -> carla.Rotation:
    """Our (roll, pitch, yaw) [rad] as a carla.Rotation [deg]."""
    return carla.Rotation(pitch=-math.degrees(pitch), yaw=-math.degrees(yaw), roll=math.degrees(roll))


def world_pose(transform: carla.Transform) -> tuple[float, float, float, float, float, float]:
    """(x, y, z, roll, pitch, yaw) [m, rad] of a carla.Transform."""
    return (*to_world_xyz(transform.location), *world_rotation(transform.rotation))


def to_carla_transform(x: float, y: float, z: float = 0.0, yaw: float = 0.0, pitch: float = 0.0,
                       roll: float = 0.0) -> carla.Transform:
    return carla.Transform(to_carla_location(x, y, z), to_carla_rotation(roll, pitch, yaw))


def world_vector(vector: carla.Vector3D) -> tuple[float, float, float]:
    """A velocity or acceleration [m/s, m/s^2] in the world frame."""
    return vector.x, -vector.y, vector.z


def to_carla_vector(x: float, y: float, z: float = 0.0) -> carla.Vector3D:
    """A world-frame vector (a velocity, a direction) as CARLA's."""
    return carla.Vector3D(float(x), float(-y), float(z))


def world_yaw_rate(angular_velocity: carla.Vector3D) -> float:
    """[rad/s] CCW; CARLA gives deg/s about its (left-handed) z."""
    return -math.radians(angular_velocity.z)


def world_matrix(transform: carla.Transform) -> np.ndarray:
    """(4, 4) of a carla.Transform in our frame: maps our-frame local points to our world."""
    mirror = np.diag([1.0, -1.0, 1.0, 1.0])
    return mirror @ np.asarray(transform.get_matrix(), float) @ mirror


def forward_of(transform: carla.Transform, location: carla.Location, scale: float = 1.0) -> float:
    """[m] how far ahead of `transform`'s origin, along its forward axis, a CARLA location lies
    (`scale` turns its units into metres: 0.01 for the centimetres of wheel positions)."""
    point = np.array([location.x * scale, location.y * scale, location.z * scale, 1.0])
    return float((np.linalg.inv(np.asarray(transform.get_matrix(), float)) @ point)[0])


def camera_mount(x: float, y: float, z: float, roll_deg: float, pitch_deg: float, yaw_deg: float,
                 rear_axle_x: float, ground_z: float = 0.0) -> carla.Transform:
    """A camera mounted at (x, y, z) [m] in the ego frame (origin on the ground under the rear
    axle), angles [deg] as `core/camera.py` has them (positive pitch looks down), as the
    carla.Transform relative to the vehicle actor. The ego frame's origin sits at
    (`rear_axle_x`, 0, `ground_z`) [m] in the actor's frame: the rear axle behind the actor's
    origin (negative x), the ground under its wheels (the bottom of its bounding box)."""
    return carla.Transform(
        carla.Location(x=float(x + rear_axle_x), y=float(-y), z=float(z + ground_z)),
        carla.Rotation(pitch=-float(pitch_deg), yaw=-float(yaw_deg), roll=float(roll_deg)),
    )


def carla_camera_intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """(3, 3) K of a CARLA camera in OpenCV's pixel convention: CARLA's optical axis meets the
    image at its geometric centre, (w/2, h/2) when pixel centres sit at c + 0.5, which is
    (w/2 - 0.5, h/2 - 0.5) with pixel centres at integers."""
    K = pinhole_intrinsics(width, height, fov_deg)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K

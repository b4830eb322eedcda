"""Conversions between CARLA's left-handed frame and ours (core/carla_frame.py), checked
against the real carla.Transform, carla.Location and carla.Rotation, which need no server."""

from __future__ import annotations

import math

import carla
import numpy as np
import pytest

from stagepilot.core.camera import camera_pose
from stagepilot.core.carla_frame import (camera_mount, carla_camera_intrinsics, to_carla_location, to_carla_rotation,
                                         to_carla_transform, to_carla_vector, to_world_xy, world_matrix, world_pose,
                                         world_rotation, world_vector, world_yaw, world_yaw_rate)

POSES = [(12.5, -3.25, 0.4, 0.0, 0.0, 0.0), (-40.0, 17.0, 2.0, 0.05, -0.1, 2.2),
         (3.0, 4.0, 0.0, -0.2, 0.3, -2.9), (0.0, 0.0, 1.6, 0.0, 0.0, math.pi / 2)]


@pytest.mark.parametrize("pose", POSES)
def test_a_pose_round_trips_through_carla_transform(pose) -> None:
    x, y, z, roll, pitch, yaw = pose
    transform = to_carla_transform(x, y, z, yaw=yaw, pitch=pitch, roll=roll)
    assert isinstance(transform, carla.Transform)
    back = world_pose(transform)
    assert np.allclose(back[:3], (x, y, z), atol=1e-5)
    assert np.allclose([math.remainder(a - b, math.tau) for a, b in zip(back[3:], (roll, pitch, yaw))], 0, atol=1e-6)


def test_a_known_carla_transform_gives_the_expected_pose_in_our_frame() -> None:
    # CARLA: 10 m along x, 5 m along its y (to the right of +x, i.e. south), heading 90 deg
    # clockwise from +x (south), nose up 10 deg.
    transform = carla.Transform(carla.Location(x=10.0, y=5.0, z=1.0), carla.Rotation(pitch=10.0, yaw=90.0, roll=0.0))
    x, y, z, roll, pitch, yaw = world_pose(transform)
    assert (x, y, z) == pytest.approx((10.0, -5.0, 1.0))
    assert yaw == pytest.approx(-math.pi / 2)  # facing south: -90 deg counter-clockwise
    assert pitch == pytest.approx(-math.radians(10.0))  # nose up is negative pitch in ours
    assert roll == pytest.approx(0.0)


@pytest.mark.parametrize("pose", POSES)
def test_our_matrix_agrees_with_carlas_own_transform(pose) -> None:
    """A point given in the body frame lands where carla.Transform.transform puts it."""
    x, y, z, roll, pitch, yaw = pose
    transform = to_carla_transform(x, y, z, yaw=yaw, pitch=pitch, roll=roll)
    local_ours = np.array([2.0, 0.7, -0.3])  # forward, left, down a bit
    local_carla = to_carla_location(*local_ours)
    moved = transform.transform(local_carla)
    expected = world_matrix(transform) @ np.append(local_ours, 1.0)
    assert np.allclose((moved.x, -moved.y, moved.z), expected[:3], atol=1e-4)


def test_locations_vectors_and_rates_flip_y_and_yaw() -> None:
    location = to_carla_location(1.0, 2.0, 3.0)
    assert (location.x, location.y, location.z) == (1.0, -2.0, 3.0)
    assert to_world_xy(location) == (1.0, 2.0)
    assert world_vector(to_carla_vector(4.0, -5.0, 6.0)) == (4.0, -5.0, 6.0)
    # turning left (counter-clockwise) is a negative yaw rate in CARLA's deg/s
    assert world_yaw_rate(carla.Vector3D(0.0, 0.0, -90.0)) == pytest.approx(math.pi / 2)
    assert world_yaw(to_carla_rotation(yaw=0.3)) == pytest.approx(0.3)
    assert world_rotation(carla.Rotation(pitch=0.0, yaw=0.0, roll=5.0))[0] == pytest.approx(math.radians(5.0))


def test_a_camera_mount_looks_where_our_camera_pose_looks() -> None:
    """The mount relative to the vehicle, composed with CARLA's camera axes (x forward), gives
    the same optical axis and centre as core/camera.py's T_ego_cam (OpenCV z forward)."""
    rear_axle_x = -1.4  # the rear axle 1.4 m behind the actor origin
    mount = camera_mount(1.5, 0.4, 1.6, 2.0, 3.0, 60.0, rear_axle_x)
    ours = camera_pose(1.5, 0.4, 1.6, 2.0, 3.0, 60.0)
    T_actor_cam = world_matrix(mount)  # noqa: N806 (camera body: x forward, y left, z up)
    axis = T_actor_cam[:3, 0]
    assert np.allclose(axis, ours[:3, 2], atol=1e-6)  # CARLA's forward = OpenCV's z
    assert np.allclose(T_actor_cam[:3, 3] - (rear_axle_x, 0, 0), ours[:3, 3], atol=1e-6)
    assert np.allclose(T_actor_cam[:3, 1], -ours[:3, 0], atol=1e-6)  # left = -right


def test_carla_intrinsics_centre_the_optical_axis_on_the_image() -> None:
    K = carla_camera_intrinsics(640, 360, 90.0)  # noqa: N806
    assert K[0, 0] == pytest.approx(320.0) and K[0, 2] == pytest.approx(319.5) and K[1, 2] == pytest.approx(179.5)


def test_forward_of_measures_along_the_actor_heading() -> None:
    from stagepilot.core.carla_frame import forward_of

    transform = to_carla_transform(10.0, 5.0, 0.0, yaw=math.pi / 2)  # facing north
    behind = to_carla_location(10.0, 3.6, 0.3)  # 1.4 m south of it
    assert forward_of(transform, behind) == pytest.approx(-1.4, abs=1e-5)
    in_cm = carla.Location(behind.x * 100, behind.y * 100, behind.z * 100)
    assert forward_of(transform, in_cm, scale=0.01) == pytest.approx(-1.4, abs=1e-5)

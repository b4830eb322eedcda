"""core/frames.py: the world-to-ego helpers that the simulators' ground truth and the
perception stages share."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from stagepilot.core.frames import to_ego, vector_to_ego, wrap_angle
from stagepilot.perception.geometry import world_to_ego


@pytest.mark.parametrize("yaw", [0.0, 0.7, math.pi / 2, -2.5, math.pi])
def test_a_car_driving_beside_the_ego_moves_straight_ahead_in_ego_axes(yaw):
    ego = SimpleNamespace(x=12.0, y=-4.0, yaw=yaw)
    heading = np.array([math.cos(yaw), math.sin(yaw)])
    left = np.array([-math.sin(yaw), math.cos(yaw)])
    car = np.array([ego.x, ego.y]) + 8.0 * heading + 3.5 * left  # 8 m ahead, one lane to the left
    assert to_ego(*car, ego) == pytest.approx((8.0, 3.5), abs=1e-9)
    vx, vy = 10.0 * heading  # the same heading at 10 m/s
    assert vector_to_ego(vx, vy, ego) == pytest.approx((10.0, 0.0), abs=1e-9)
    vx, vy = 2.0 * left  # a walker crossing from the right to the left
    assert vector_to_ego(vx, vy, ego) == pytest.approx((0.0, 2.0), abs=1e-9)


def test_a_vector_turns_but_does_not_move_and_keeps_its_length():
    ego = SimpleNamespace(x=100.0, y=50.0, yaw=1.1)
    v = vector_to_ego(3.0, -4.0, ego)
    assert math.hypot(*v) == pytest.approx(5.0)
    # a point is the vector from the ego to it, turned
    assert to_ego(103.0, 46.0, ego) == pytest.approx(v)


def test_the_scalar_and_vectorised_forms_agree():
    rng = np.random.default_rng(3)
    ego = SimpleNamespace(x=-7.0, y=22.0, yaw=-0.4)
    points = rng.uniform(-80.0, 80.0, (50, 2))
    scalar = np.array([to_ego(x, y, ego) for x, y in points])
    assert np.allclose(scalar, world_to_ego(points, ego), atol=1e-12)


@pytest.mark.parametrize("angle, wrapped", [(0.0, 0.0), (math.pi, -math.pi), (3 * math.pi / 2, -math.pi / 2),
                                            (-3 * math.pi / 2, math.pi / 2), (7.0, 7.0 - 2 * math.pi)])
def test_angles_wrap_into_minus_pi_to_pi(angle, wrapped):
    assert wrap_angle(angle) == pytest.approx(wrapped)
    assert -math.pi <= wrap_angle(angle) < math.pi

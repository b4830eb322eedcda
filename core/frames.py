"""Scalar frame helpers shared by the simulators' ground truth and the perception stages: an
angle wrapped to [-pi, pi), a world point in the ego frame (x forward, y left, about the
rear-axle centre; DESIGN "Frames and units") and a world vector (a velocity) turned into it.
perception/geometry.py ``world_to_ego`` is the vectorised form of ``to_ego``."""

from __future__ import annotations

import math


def wrap_angle(angle: float) -> float:
    """``angle`` [rad] wrapped to [-pi, pi)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def to_ego(x: float, y: float, ego) -> tuple[float, float]:
    """The world point (x, y) [m] in the frame of ``ego`` (anything with x, y and yaw)."""
    return vector_to_ego(x - ego.x, y - ego.y, ego)


def vector_to_ego(vx: float, vy: float, ego) -> tuple[float, float]:
    """The world vector (vx, vy) (a velocity [m/s], an offset [m]) turned into the axes of
    ``ego`` (anything with a yaw); unlike ``to_ego`` it is not moved to the ego's origin."""
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    return c * vx + s * vy, -s * vx + c * vy

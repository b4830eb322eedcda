"""Scalar frame helpers shared by the simulators' ground truth and the perception stages: an
angle wrapped to [-pi, pi), and a world point in the ego frame (x forward, y left, about the
rear-axle centre; DESIGN "Frames and units"). perception/geometry.py ``world_to_ego`` is the
vectorised form of ``to_ego``."""

from __future__ import annotations

import math


def wrap_angle(angle: float) -> float:
    """``angle`` [rad] wrapped to [-pi, pi)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def to_ego(x: float, y: float, ego) -> tuple[float, float]:
    """The world point (x, y) [m] in the frame of ``ego`` (anything with x, y and yaw)."""
    dx, dy = x - ego.x, y - ego.y
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    return c * dx + s * dy, -s * dx + c * dy

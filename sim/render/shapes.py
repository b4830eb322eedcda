"""Box models of common scene objects, all standing on the ground (z = 0), world frame."""

from __future__ import annotations

import math

import numpy as np

from . import palette
from .boxes import BoxSet

LAMP_RGB = {"red": (255, 40, 30), "yellow": (255, 190, 30), "green": (40, 255, 120)}
_UNLIT_LAMP_RGB = (34, 34, 30)


def _place(x: float, y: float, yaw: float, local: np.ndarray) -> np.ndarray:
    """(N, 3) offsets in the object frame (x forward, y left, z up) -> world centres."""
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.asarray(local, float)
    return np.column_stack([x + c * local[:, 0] - s * local[:, 1], y + s * local[:, 0] + c * local[:, 1], local[:, 2]])


def car(x: float, y: float, yaw: float, instance: int, rgb=(150, 20, 24), length: float = 4.5, width: float = 1.85,
        height: float = 1.5, tag: int = palette.CAR) -> BoxSet:  # fmt: skip
    """Wheels/underbody, body and glasshouse; (x, y) is the centre of the footprint."""
    z_body = 0.3
    z_belt = 0.55 * height + 0.15
    centers = _place(x, y, yaw, [[0.0, 0.0, z_body / 2], [0.0, 0.0, (z_body + z_belt) / 2], [-0.08 * length, 0.0, (z_belt + height) / 2]])
    sizes = [[0.8 * length, 0.92 * width, z_body], [length, width, z_belt - z_body], [0.52 * length, 0.9 * width, height - z_belt]]
    glass = tuple(int(0.3 * c + 40) for c in rgb)
    return BoxSet(centers, yaw, sizes, [(24, 24, 26), rgb, glass], tag, instance)


def pedestrian(x: float, y: float, yaw: float, instance: int, shirt_rgb=(40, 80, 150), pants_rgb=(45, 45, 60),
               skin_rgb=(200, 160, 130), height: float = 1.75) -> BoxSet:  # fmt: skip
    """Legs, torso and head."""
    z_hip, z_neck = 0.48 * height, 0.86 * height
    centers = _place(x, y, yaw, [[0.0, 0.0, z_hip / 2], [0.0, 0.0, (z_hip + z_neck) / 2], [0.0, 0.0, (z_neck + height) / 2]])
    sizes = [[0.26, 0.38, z_hip], [0.28, 0.46, z_neck - z_hip], [0.2, 0.18, height - z_neck]]
    return BoxSet(centers, yaw, sizes, [pants_rgb, shirt_rgb, skin_rgb], palette.PEDESTRIAN, instance)


def traffic_light(x: float, y: float, yaw: float, instance: int, state: str = "red", pole_height: float = 3.2) -> BoxSet:
    """Pole (POLE), housing and three lamps (TRAFFIC_LIGHT) facing along yaw; the lit lamp
    is emissive."""
    housing_h, lamp = 0.95, 0.22
    z_lamps = pole_height + housing_h / 2 + np.array([0.3, 0.0, -0.3])  # red, yellow, green
    local = [[0.0, 0.0, pole_height / 2], [0.0, 0.0, pole_height + housing_h / 2]]
    local += [[0.16, 0.0, z] for z in z_lamps]
    sizes = [[0.14, 0.14, pole_height], [0.3, 0.36, housing_h]] + [[0.02, lamp, lamp]] * 3
    lit = [state == name for name in ("red", "yellow", "green")]
    rgb = [(90, 92, 90), (30, 32, 30)] + [LAMP_RGB[n] if on else _UNLIT_LAMP_RGB for n, on in zip(LAMP_RGB, lit)]
    tags = [palette.POLE, palette.TRAFFIC_LIGHT] + [palette.TRAFFIC_LIGHT] * 3
    return BoxSet(_place(x, y, yaw, local), yaw, sizes, rgb, tags, instance, [False, False] + lit)


def building(x: float, y: float, yaw: float, length: float, depth: float, height: float, rgb=(150, 140, 128)) -> BoxSet:
    return BoxSet([[x, y, height / 2]], yaw, [[length, depth, height]], [rgb], palette.BUILDING, 0)


def tree(x: float, y: float, height: float = 6.0, crown_rgb=(60, 96, 40)) -> BoxSet:
    """Trunk and crown, both VEGETATION as in CARLA."""
    trunk_h = 0.4 * height
    crown_w = 0.55 * height
    centers = [[x, y, trunk_h / 2], [x, y, trunk_h + (height - trunk_h) / 2]]
    sizes = [[0.3, 0.3, trunk_h], [crown_w, crown_w, height - trunk_h]]
    return BoxSet(centers, 0.0, sizes, [(92, 70, 50), crown_rgb], palette.VEGETATION, 0)


def pole(x: float, y: float, height: float = 6.0, rgb=(120, 120, 116)) -> BoxSet:
    return BoxSet([[x, y, height / 2]], 0.0, [[0.18, 0.18, height]], [rgb], palette.POLE, 0)

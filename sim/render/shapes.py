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


# Columns: x, y, z_centre, length, width, height as fractions of the actor's size.
_CAR = np.array([
    [0.00, 0.0, 0.30, 1.00, 1.00, 0.40],    # body
    [-0.06, 0.0, 0.75, 0.50, 0.88, 0.50],   # glasshouse
    [0.31, 0.0, 0.215, 0.15, 1.02, 0.43],   # front wheels
    [-0.31, 0.0, 0.215, 0.15, 1.02, 0.43],  # rear wheels
    [0.499, 0.30, 0.36, 0.01, 0.18, 0.06],  # headlights
    [0.499, -0.30, 0.36, 0.01, 0.18, 0.06],
])
_PEDESTRIAN = np.array([
    [0.0, 0.22, 0.25, 0.45, 0.30, 0.50],    # left leg
    [0.0, -0.22, 0.25, 0.45, 0.30, 0.50],   # right leg
    [0.0, 0.0, 0.66, 0.55, 0.80, 0.33],     # torso
    [0.0, 0.52, 0.63, 0.35, 0.18, 0.34],    # left arm
    [0.0, -0.52, 0.63, 0.35, 0.18, 0.34],   # right arm
    [0.0, 0.0, 0.92, 0.42, 0.38, 0.14],     # head
])
_GLASS_RGB = (40, 52, 64)
_TYRE_RGB = (22, 22, 22)
_HEADLIGHT_RGB = (240, 240, 220)


def _template(x: float, y: float, yaw: float, template: np.ndarray, size) -> tuple[np.ndarray, np.ndarray]:
    """World centres and sizes (K, 3) of a template scaled to size (length, width, height)."""
    scale = np.asarray(size, float)
    return _place(x, y, yaw, template[:, :3] * scale), template[:, 3:] * scale


def car(x: float, y: float, yaw: float, instance: int, rgb=(150, 20, 24), length: float = 4.5, width: float = 1.85,
        height: float = 1.5, tag: int = palette.CAR) -> BoxSet:  # fmt: skip
    """Body, glasshouse, wheels and headlights; (x, y) is the centre of the footprint."""
    centers, sizes = _template(x, y, yaw, _CAR, (length, width, height))
    colours = [rgb, _GLASS_RGB, _TYRE_RGB, _TYRE_RGB, _HEADLIGHT_RGB, _HEADLIGHT_RGB]
    return BoxSet(centers, yaw, sizes, colours, tag, instance)


def pedestrian(x: float, y: float, yaw: float, instance: int, shirt_rgb=(40, 80, 150), pants_rgb=(45, 45, 60),
               skin_rgb=(200, 160, 130), height: float = 1.75, width: float = 0.6,
               walk_phase: float = 0.0) -> BoxSet:  # fmt: skip
    """Legs, arms, torso and head; the legs swing fore and aft with walk_phase [rad]."""
    centers, sizes = _template(x, y, yaw, _PEDESTRIAN, (0.5, width, height))
    swing = 0.12 * math.sin(walk_phase) * np.array([math.cos(yaw), math.sin(yaw)])
    centers[0, :2] += swing
    centers[1, :2] -= swing
    colours = [pants_rgb, pants_rgb, shirt_rgb, shirt_rgb, shirt_rgb, skin_rgb]
    return BoxSet(centers, yaw, sizes, colours, palette.PEDESTRIAN, instance)


def obstacle(x: float, y: float, yaw: float, instance: int, size, rgb=(255, 110, 0)) -> BoxSet:
    """A cone or barrier (STATIC): a coloured base with a white band on top."""
    length, width, height = size
    centers = [[x, y, height * 0.35], [x, y, height * 0.8]]
    sizes = [[length, width, height * 0.7], [length * 0.7, width * 0.7 if width < 1 else width, height * 0.2]]
    return BoxSet(centers, yaw, sizes, [rgb, (240, 240, 240)], palette.STATIC, instance)


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

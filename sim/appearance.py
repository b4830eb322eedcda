"""What actors look like to the cameras: each actor is a few coloured, tagged boxes.

Templates are in the actor's body frame (x forward, y left, z up from the ground) and scale
with the actor's size, so a car reads as body + glass cabin + wheels, a pedestrian as legs,
arms, torso and head, and a traffic light as pole + housing + three lamps.
"""

from __future__ import annotations

import math

import numpy as np

from stagepilot.sim.render import palette
from stagepilot.sim.render.boxes import BoxSet

# Columns: x, y, z_centre, length, width, height as fractions of the actor's size.
_CAR = np.array([
    [0.00, 0.0, 0.30, 1.00, 1.00, 0.40],   # body
    [-0.06, 0.0, 0.75, 0.50, 0.88, 0.50],  # cabin (glass)
    [0.31, 0.0, 0.215, 0.15, 1.02, 0.43],  # front wheels
    [-0.31, 0.0, 0.215, 0.15, 1.02, 0.43], # rear wheels
    [0.499, 0.30, 0.36, 0.01, 0.18, 0.06], # headlights
    [0.499, -0.30, 0.36, 0.01, 0.18, 0.06],
])
_PEDESTRIAN = np.array([
    [0.0, 0.22, 0.25, 0.45, 0.30, 0.50],   # left leg
    [0.0, -0.22, 0.25, 0.45, 0.30, 0.50],  # right leg
    [0.0, 0.0, 0.66, 0.55, 0.80, 0.33],    # torso
    [0.0, 0.52, 0.63, 0.35, 0.18, 0.34],   # left arm
    [0.0, -0.52, 0.63, 0.35, 0.18, 0.34],  # right arm
    [0.0, 0.0, 0.92, 0.42, 0.38, 0.14],    # head
])
GLASS = (40, 52, 64)
TYRE = (22, 22, 22)
LAMP_ON = {"red": (255, 40, 30), "yellow": (255, 200, 20), "green": (40, 255, 110)}
LAMP_OFF = (45, 40, 35)


def _place(template: np.ndarray, x, y, yaw, size) -> tuple[np.ndarray, np.ndarray]:
    """World centres (K, 3) and sizes (K, 3) of a template's boxes."""
    length, width, height = size
    local = template[:, :3] * np.array([length, width, height])
    c, s = math.cos(yaw), math.sin(yaw)
    centers = np.column_stack([
        x + c * local[:, 0] - s * local[:, 1],
        y + s * local[:, 0] + c * local[:, 1],
        local[:, 2],
    ])
    sizes = template[:, 3:] * np.array([length, width, height])
    return centers, sizes


def car_boxes(instance: int, x, y, yaw, size, body_rgb) -> BoxSet:
    centers, sizes = _place(_CAR, x, y, yaw, size)
    rgb = [body_rgb, GLASS, TYRE, TYRE, (240, 240, 220), (240, 240, 220)]
    return BoxSet(centers, yaw, sizes, rgb, palette.CAR, instance)


def pedestrian_boxes(instance: int, x, y, yaw, size, shirt_rgb, walk_phase: float = 0.0) -> BoxSet:
    centers, sizes = _place(_PEDESTRIAN, x, y, yaw, size)
    # Legs swing while walking: shift them fore and aft along the heading.
    swing = 0.12 * math.sin(walk_phase)
    centers[0, :2] += swing * np.array([math.cos(yaw), math.sin(yaw)])
    centers[1, :2] -= swing * np.array([math.cos(yaw), math.sin(yaw)])
    pants = tuple(int(v * 0.45) for v in shirt_rgb[::-1])
    skin = (205, 160, 130)
    rgb = [pants, pants, shirt_rgb, shirt_rgb, shirt_rgb, skin]
    return BoxSet(centers, yaw, sizes, rgb, palette.PEDESTRIAN, instance)


def static_boxes(instance: int, kind: str, x, y, yaw, size, rgb) -> BoxSet:
    if kind == "vehicle":
        return car_boxes(instance, x, y, yaw, size, rgb)
    length, width, height = size
    stripe = (240, 240, 240)
    centers = np.array([[x, y, height * 0.35], [x, y, height * 0.8]])
    sizes = np.array([[length, width, height * 0.7], [length * 0.7, width * 0.7 if width < 1 else width, height * 0.2]])
    return BoxSet(centers, yaw, sizes, [rgb, stripe], palette.STATIC, instance)


def traffic_light_boxes(instance: int, x, y, z, facing_yaw: float, state: str) -> BoxSet:
    """Pole at (x, y) and a housing at height z whose lamps face `facing_yaw`."""
    c, s = math.cos(facing_yaw), math.sin(facing_yaw)
    centers = [[x, y, z / 2 + 0.5], [x, y, z]]
    sizes = [[0.16, 0.16, z + 1.0], [0.35, 0.4, 1.1]]
    rgb = [(90, 90, 90), (25, 25, 25)]
    tags = [palette.POLE, palette.TRAFFIC_LIGHT]
    emissive = [False, False]
    for k, name in enumerate(("red", "yellow", "green")):
        centers.append([x + c * 0.19, y + s * 0.19, z + 0.34 - 0.34 * k])
        sizes.append([0.04, 0.26, 0.26])
        lit = name == state
        rgb.append(LAMP_ON[name] if lit else LAMP_OFF)
        tags.append(palette.TRAFFIC_LIGHT)
        emissive.append(lit)
    return BoxSet(np.array(centers), facing_yaw, np.array(sizes), rgb, np.array(tags), instance, np.array(emissive))

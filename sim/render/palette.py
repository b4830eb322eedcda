"""CARLA semantic tags (0.9.14 and later) and the CityScapes palette CARLA draws them with.

Ids are those of CARLA's `ObjectLabel.h`; 0.9.13 and earlier used other ids.
"""

from __future__ import annotations

import cv2
import numpy as np

UNLABELED = 0
ROAD = 1
SIDEWALK = 2
BUILDING = 3
WALL = 4
FENCE = 5
POLE = 6
TRAFFIC_LIGHT = 7
TRAFFIC_SIGN = 8
VEGETATION = 9
TERRAIN = 10
SKY = 11
PEDESTRIAN = 12
RIDER = 13
CAR = 14
TRUCK = 15
BUS = 16
TRAIN = 17
MOTORCYCLE = 18
BICYCLE = 19
STATIC = 20
DYNAMIC = 21
OTHER = 22
WATER = 23
ROAD_LINE = 24
GROUND = 25
BRIDGE = 26
RAIL_TRACK = 27
GUARD_RAIL = 28

TAG_NAMES: dict[int, str] = {
    UNLABELED: "unlabeled",
    ROAD: "road",
    SIDEWALK: "sidewalk",
    BUILDING: "building",
    WALL: "wall",
    FENCE: "fence",
    POLE: "pole",
    TRAFFIC_LIGHT: "traffic_light",
    TRAFFIC_SIGN: "traffic_sign",
    VEGETATION: "vegetation",
    TERRAIN: "terrain",
    SKY: "sky",
    PEDESTRIAN: "pedestrian",
    RIDER: "rider",
    CAR: "car",
    TRUCK: "truck",
    BUS: "bus",
    TRAIN: "train",
    MOTORCYCLE: "motorcycle",
    BICYCLE: "bicycle",
    STATIC: "static",
    DYNAMIC: "dynamic",
    OTHER: "other",
    WATER: "water",
    ROAD_LINE: "road_line",
    GROUND: "ground",
    BRIDGE: "bridge",
    RAIL_TRACK: "rail_track",
    GUARD_RAIL: "guard_rail",
}

_RGB_BY_TAG = [
    (0, 0, 0), (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35),
    (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    (110, 190, 160), (170, 120, 50), (55, 90, 80), (45, 60, 150), (157, 234, 50),
    (81, 0, 81), (150, 100, 100), (230, 150, 140), (180, 165, 180),
]  # fmt: skip

CARLA_PALETTE = np.zeros((256, 3), np.uint8)  # (256, 3) RGB by tag id; rows past 28 are 0
CARLA_PALETTE[: len(_RGB_BY_TAG)] = _RGB_BY_TAG
CARLA_PALETTE.flags.writeable = False
_LUT_3CH = CARLA_PALETTE.reshape(256, 1, 3).copy()  # cv2.LUT wants a (256, 1, C) table


def colorize(semantic: np.ndarray) -> np.ndarray:
    """(H, W) uint8 tag ids -> (H, W, 3) uint8 RGB in CARLA's CityScapes palette."""
    semantic = np.ascontiguousarray(semantic, np.uint8)
    return cv2.LUT(cv2.merge([semantic, semantic, semantic]), _LUT_3CH)

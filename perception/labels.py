"""What the perception network names: its detection classes, its segmentation classes, and how
CARLA's semantic tags map onto the latter.

Detection classes carry a traffic light's state in the class (red / yellow / green), since the
state is read from the housing's pixels. Segmentation classes are CARLA semantic tags merged to
eleven (car, truck and bus are one ``vehicle``); every other tag is background.
"""

from __future__ import annotations

import torch
from torch import Tensor

CLASSES = ("vehicle", "pedestrian", "traffic_light_red", "traffic_light_yellow", "traffic_light_green",
           "static_obstacle")
SEG_CLASSES = ("background", "road", "road_line", "sidewalk", "vehicle", "pedestrian", "traffic_light", "pole",
               "vegetation", "building", "sky")
# CARLA semantic tag id (sim/render/palette.py) -> index in SEG_CLASSES; every other tag is background.
CARLA_TAG_TO_SEG = {
    1: 1,    # road
    24: 2,   # road line
    2: 3,    # sidewalk
    14: 4, 15: 4, 16: 4,  # car, truck, bus -> vehicle
    12: 5,   # pedestrian
    7: 6,    # traffic light
    6: 7,    # pole
    9: 8,    # vegetation
    3: 9,    # building
    11: 10,  # sky
}
SEG_LOOKUP = torch.zeros(256, dtype=torch.long)  # (256,) CARLA tag -> seg class
for _tag, _cls in CARLA_TAG_TO_SEG.items():
    SEG_LOOKUP[_tag] = _cls
IGNORE_INDEX = 255  # mask value left out of the segmentation loss and the IoU


def seg_mask_from_tags(tags: Tensor) -> Tensor:
    """CARLA tag image (..., H, W) of integers -> seg class mask (..., H, W) int64."""
    return SEG_LOOKUP.to(tags.device)[tags.long()]

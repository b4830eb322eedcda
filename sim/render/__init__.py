"""Software camera renderer of the embedded simulator: RGB, semantic tags and depth."""

from .boxes import BoxSet
from .camera import CameraSpec, T_world_cam, T_world_ego, project_points
from .ground import GroundRaster, PaintedLine
from .lighting import Lighting
from .palette import CARLA_PALETTE, colorize
from .renderer import CameraRenderer, RenderOutput, visible_boxes

__all__ = [
    "BoxSet",
    "CARLA_PALETTE",
    "CameraRenderer",
    "CameraSpec",
    "GroundRaster",
    "Lighting",
    "PaintedLine",
    "RenderOutput",
    "T_world_cam",
    "T_world_ego",
    "colorize",
    "project_points",
    "visible_boxes",
]

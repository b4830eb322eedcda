"""Software camera renderer of the embedded simulator: RGB, semantic tags, depth, instances.

The world is a flat textured ground (GroundRaster, built once per map) plus oriented boxes
(BoxSet): static scenery given once, actors given per frame. No GPU, no CARLA server:
OpenCV and numpy only, single-threaded >100 frames/s at 640x360 for a town scene.

    ground = GroundRaster.build(polygons, markings, bounds, seed=3)
    camera = CameraRenderer(CameraSpec("front", 640, 360, 90.0, 1.5, 0.0, 1.6), ground, scenery)
    out = camera.render((x, y, yaw), actors, Lighting.sample(rng))
    boxes_2d = visible_boxes(out, actors)  # instance -> (x0, y0, x1, y1, visible_fraction)

Semantic ids and colours are CARLA's (0.9.14+), see `palette`; `shapes` builds boxes for
cars, pedestrians, traffic lights, buildings, trees and poles.
"""

from . import palette, shapes
from .boxes import BoxSet
from .camera import CameraSpec, T_world_cam, T_world_ego, project_points
from .ground import GroundRaster, Marking, PaintedLine
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
    "Marking",
    "PaintedLine",
    "RenderOutput",
    "T_world_cam",
    "T_world_ego",
    "colorize",
    "palette",
    "project_points",
    "shapes",
    "visible_boxes",
]

"""Cameras of the embedded simulator: the ground texture, scenery, weather and renderers.

Built once per reset. The ground raster and scenery depend only on the map, the seed and
the render config, so they are cached across resets of the same scenario.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np

from stagepilot.core.config import StackConfig
from stagepilot.core.roadmap import RoadMap
from stagepilot.sim.render import palette, shapes
from stagepilot.sim.render.boxes import BoxSet
from stagepilot.sim.render.camera import CameraSpec
from stagepilot.sim.render.ground import GroundRaster
from stagepilot.sim.render.lighting import Lighting
from stagepilot.sim.render.renderer import CameraRenderer, RenderOutput, visible_boxes
from stagepilot.sim.scenario import Scenario, WeatherSpec
from stagepilot.sim.scenery import build_scenery

SURFACE_TAGS = {"Driving": palette.ROAD, "Shoulder": palette.ROAD, "Parking": palette.ROAD,
                "Biking": palette.ROAD, "Bidirectional": palette.ROAD, "Sidewalk": palette.SIDEWALK}
PRESET_NAMES = {"clear_noon": "clear", "overcast": "overcast", "dusk": "dusk", "fog": "fog", "night": "night"}


@lru_cache(maxsize=4)
def ground_and_scenery(road_map: RoadMap, seed: int, resolution_m: float, scenery: bool):
    polygons = [(SURFACE_TAGS.get(s.lane_type, palette.TERRAIN), s.polygon) for s in road_map.surfaces()]
    ground = GroundRaster.build(polygons, road_map.markings(), road_map.bounds, resolution_m, seed)
    signals_xy = [head.position[:2] for head in road_map.signal_heads]
    statics = build_scenery(ground, np.random.default_rng([seed, 7]), signals_xy) if scenery else BoxSet.empty()
    return ground, statics


def lighting_for(weather: WeatherSpec, rng: np.random.Generator) -> Lighting:
    """The scenario's weather: a preset (or a random one) with the given values pinned."""
    light = Lighting.sample(rng) if weather.preset == "random" else Lighting.preset(PRESET_NAMES[weather.preset], rng)
    pinned = {"sun_altitude_deg": weather.sun_altitude_deg, "fog_density": weather.fog_density,
              "brightness": weather.brightness, "noise_std": weather.noise_std}
    return dataclasses.replace(light, **{k: v for k, v in pinned.items() if v is not None})


class SensorSuite:
    """Every configured camera, rendering one world state to RGB, semantic and depth."""

    def __init__(self, config: StackConfig, road_map: RoadMap, scenario: Scenario, rng: np.random.Generator):
        render = config.sim.render
        self.ground, self.statics = ground_and_scenery(
            road_map, scenario.seed, render.ground_resolution_m, render.scenery)
        self.lighting = lighting_for(scenario.weather, rng)
        self.specs = {
            name: CameraSpec(name=name, **cam.model_dump(exclude={"stream", "jpeg_quality"})) for name, cam in config.sim.cameras.items()
        }
        self.renderers = {name: CameraRenderer(spec, self.ground, self.statics, max_distance_m=render.view_distance_m)
                          for name, spec in self.specs.items()}

    def render(self, ego_pose: tuple[float, float, float], dynamic: BoxSet, frame: int) -> dict[str, RenderOutput]:
        return {name: r.render(ego_pose, dynamic, self.lighting, frame_index=frame) for name, r in self.renderers.items()}

    @staticmethod
    def visible(output: RenderOutput, dynamic: BoxSet) -> dict[int, tuple[float, float, float, float, float]]:
        return visible_boxes(output, dynamic)


def dynamic_boxes(sim) -> BoxSet:
    """Boxes of every actor and traffic light at the simulator's current time."""
    sets = []
    for npc in sim.npcs:
        a = npc.agent
        sets.append(shapes.car(a.x, a.y, a.yaw, a.id, a.color, *a.size))
    for ped in sim.pedestrians:
        a = ped.agent
        sets.append(shapes.pedestrian(a.x, a.y, a.yaw, a.id, shirt_rgb=a.color, pants_rgb=a.color[::-1],
                                      height=a.size[2], width=a.size[1], walk_phase=ped.s * 3.0))
    for a in sim.statics:
        if a.kind == "vehicle":
            sets.append(shapes.car(a.x, a.y, a.yaw, a.id, a.color, *a.size))
        else:
            sets.append(shapes.obstacle(a.x, a.y, a.yaw, a.id, a.size, a.color))
    for light in sim.lights:
        x, y, z = light.position
        sets.append(shapes.traffic_light(x, y, light.facing, light.id, light.state(sim.t),
                                         pole_height=z - 0.475))  # housing centred at z
    return BoxSet.concat(sets)

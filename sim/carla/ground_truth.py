"""The ground truth of one CARLA frame: every actor near the ego and every traffic light, with
their world and ego-frame boxes and their occlusion-aware 2D boxes in each camera (the 2D boxes
from sim/carla/truth.py, a light's lamps merged into its one box by sim/carla/lights.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from stagepilot.core.frames import to_ego, vector_to_ego, wrap_angle
from stagepilot.core.messages import Box2D, EgoState, ObjectTruth
from stagepilot.sim.carla.lights import CarlaLight, merge_lamps
from stagepilot.sim.carla.sensors import CameraRigSpec
from stagepilot.sim.carla.truth import Box3D, project_boxes
from stagepilot.sim.observe import KIND_TAGS
from stagepilot.sim.render import palette
from stagepilot.sim.traffic import Agent

TRUTH_RANGE_M = 120.0  # [m] objects farther than this from the ego are left out of the ground truth
LIGHT_EXTENT_M = (0.3, 0.36, 0.95)  # [m] a signal head's length, width, height


def object_truth(agents: list[Agent], box_z: dict[int, float], tags: dict[int, tuple[int, ...]],
                 lights: list[CarlaLight], ego: EgoState, ego_z: float, T_world_ego: np.ndarray,  # noqa: N803
                 specs: dict[str, CameraRigSpec], semantic: dict[str, np.ndarray],
                 depth: dict[str, np.ndarray]) -> tuple[ObjectTruth, ...]:
    """The agents within TRUTH_RANGE_M of the ego and every light as ObjectTruth. ``box_z``: each
    agent's box-centre height [m]; ``tags``: the semantic tags its pixels may show (a truck's are
    Truck, not Car; the kind's tag is the fallback); ``ego_z``: the world height of the ground
    under the ego; ``T_world_ego`` (4, 4): the ego frame (rear axle, on the ground) in the world;
    ``semantic``/``depth``: this frame's images per camera, which give the 2D boxes' occlusion."""
    near, boxes = [], []
    for agent in agents:
        if math.hypot(agent.x - ego.x, agent.y - ego.y) > TRUTH_RANGE_M:
            continue
        near.append(agent)
        boxes.append(Box3D(agent.id, KIND_TAGS[agent.kind], (agent.x, agent.y, box_z[agent.id]),
                           agent.yaw, agent.size, tags.get(agent.id, ())))
    lamp_of: dict[int, int] = {}  # a light's lamp boxes get ids of their own, then merge
    for light in lights:
        near.append(light)
        for box in light.lamps:
            lamp_id = -1 - len(lamp_of)
            lamp_of[lamp_id] = light.id
            boxes.append(replace(box, id=lamp_id))
    boxes_2d = {name: merge_lamps(project_boxes(boxes, spec.K, T_world_ego @ spec.T_ego_cam, depth[name],
                                                 semantic.get(name)), lamp_of)
                for name, spec in specs.items() if name in depth}
    objects = []
    for item in near:
        if isinstance(item, CarlaLight):
            x, y, z = item.position
            kind, tag, yaw, extent = "traffic_light", palette.TRAFFIC_LIGHT, item.facing, LIGHT_EXTENT_M
            vx = vy = 0.0
        else:
            x, y, z = item.x, item.y, box_z[item.id]
            kind, tag, yaw, extent = item.kind, KIND_TAGS[item.kind], item.yaw, item.size
            vx, vy = item.velocity
        ex, ey = to_ego(x, y, ego)
        objects.append(ObjectTruth(
            id=item.id, kind=kind, tag=tag, center_world=(x, y, z), yaw_world=wrap_angle(yaw), extent=extent,
            center_ego=(ex, ey, z - ego_z),  # the ego frame's origin is on the ground under the ego
            yaw_ego=wrap_angle(yaw - ego.yaw), velocity_world=(vx, vy),
            velocity_ego=vector_to_ego(vx, vy, ego),
            boxes_2d={cam: Box2D(*b[item.id]) for cam, b in boxes_2d.items() if item.id in b}))
    return tuple(objects)

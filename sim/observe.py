"""Assemble the embedded simulator's Observation: ego state, camera frames, ground truth."""

from __future__ import annotations

from stagepilot.core.camera import decode_frame, encode_frame
from stagepilot.core.frames import to_ego, vector_to_ego, wrap_angle
from stagepilot.core.messages import (
    Box2D,
    CameraImage,
    EgoState,
    GroundTruth,
    LaneTruth,
    ObjectTruth,
    Observation,
    TrafficLightTruth,
)
from stagepilot.sim.render import palette
from stagepilot.sim.render.renderer import OUTLINE_MARGIN_PX
from stagepilot.sim.sensors import dynamic_boxes

KIND_TAGS = {"vehicle": palette.CAR, "pedestrian": palette.PEDESTRIAN, "static": palette.STATIC}


def ego_state(sim) -> EgoState:
    st = sim.ego.state
    return EgoState(x=st.x, y=st.y, yaw=st.yaw, speed=st.speed, yaw_rate=st.yaw_rate,
                    accel=st.accel, steer_angle=st.steer_angle, lateral_speed=st.vy)


def _objects(sim, ego: EgoState, boxes_2d: dict[str, dict]) -> tuple[ObjectTruth, ...]:
    objects = []
    for agent in sim.agents():
        ex, ey = to_ego(agent.x, agent.y, ego)
        vx, vy = agent.velocity
        height = agent.size[2]
        objects.append(ObjectTruth(
            id=agent.id, kind=agent.kind, tag=KIND_TAGS[agent.kind],
            center_world=(agent.x, agent.y, height / 2), yaw_world=agent.yaw, extent=agent.size,
            center_ego=(ex, ey, height / 2), yaw_ego=wrap_angle(agent.yaw - ego.yaw),
            velocity_world=(vx, vy), velocity_ego=vector_to_ego(vx, vy, ego),
            boxes_2d={cam: Box2D(*b[agent.id]) for cam, b in boxes_2d.items() if agent.id in b},
        ))
    for light in sim.lights:
        x, y, z = light.position
        ex, ey = to_ego(x, y, ego)
        yaw = light.facing
        objects.append(ObjectTruth(
            id=light.id, kind="traffic_light", tag=palette.TRAFFIC_LIGHT,
            center_world=(x, y, z), yaw_world=wrap_angle(yaw), extent=(0.3, 0.36, 0.95),
            center_ego=(ex, ey, z), yaw_ego=wrap_angle(yaw - ego.yaw), velocity_world=(0.0, 0.0),
            velocity_ego=(0.0, 0.0),
            boxes_2d={cam: Box2D(*b[light.id]) for cam, b in boxes_2d.items() if light.id in b},
        ))
    return tuple(objects)


def _lights(sim) -> tuple[TrafficLightTruth, ...]:
    return tuple(
        TrafficLightTruth(id=l.id, state=l.state(sim.t), stop_line=(*l.stop_line.p0, *l.stop_line.p1),
                          position=l.position, controls=tuple((k[0], k[2]) for k in l.stop_line.lane_keys))
        for l in sim.lights
    )


def _lane(sim) -> LaneTruth:
    ego = sim.ego_agent()
    lane = sim.road_map.waypoint(ego.x, ego.y, project=True)
    on_road = sim.road_map.on_road(ego.x, ego.y)
    offset = to_ego(ego.x, ego.y, lane)[1]  # left of the lane centre [m]
    return LaneTruth(road_id=lane.road_id, lane_id=lane.lane_id, lane_width=lane.width,
                     lateral_offset=offset, is_junction=lane.is_junction, on_road=on_road)


def build_observation(sim, events: tuple, render: bool = True) -> Observation:
    ego = ego_state(sim)
    cameras, semantic, depth, boxes_2d = {}, {}, {}, {}
    if sim.sensors is not None and render:
        dynamic = dynamic_boxes(sim)
        outputs = sim.sensors.render((ego.x, ego.y, ego.yaw), dynamic, sim.frame)
        for name, out in outputs.items():
            spec = sim.sensors.specs[name]
            link = sim.config.sim.cameras[name]
            encoded = encode_frame(out.rgb, link.stream, link.jpeg_quality)
            cameras[name] = CameraImage(name=name, rgb=decode_frame(encoded), K=spec.K, T_ego_cam=spec.T_ego_cam,
                                        outline_margin_px=OUTLINE_MARGIN_PX, encoded=encoded, encoding=link.stream)
            semantic[name] = out.semantic
            depth[name] = out.depth
            if sim.config.sim.ground_truth:
                boxes_2d[name] = sim.sensors.visible(out, dynamic)
    truth = None
    if sim.config.sim.ground_truth:
        truth = GroundTruth(objects=_objects(sim, ego, boxes_2d), semantic=semantic, depth=depth,
                            traffic_lights=_lights(sim), lane=_lane(sim))
    return Observation(
        t=sim.t, frame=sim.frame, cameras=cameras, ego=ego, route=sim.route_message,
        route_progress=sim.monitor.progress, events=events, ground_truth=truth,
    )


"""CARLA's traffic lights behind the map's signal heads: which light governs which approach,
its timing, the scenario's first light, and its lamps' boxes for the ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import carla

from stagepilot.core.carla_frame import to_world_xy, to_world_xyz, world_yaw
from stagepilot.core.config import TrafficLightConfig
from stagepilot.core.roadmap import RoadMap
from stagepilot.sim.carla.connection import has_api
from stagepilot.sim.carla.server import CarlaServer
from stagepilot.sim.carla.truth import Box3D
from stagepilot.sim.render import palette
from stagepilot.sim.scenario import TrafficLightSpec

LIGHT_STATES = {carla.TrafficLightState.Red: "red", carla.TrafficLightState.Yellow: "yellow",
                carla.TrafficLightState.Green: "green"}


@dataclass
class CarlaLight:
    """A map signal head bound to the CARLA traffic light that governs its lanes; the state is
    the light's at the last tick. Quacks like the embedded simulator's TrafficLight."""

    id: int
    stop_line: object
    position: tuple[float, float, float]
    facing: float
    actor: object
    lamps: tuple[Box3D, ...] = ()  # the light's lamp housings, world frame (for its 2D boxes)
    current: str = "unknown"

    def state(self, t: float) -> str:  # noqa: ARG002 (the server keeps the time)
        return self.current

    def read(self) -> None:
        """The light's state at the last tick (the client's copy: no call to the server)."""
        self.current = LIGHT_STATES.get(self.actor.get_state(), "unknown")


def bind_lights(server: CarlaServer, road_map: RoadMap, route_keys, spec: TrafficLightSpec,
                timing: TrafficLightConfig) -> list[CarlaLight]:
    """Each map head bound to the CARLA light whose stop waypoints are on its lanes; heads with
    no CARLA light are not signalised here. Timing from the stack's config; the scenario's
    first light on the route (`route_keys`) is set; with lights off, every light is green and
    frozen (until the drive ends: `server.froze_lights`)."""
    world = server.world
    actors = [a for a in server.call("listing the traffic lights", world.get_actors)
              if a.type_id.startswith("traffic.traffic_light")]
    by_lane: dict[tuple[int, int], object] = {}
    for light in actors:
        if not spec.enabled:
            light.set_state(carla.TrafficLightState.Green)
            continue
        light.set_green_time(timing.green_s)
        light.set_yellow_time(timing.yellow_s)
        light.set_red_time(timing.all_red_s)
        for wp in light.get_stop_waypoints():
            by_lane.setdefault((wp.road_id, wp.lane_id), light)
    if not spec.enabled:
        world.freeze_all_traffic_lights(True)
        server.froze_lights = True  # undone at close: a frozen light outlives the drive
        return []
    world.reset_all_traffic_lights()  # the new times from t = 0, whatever the server ran before
    bound = []
    for head in road_map.signal_heads:
        light = next((by_lane[(k[0], k[2])] for k in head.stop_line.lane_keys if (k[0], k[2]) in by_lane), None)
        if light is not None:
            lamps = _lamps(light, head.id)
            x, y = to_world_xy(light.get_transform().location)
            z = max((lamp.center[2] for lamp in lamps), default=head.position[2])
            bound.append(CarlaLight(head.id, head.stop_line, (x, y, z), head.facing, light, lamps))
    first = _first_light(bound, route_keys)
    if first is not None and spec.first_light != "auto":
        state = {"red": carla.TrafficLightState.Red, "yellow": carla.TrafficLightState.Yellow,
                 "green": carla.TrafficLightState.Green}[spec.first_light]
        first.actor.set_state(state)
    return bound


def _first_light(lights: list[CarlaLight], route_keys) -> CarlaLight | None:
    """The first bound light along the route's lane segments."""
    by_lane = {key: light for light in lights for key in light.stop_line.lane_keys}
    return next((by_lane[key] for key in route_keys if key in by_lane), None)


def _lamps(light, light_id: int) -> tuple[Box3D, ...]:
    """The lamp housings of a CARLA traffic light (world-space boxes, carla 0.9.14 and later)."""
    if not has_api(light, "get_light_boxes"):
        return ()
    lamps = []
    for box in light.get_light_boxes():
        center = to_world_xyz(box.location)
        lamps.append(Box3D(light_id, palette.TRAFFIC_LIGHT, center, world_yaw(box.rotation),
                           (2 * box.extent.x, 2 * box.extent.y, 2 * box.extent.z)))
    return tuple(lamps)


def merge_lamps(found: dict[int, tuple], lamp_of: dict[int, int]) -> dict[int, tuple]:
    """Per light, its most visible lamp's 2D box."""
    merged = {k: v for k, v in found.items() if k >= 0}
    for lamp, light_id in lamp_of.items():
        if lamp in found and (light_id not in merged or found[lamp][4] > merged[light_id][4]):
            merged[light_id] = found[lamp]
    return merged

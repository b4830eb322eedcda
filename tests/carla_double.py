"""A recording double of the CARLA client, for the teardown tests (tests/test_carla_teardown.py).

No CARLA server can run here, so this stands in for one, and only to count: what was spawned,
what was destroyed, which settings were applied, in what order. Everything it returns that
the real library can build offline is the real thing (carla.Map from the scenario's OpenDRIVE,
WorldSettings, Transform, BoundingBox, VehicleControl, command.DestroyActor). Every method it
implements exists with the same name on the class it stands for in the wheel's
carla/libcarla.pyi (tests/test_carla_teardown.py checks). Cameras deliver black frames.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import carla

from stagepilot.core.maps import find_map, read_map_text


def _copy(settings):
    """WorldSettings do not pickle or copy; the fields the backend sets, copied."""
    copied = carla.WorldSettings()
    for name in ("synchronous_mode", "fixed_delta_seconds", "no_rendering_mode"):
        setattr(copied, name, getattr(settings, name))
    return copied


class Server:
    """What the double's server saw. `fail_at_tick`: tick number whose call raises `failure`
    (tick 1 places the ego, tick 2 warms the sensors up, tick k + 3 makes frame k); with `gone`,
    every later call raises it
    too (the server died)."""

    def __init__(self, fail_at_tick: int | None = None, failure: BaseException | None = None, gone: bool = False):
        self.settings = carla.WorldSettings()  # the server's own: asynchronous
        self.original = _copy(self.settings)
        self.log: list[tuple[str, int]] = []  # (what, actor id), in order
        self.spawned: set[int] = set()
        self.destroyed: set[int] = set()
        self.ticks = 0
        self.fail_at_tick, self.failure, self.gone = fail_at_tick, failure, gone
        self.dead = False
        self.tm_sync = False
        self.ids = itertools.count(100)
        self.world: World | None = None
        self.extra_towns: dict[str, str] = {}  # towns only the server has: name -> a map file to stand in
        self.lights_for = None  # carla.Map -> [(stop waypoints, location)]: the world's traffic lights
        self.loads: list[tuple[str, str]] = []

    def check(self) -> None:
        if self.dead:
            raise self.failure

    def alive(self) -> set[int]:
        return self.spawned - self.destroyed


class Client:  # carla.Client
    server: Server  # set by the test (the class is the factory the backend calls)

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    def set_timeout(self, seconds: float) -> None:
        self.timeout = seconds

    def get_server_version(self) -> str:
        self.server.check()
        return "0.9.16"

    def get_client_version(self) -> str:
        return "0.9.16"

    def get_world(self) -> "World":
        self.server.check()
        if self.server.world is None:  # the world a fresh server shows
            self.server.world = World(self.server, carla.Map("Town10HD_Opt", read_map_text(find_map("straight"))))
        return self.server.world

    def get_available_maps(self) -> list[str]:
        return [f"/Game/Carla/Maps/{town}" for town in ("Town01", "Town02", *self.server.extra_towns)]

    def load_world(self, map_name: str, reset_settings: bool = True) -> "World":
        self.server.loads.append(("load_world", map_name))
        stand_in = self.server.extra_towns.get(map_name, map_name)
        return self._new_world(read_map_text(find_map(stand_in)), map_name, reset_settings)

    def generate_opendrive_world(self, opendrive: str, parameters=None, reset_settings: bool = True) -> None:
        self.server.loads.append(("generate_opendrive_world", ""))
        self._new_world(opendrive, "OpenDriveMap", reset_settings)

    def _new_world(self, text: str, name: str, reset_settings: bool) -> "World":
        self.server.check()
        self.server.world = World(self.server, carla.Map(name, text))
        for waypoints, location in (self.server.lights_for or (lambda m: []))(self.server.world.map):
            self.server.world.actors.append(TrafficLight(next(self.server.ids), waypoints, location))
        if reset_settings:
            self.server.settings = carla.WorldSettings()
        return self.server.world

    def get_trafficmanager(self, client_connection: int = 8000) -> "TrafficManager":
        return TrafficManager(self.server)

    def apply_batch_sync(self, commands, do_tick: bool = False) -> list:
        self.server.check()
        for command in commands:
            self.server.destroyed.add(command.actor_id)
            self.server.log.append(("destroy", command.actor_id))
        return [SimpleNamespace(error="", actor_id=c.actor_id) for c in commands]

    def start_recorder(self, filename: str, additional_data: bool = False) -> str:
        self.server.log.append(("start_recorder", 0))
        return filename

    def stop_recorder(self) -> None:
        self.server.log.append(("stop_recorder", 0))


class World:  # carla.World
    def __init__(self, server: Server, carla_map):
        self.server, self.map = server, carla_map
        self.actors: list[Actor] = []

    def get_map(self):
        self.server.check()
        return self.map

    def get_settings(self):
        self.server.check()
        return _copy(self.server.settings)

    def apply_settings(self, world_settings) -> int:
        self.server.check()
        self.server.settings = _copy(world_settings)
        self.server.log.append(("settings", int(world_settings.synchronous_mode)))
        return self.server.ticks

    def get_blueprint_library(self) -> "BlueprintLibrary":
        return BlueprintLibrary()

    def set_weather(self, weather) -> None:
        self.server.check()

    def freeze_all_traffic_lights(self, frozen: bool) -> None:
        self.server.log.append(("freeze_lights", int(frozen)))

    def reset_all_traffic_lights(self) -> None:
        self.server.log.append(("reset_lights", 0))

    def set_pedestrians_cross_factor(self, percentage: float) -> None:
        self.server.log.append(("cross_factor", int(100 * percentage)))

    def try_spawn_actor(self, blueprint, transform, attach_to=None):
        self.server.check()
        actor = Actor(next(self.server.ids), blueprint, transform, self.server, attach_to)
        self.actors.append(actor)
        self.server.spawned.add(actor.id)
        self.server.log.append(("spawn", actor.id))
        return actor

    def spawn_actor(self, blueprint, transform, attach_to=None):
        return self.try_spawn_actor(blueprint, transform, attach_to)

    def get_actors(self) -> list:
        self.server.check()
        return [a for a in self.actors if a.id not in self.server.destroyed]

    def tick(self, seconds: float = 10.0) -> int:
        server = self.server
        server.check()
        server.ticks += 1
        if server.ticks == server.fail_at_tick:
            server.dead = server.gone
            raise server.failure
        for actor in self.get_actors():
            if actor.type_id.startswith("sensor.camera") and actor.callback is not None:
                width, height = (int(actor.attributes[k]) for k in ("image_size_x", "image_size_y"))
                actor.callback(SimpleNamespace(frame=server.ticks, width=width, height=height,
                                               raw_data=bytes(width * height * 4)))
        return server.ticks


class BlueprintLibrary:  # carla.BlueprintLibrary
    def find(self, id: str) -> "ActorBlueprint":  # noqa: A002 (CARLA's name)
        return ActorBlueprint(id)


class ActorBlueprint:  # carla.ActorBlueprint
    def __init__(self, id: str):  # noqa: A002
        self.id = id
        self.attributes: dict[str, str] = {}

    def has_attribute(self, id: str) -> bool:  # noqa: A002
        return True

    def set_attribute(self, id: str, value: str) -> None:  # noqa: A002
        self.attributes[id] = value


class Actor:  # carla.Actor, Vehicle, Walker, Sensor, WalkerAIController
    def __init__(self, actor_id: int, blueprint: ActorBlueprint, transform, server: Server, parent):
        self.id, self.type_id, self.server = actor_id, blueprint.id, server
        self.attributes = dict(blueprint.attributes)
        self.transform = transform if parent is None else parent.get_transform()
        self.bounding_box = carla.BoundingBox(carla.Location(0, 0, 0.75), carla.Vector3D(2.4, 1.0, 0.75))
        self.callback = None
        self.listening = False

    def get_transform(self):
        return self.transform

    def get_location(self):
        return self.transform.location

    def get_velocity(self):
        return carla.Vector3D()

    def get_acceleration(self):
        return carla.Vector3D()

    def get_angular_velocity(self):
        return carla.Vector3D()

    def get_control(self):
        return carla.VehicleControl()

    def get_physics_control(self):
        return SimpleNamespace(wheels=[])

    def apply_control(self, control) -> None:
        self.server.check()

    def set_autopilot(self, enabled: bool = True, port: int = 8000) -> None:
        pass

    def set_target_velocity(self, velocity) -> None:
        pass

    def listen(self, callback) -> None:
        self.callback, self.listening = callback, True

    def is_listening(self) -> bool:
        return self.listening

    def stop(self) -> None:
        self.listening = False
        self.server.log.append(("stop", self.id))

    def start(self) -> None:
        pass

    def go_to_location(self, destination) -> None:
        pass

    def set_max_speed(self, speed: float = 1.4) -> None:
        pass


class TrafficLight:  # carla.TrafficLight
    """A light of the world (not ours: never destroyed by the drive)."""

    type_id = "traffic.traffic_light"

    def __init__(self, actor_id: int, waypoints: list, location):
        self.id, self.waypoints = actor_id, waypoints
        self.transform = carla.Transform(location)
        self.state = carla.TrafficLightState.Green
        self.times: dict[str, float] = {}

    def get_stop_waypoints(self) -> list:
        return self.waypoints

    def get_transform(self):
        return self.transform

    def get_state(self):
        return self.state

    def set_state(self, state) -> None:
        self.state = state

    def set_green_time(self, green_time: float) -> None:
        self.times["green"] = green_time

    def set_yellow_time(self, yellow_time: float) -> None:
        self.times["yellow"] = yellow_time

    def set_red_time(self, red_time: float) -> None:
        self.times["red"] = red_time


class TrafficManager:  # carla.TrafficManager
    def __init__(self, server: Server):
        self.server = server

    def set_synchronous_mode(self, mode_switch: bool = True) -> None:
        self.server.check()
        self.server.tm_sync = mode_switch

    def set_random_device_seed(self, value: int) -> None:
        self.seed = value

    def set_desired_speed(self, actor, speed: float) -> None:
        pass

    def auto_lane_change(self, actor, enable: bool) -> None:
        pass

    def ignore_lights_percentage(self, actor, perc: float) -> None:
        pass

    def set_path(self, actor, path) -> None:
        pass

    def force_lane_change(self, actor, direction: bool) -> None:
        pass


# The carla class each double stands for: its methods must exist there (or on a base class).
STANDS_FOR = {Client: ("Client",), World: ("World",), BlueprintLibrary: ("BlueprintLibrary",),
              ActorBlueprint: ("ActorBlueprint",), TrafficManager: ("TrafficManager",),
              TrafficLight: ("TrafficLight",),
              Actor: ("Actor", "Vehicle", "Walker", "Sensor", "WalkerAIController")}

"""The CARLA backend: a scenario on a running CARLA server, behind the `Simulator` interface.

`reset` takes a server (sim/carla/connection.py), loads the scenario's town by name or builds
a world from its OpenDRIVE file, switches to synchronous mode with the stack's fixed step,
plans the route on the map the server reports (the same `RoadMap` and placement code as the
embedded simulator), spawns the ego, the rig's cameras, the collision and lane-invasion
sensors and the scenario's actors, and sets the traffic lights. `step` applies the command,
ticks the world once and reads every sensor's data for that very frame. Events come from the
same `EventMonitor` as on the embedded simulator, fed from CARLA's actor list, so that a
driving score means the same on both; collisions with the world's own geometry (poles, walls)
come from the collision sensor. `close` (also on an error or Ctrl-C) undoes everything.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import carla
import numpy as np

from stagepilot.core.camera import decode_frame, encode_frame
from stagepilot.core.carla_frame import (forward_of, to_world_xy, to_world_xyz, world_matrix, world_vector,
                                         world_yaw, world_yaw_rate)
from stagepilot.core.config import StackConfig
from stagepilot.core.maps import is_map_name, read_map_text
from stagepilot.core.messages import (CameraImage, Control, EgoState, Event, GroundTruth, ObjectTruth, Observation,
                                      Route)
from stagepilot.core.roadmap import MapError, RoadMap
from stagepilot.sim.carla.actors import ScenarioActors
from stagepilot.sim.carla.ground_truth import object_truth
from stagepilot.sim.carla.lights import bind_lights
from stagepilot.sim.carla.connection import CarlaError, ServerLease, connect, endpoints, version_note
from stagepilot.sim.carla.sensors import (EventSensor, SensorQueue, camera_blueprint, decode_depth, decode_rgb,
                                          decode_semantic, mount_transform, rig_specs)
from stagepilot.sim.carla.server import CarlaServer
from stagepilot.sim.carla.spawn import pick_blueprint, spawn_plan, spawn_with_retry
from stagepilot.sim.events import COLLISION_MIN_SPEED, COLLISION_REPEAT_S, EventMonitor
from stagepilot.sim.interface import Simulator
from stagepilot.sim.observe import _lane, _lights
from stagepilot.sim.scenario import Scenario
from stagepilot.sim.traffic import Agent
from stagepilot.sim.vehicle import VehicleParams

KIND_BY_PREFIX = (("vehicle.", "vehicle"), ("walker.pedestrian", "pedestrian"), ("static.prop", "static"))
WEATHER = {"clear_noon": "ClearNoon", "overcast": "CloudyNoon", "dusk": "ClearSunset", "fog": "SoftRainNoon",
           "night": "ClearNight"}
KERBS = ("static.sidewalk",)


class CarlaSimulator(Simulator):
    """A world on a CARLA server. `client_class` is carla.Client (a test passes a double)."""

    def __init__(self, config: StackConfig | None = None, render: bool = True, client_class=None):
        self.config = config or StackConfig()
        self.dt = self.config.sim.dt_s
        self.render_enabled = render
        # The follower that drives `collect` reads these (sim/follower.py): the config's vehicle.
        self.vehicle_params = VehicleParams(**self.config.vehicle.model_dump())
        self.client_class = client_class or carla.Client
        self._agents: list[Agent] = []  # the actors of the current tick (_events reads them)
        self.server: CarlaServer | None = None
        self.lease: ServerLease | None = None
        self.scenario: Scenario | None = None
        self.versions: dict = {}
        self.teardown_problems: list[str] = []

    # ------------------------------------------------------------ reset

    def reset(self, scenario: Scenario) -> Observation:
        self.close()
        self.scenario = scenario
        cfg = self.config.carla
        self.lease = ServerLease(endpoints(cfg), wait_s=None)  # parallel workers wait their turn
        endpoint = self.lease.__enter__()
        self.where = f"CARLA at {endpoint}"
        try:
            client, self.versions = connect(self.client_class, endpoint, cfg.timeout_s)
            note = version_note(self.versions, endpoint)
            if note:
                print(f"stagepilot: {note}", file=sys.stderr)
            self.server = CarlaServer(client, endpoint, cfg.timeout_s)
            self._open_map(scenario)
            self.server.synchronous(self.dt, scenario.seed)
            self._weather(scenario)
            return self._build(scenario)
        except BaseException:
            self.close()
            raise

    def _open_map(self, scenario: Scenario) -> None:
        """The scenario's town by name when the server has it, else a world from its .xodr."""
        server = self.server
        available = server.call("listing the server's maps", server.client.get_available_maps)
        towns = {path.rsplit("/", 1)[-1]: path for path in available}
        if is_map_name(scenario.map) and scenario.map in towns:
            world = server.load_town(scenario.map)
        elif scenario.map_path:
            world = server.load_opendrive(read_map_text(scenario.map_path), scenario.map_path)
        else:
            raise CarlaError(f"{self.where}: {scenario.source}: map {scenario.map}: the server has no such town "
                             f"(it has {', '.join(sorted(towns)) or 'none'}) and it is not on the map search path")
        carla_map = server.call("reading the map", world.get_map)
        name = carla_map.name.rsplit("/", 1)[-1]
        text = server.call("reading the map's OpenDRIVE", carla_map.to_opendrive)
        try:
            self.road_map = RoadMap(name, text, source=f"{self.where} map {name}")
        except MapError as exc:
            raise CarlaError(f"{self.where}: the server's map {name} cannot be used: {exc}") from None

    def _weather(self, scenario: Scenario) -> None:
        spec = scenario.weather
        preset = spec.preset if spec.preset != "random" else ("clear_noon", "overcast", "dusk")[scenario.seed % 3]
        self.weather_name = WEATHER[preset]
        weather = _weather_copy(getattr(carla.WeatherParameters, WEATHER[preset]))  # presets are shared objects
        if spec.fog_density is not None:
            weather.fog_density = min(100.0, spec.fog_density * 1000.0)  # [1/m] -> CARLA's 0..100
        if spec.sun_altitude_deg is not None:
            weather.sun_altitude_angle = spec.sun_altitude_deg
        self.server.call("setting the weather", self.server.world.set_weather, weather)

    def _build(self, scenario: Scenario) -> Observation:
        server, cfg = self.server, self.config
        self.rng = np.random.default_rng(scenario.seed)
        self.placement, plan = spawn_plan(self.road_map, scenario, cfg.carla.vehicle_blueprint, self.rng)
        self.route = self.placement.route
        self.route_message = Route(points=self.route.path.points, s=self.route.path.s,
                                   speed_limit=scenario.speed_limit)
        library = server.call("reading the blueprint library", server.world.get_blueprint_library)
        ego_spec = plan[0]
        blueprint = pick_blueprint(library, ego_spec)
        if blueprint.has_attribute("role_name"):
            blueprint.set_attribute("role_name", "hero")
        self.ego_actor = server.track(server.call("spawning the ego", spawn_with_retry, server.world,
                                                    self.road_map, ego_spec, blueprint, self.where))
        server.tick("placing the ego")  # its wheels' positions are known after a tick
        self._ego_geometry()
        self._sensors(library)
        self.actors = ScenarioActors(server, self.road_map, plan, self.where)
        self.lights = bind_lights(self.server, self.road_map, self.route.segment_keys, scenario.traffic_lights,
                                  self.config.traffic.traffic_lights)
        if cfg.carla.recorder:
            server.start_recorder(str(Path(f"stagepilot-{scenario.name}-{scenario.seed}.log")))
        self.t, self.frame, self._ended = 0.0, 0, False
        self.events: list[Event] = []
        self._world_hits: dict[object, float] = {}  # when each thing of the world was last hit [s]
        self.monitor = EventMonitor(self.road_map, self.route.path, self.lights)
        warm = server.tick("warming up the sensors")  # a new camera may skip its first tick
        for queue in self.queues.values():
            queue.drop_through(warm)
        self._server_frame = server.tick("ticking the first frame")
        return self._observe(self._events())

    def _ego_geometry(self) -> None:
        """The ego's box and where its rear axle sits in its own frame (from the wheels when the
        server gives them, else from the configured rear overhang)."""
        box = self.ego_actor.bounding_box
        self.ego_size = (2 * box.extent.x, 2 * box.extent.y, 2 * box.extent.z)
        self.ego_box_x = float(box.location.x)
        rear = self.ego_box_x - (box.extent.x - self.config.vehicle.rear_overhang_m)
        physics = self.server.call("reading the ego's physics", self.ego_actor.get_physics_control)
        wheels = list(getattr(physics, "wheels", []) or [])
        if len(wheels) == 4:  # wheel positions are world locations in cm; FL, FR, RL, RR
            transform = self.ego_actor.get_transform()
            xs = [forward_of(transform, w.position, scale=0.01) for w in wheels[2:]]
            if abs(float(np.mean(xs)) - self.ego_box_x) < box.extent.x:  # inside the body: believable
                rear = float(np.mean(xs))
        self.rear_axle_x = rear
        self.ground_z = float(box.location.z - box.extent.z)  # the ground under the wheels, actor frame
        self.max_steer_rad = math.radians(float(wheels[0].max_steer_angle)) if wheels else 0.61

    def _sensors(self, library) -> None:
        server, cfg = self.server, self.config
        self.specs = rig_specs(cfg.sim.cameras)
        self.queues: dict[tuple[str, str], SensorQueue] = {}
        kinds = (["rgb"] + (["semantic", "depth"] if cfg.sim.ground_truth else [])) if self.render_enabled else []
        for name, spec in self.specs.items():
            for kind in kinds:
                sensor = server.track(server.call(
                    f"spawning camera {name} ({kind})", server.world.spawn_actor, camera_blueprint(library, kind, spec.config),
                    mount_transform(spec.config, self.rear_axle_x, self.ground_z), self.ego_actor), "sensor")
                queue = self.queues[(name, kind)] = SensorQueue(f"{name}/{kind}")
                sensor.listen(queue.put)
        self.collisions = EventSensor("collision")
        self.invasions = EventSensor("lane_invasion")
        for sink, blueprint_id in ((self.collisions, "sensor.other.collision"),
                                   (self.invasions, "sensor.other.lane_invasion")):
            sensor = server.track(server.call(f"spawning the {sink.name} sensor", server.world.spawn_actor,
                                                library.find(blueprint_id), carla.Transform(), self.ego_actor), "sensor")
            sensor.listen(sink.put)

    @property
    def signal_heads(self):
        """The map's heads that have a CARLA light, where that light stands."""
        heads = {h.id: h for h in self.road_map.signal_heads}
        return tuple(replace(heads[light.id], position=light.position) for light in self.lights)

    # ------------------------------------------------------------ step

    def step(self, control: Control, render: bool = True) -> Observation:
        """One tick. render=False leaves this frame's images unread (the next read drops them)."""
        if self.server is None:
            raise RuntimeError("reset() the simulator with a scenario before step()")
        command = control.clipped()
        ego = self.ego_agent()
        self.actors.update(self.t, (ego.x, ego.y))
        self.server.call("sending the ego's command", self.ego_actor.apply_control, carla.VehicleControl(
            throttle=command.throttle, steer=command.steer, brake=command.brake, hand_brake=command.hand_brake,
            reverse=command.reverse))
        self._server_frame = self.server.tick(f"ticking frame {self.frame + 1}")
        self.t = round(self.t + self.dt, 9)
        self.frame += 1
        events = self._events()
        if self.t >= self.scenario.duration_s - 1e-9 or self.monitor.route_completed:
            self._ended = True
        return self._observe(events, render)

    def _events(self) -> list[Event]:
        for light in self.lights:
            light.read()
        agents = self._agents = self.agents()  # this tick's actors, for the ground truth too
        ego = self.ego_agent()
        events = self.monitor.update(self.t, ego, self._ego_front(), agents)
        known = {a.id for a in agents}
        ego_speed = ego.speed
        for hit in self.collisions.drain(self._server_frame):
            other = hit.other_actor
            if other is not None and other.id in known or ego_speed < COLLISION_MIN_SPEED:
                continue  # actors' contacts are the monitor's (same rules as the embedded simulator)
            what = other.type_id if other is not None else "static.unknown"
            if what in KERBS:
                continue  # riding onto a kerb is not a collision (Leaderboard)
            # The world's own meshes all come as actor 0 ("static.<tag>"): one per tag and place.
            key = other.id if other is not None and other.id else (what, round(ego.x / 5.0), round(ego.y / 5.0))
            t = max(0.0, round(self.t - (self._server_frame - int(hit.frame)) * self.dt, 9))  # its own frame's time
            last = self._world_hits.get(key)
            if last is not None and t - last < COLLISION_REPEAT_S:
                continue  # the sensor reports every frame of a contact: one collision per 5 s
            self._world_hits[key] = t
            events.append(Event(t, "collision", f"collision with static {what} at {ego_speed:.1f} m/s",
                                other.id if other is not None and other.id else None))
        for crossing in self.invasions.drain(self._server_frame):
            markings = ", ".join(sorted({str(m.type) for m in crossing.crossed_lane_markings}))
            t = max(0.0, round(self.t - (self._server_frame - int(crossing.frame)) * self.dt, 9))
            events.append(Event(t, "lane_invasion", f"crossed {markings}"))
        return events

    # ------------------------------------------------------------ state

    @property
    def done(self) -> bool:
        return self._ended

    def agents(self) -> list[Agent]:
        """Every vehicle, walker and prop on the server but the ego, from the actor list."""
        found = []
        self._box_z: dict[int, float] = {}
        self._tags: dict[int, tuple[int, ...]] = {}
        for actor in self.server.call("listing the actors", self.server.world.get_actors):
            kind = next((k for prefix, k in KIND_BY_PREFIX if actor.type_id.startswith(prefix)), None)
            if kind is None or actor.id == self.ego_actor.id:
                continue
            x, y, yaw, size = _box(actor)
            self._box_z[actor.id] = _box_z(actor)
            self._tags[actor.id] = tuple(int(t) for t in getattr(actor, "semantic_tags", ()) or ())
            vx, vy, _ = world_vector(actor.get_velocity())
            speed = vx * math.cos(yaw) + vy * math.sin(yaw)
            found.append(Agent(actor.id, kind, x, y, yaw, speed, size, (0, 0, 0)))
        return found

    def ego_agent(self) -> Agent:
        x, y, yaw, _ = _box(self.ego_actor)
        return Agent(self.ego_actor.id, "vehicle", x, y, yaw, self._ego_speed(), self.ego_size, (0, 0, 0))

    def _ego_speed(self) -> float:
        vx, vy, _ = world_vector(self.ego_actor.get_velocity())
        yaw = world_yaw(self.ego_actor.get_transform().rotation)
        return vx * math.cos(yaw) + vy * math.sin(yaw)

    def _ego_front(self) -> tuple[float, float]:
        x, y, yaw, size = _box(self.ego_actor)
        return x + size[0] / 2 * math.cos(yaw), y + size[0] / 2 * math.sin(yaw)

    def ego_state(self) -> EgoState:
        transform = self.ego_actor.get_transform()
        ox, oy = to_world_xy(transform.location)
        yaw = world_yaw(transform.rotation)
        vx, vy, _ = world_vector(self.ego_actor.get_velocity())
        ax, ay, _ = world_vector(self.ego_actor.get_acceleration())
        c, s = math.cos(yaw), math.sin(yaw)
        steer = float(self.ego_actor.get_control().steer)
        return EgoState(x=ox + self.rear_axle_x * c, y=oy + self.rear_axle_x * s, yaw=yaw,
                        speed=vx * c + vy * s, yaw_rate=world_yaw_rate(self.ego_actor.get_angular_velocity()),
                        accel=ax * c + ay * s, steer_angle=-steer * self.max_steer_rad,  # CARLA's right is our -yaw
                        lateral_speed=-vx * s + vy * c)

    def light_states(self) -> dict[int, str]:
        return {light.id: light.current for light in self.lights}

    def metadata(self) -> dict[str, str]:
        """What a recording says about the server behind it."""
        endpoint = self.server.endpoint if self.server else None
        return {"simulator": "carla", "server": str(endpoint), "server_version": self.versions.get("server", ""),
                "client_version": self.versions.get("client", ""), "map": self.road_map.name,
                "carla_recorder_file": (self.server.recorder_file or "") if self.server else ""}

    # ------------------------------------------------------------ observation

    def _observe(self, events: list[Event], render: bool = True) -> Observation:
        self.events.extend(events)
        ego = self.ego_state()
        cameras, semantic, depth = {}, {}, {}
        frame_where = f"{self.where}: frame {self.frame} (server frame {self._server_frame})"
        if not render:  # nobody wants this frame's images: forget them now, not at the next read
            for queue in self.queues.values():
                queue.drop_through(self._server_frame)
        for (name, kind), queue in (self.queues.items() if render else ()):
            image = queue.take(self._server_frame, self.config.carla.timeout_s, frame_where)
            spec = self.specs[name]
            if kind == "rgb":
                link = spec.config
                encoded = encode_frame(decode_rgb(image.raw_data, image.width, image.height), link.stream,
                                       link.jpeg_quality)
                cameras[name] = CameraImage(name=name, rgb=decode_frame(encoded), K=spec.K, T_ego_cam=spec.T_ego_cam,
                                            encoded=encoded, encoding=link.stream)
            elif kind == "semantic":
                semantic[name] = decode_semantic(image.raw_data, image.width, image.height)
            else:
                depth[name] = decode_depth(image.raw_data, image.width, image.height)
        truth = None
        if self.config.sim.ground_truth:
            truth = GroundTruth(objects=self._objects(ego, semantic, depth), semantic=semantic, depth=depth,
                                traffic_lights=_lights(self), lane=_lane(self))
        return Observation(t=self.t, frame=self.frame, cameras=cameras, ego=ego, route=self.route_message,
                           route_progress=self.monitor.progress, events=tuple(events), ground_truth=truth)

    def _objects(self, ego: EgoState, semantic: dict, depth: dict) -> tuple[ObjectTruth, ...]:
        """Ground truth of the actors near the ego and the lights (sim/carla/ground_truth.py)."""
        ego_z = to_world_xyz(self.ego_actor.get_transform().location)[2] + self.ground_z
        T_world_ego = world_matrix(self.ego_actor.get_transform())  # noqa: N806
        T_world_ego[:3, 3] += T_world_ego[:3, 0] * self.rear_axle_x + T_world_ego[:3, 2] * self.ground_z
        # self._agents: read by _events this tick
        return object_truth(self._agents, self._box_z, self._tags, self.lights, ego, ego_z, T_world_ego,
                            self.specs, semantic, depth)

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        """Undo everything on the server (settings, actors, recorder) and free the server."""
        if self.server is not None:
            self.teardown_problems = self.server.close()
            for problem in self.teardown_problems:
                print(f"stagepilot: {problem}", file=sys.stderr)
            self.server = None
        if self.lease is not None:
            self.lease.release()
            self.lease = None


def _weather_copy(preset) -> "carla.WeatherParameters":
    weather = carla.WeatherParameters()
    for name in dir(preset):
        value = getattr(preset, name)
        if not name.startswith("_") and isinstance(value, float):
            setattr(weather, name, value)
    return weather


def _box_centre(actor) -> np.ndarray:
    """(3,) world-frame centre of an actor's bounding box [m]. (carla.Transform.transform works
    on the point it is given in place: the matrix leaves the actor's box alone.)"""
    box = actor.bounding_box.location
    local = np.array([box.x, box.y, box.z, 1.0])
    centre = np.asarray(actor.get_transform().get_matrix(), float) @ local
    return np.array(to_world_xyz(carla.Location(*(float(v) for v in centre[:3]))))


def _box_z(actor) -> float:
    """[m] height of the centre of an actor's bounding box."""
    return float(_box_centre(actor)[2])


def _box(actor) -> tuple[float, float, float, tuple[float, float, float]]:
    """(x, y, yaw, (length, width, height)) of an actor's bounding box, world frame."""
    box = actor.bounding_box
    x, y, _ = _box_centre(actor)
    return float(x), float(y), world_yaw(actor.get_transform().rotation), (2 * box.extent.x, 2 * box.extent.y,
                                                                           2 * box.extent.z)

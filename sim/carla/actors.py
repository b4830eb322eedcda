"""The scenario's actors on a CARLA server, and what drives them each tick.

Vehicles drive on the Traffic Manager (its desired speed, obeying lights or not, along the
route to their goal when they have one); their scripted behaviours (brake, stop, go,
set_speed, cut_in) take over or instruct it when their trigger fires, as on the embedded
simulator. Pedestrians walk their scripted path (WalkerControl towards the next point) or,
with `controller: ai`, go to its last point on the server's navigation mesh through a walker
AI controller. Props and parked vehicles stand still. Behaviour differences from the
embedded simulator are listed in docs/carla.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import carla

from stagepilot.core.carla_frame import to_carla_location, to_carla_vector, to_world_xy
from stagepilot.sim.carla.server import CarlaServer
from stagepilot.sim.carla.spawn import SpawnSpec, ground_z, pick_blueprint, spawn_with_retry
from stagepilot.sim.scenario import Behaviour

CUT_IN_GRACE_S = 2.0  # [s] past the behaviour's duration that a forced lane change is still asked for
MAX_BRAKE_DECEL = 8.0  # [m/s^2] a full brake pedal on CARLA's cars, roughly
WALK_ARRIVED_M = 0.5


@dataclass
class Npc:
    spec: SpawnSpec
    actor: object
    speed: float  # [m/s] desired
    behaviours: list[Behaviour] = field(default_factory=list)
    braking: float | None = None  # [m/s^2] a scripted brake holds the car (off the Traffic Manager)
    cut_in: tuple[bool, float, int] | None = None  # (to the right, until t [s], from lane id) while pending


@dataclass
class Walker:
    spec: SpawnSpec
    actor: object
    controller: object | None = None
    started: bool = False
    next_point: int = 1


class ScenarioActors:
    """Spawns the plan's non-ego actors and runs their behaviours."""

    def __init__(self, server: CarlaServer, road_map, plan: list[SpawnSpec], where: str):
        self.server = server
        self.road_map = road_map
        self.tm = server.traffic_manager
        self.npcs: list[Npc] = []
        self.walkers: list[Walker] = []
        world = server.world
        library = server.call("reading the blueprint library", world.get_blueprint_library)
        if any(s.role == "pedestrian" and s.actor.controller == "ai" for s in plan):
            # AI walkers keep to crosswalks unless allowed to cross anywhere (set before they spawn)
            server.call("letting AI walkers cross the road", world.set_pedestrians_cross_factor, 1.0)
        for spec in plan:
            if spec.role == "ego":
                continue
            blueprint = pick_blueprint(library, spec)
            _color(blueprint, spec)
            if spec.role == "pedestrian" and blueprint.has_attribute("is_invincible"):
                blueprint.set_attribute("is_invincible", "false")  # a hit walker is a collision
            actor = server.track(server.call(f"spawning {spec.key}", spawn_with_retry, world, road_map, spec,
                                               blueprint, where))
            if spec.role == "vehicle":
                self._add_vehicle(spec, actor)
            elif spec.role == "pedestrian":
                self.walkers.append(Walker(spec, actor))
            elif spec.role == "parked":  # props need nothing more: the server tracks every actor for teardown
                actor.apply_control(carla.VehicleControl(hand_brake=True, brake=1.0))
        if any(w.spec.actor is not None and w.spec.actor.controller == "ai" for w in self.walkers):
            self._add_controllers(library)

    def _add_vehicle(self, spec: SpawnSpec, actor) -> None:
        scripted = spec.actor
        speed = scripted.speed if scripted is not None else 8.0
        npc = Npc(spec, actor, speed, sorted(scripted.behaviours, key=_trigger_order) if scripted else [])
        port = self.server.endpoint.tm_port
        actor.set_autopilot(True, port)
        self.tm.set_desired_speed(actor, speed * 3.6)  # the Traffic Manager speaks km/h
        self.tm.auto_lane_change(actor, False)
        self.tm.ignore_lights_percentage(actor, 0.0 if scripted is None or scripted.obey_traffic_lights else 100.0)
        if spec.route:
            self.tm.set_path(actor, [to_carla_location(x, y, ground_z(self.road_map, x, y)) for x, y in spec.route])
        initial = scripted.initial_speed if scripted is not None and scripted.initial_speed is not None else speed
        if initial > 0:
            actor.set_target_velocity(to_carla_vector(initial * math.cos(spec.yaw), initial * math.sin(spec.yaw)))
        self.npcs.append(npc)

    def _add_controllers(self, library) -> None:
        """AI controllers for `controller: ai` walkers (they need one world tick first)."""
        self.server.tick("placing the walkers before their AI controllers")
        blueprint = library.find("controller.ai.walker")
        for walker in self.walkers:
            if walker.spec.actor.controller != "ai":
                continue
            controller = self.server.call(f"spawning the AI controller of {walker.spec.key}",
                                           self.server.world.spawn_actor, blueprint, carla.Transform(), walker.actor)
            walker.controller = self.server.track(controller, "controller")

    # ------------------------------------------------------------ each tick

    def update(self, t: float, ego_xy: tuple[float, float]) -> None:
        """Fire the behaviours whose trigger has come and move the walkers, before a tick."""
        for npc in self.npcs:
            for behaviour in list(npc.behaviours):
                at_t = behaviour.at_t is not None and t >= behaviour.at_t - 1e-9
                near = behaviour.ego_within_m is not None and _distance(npc.actor, ego_xy) <= behaviour.ego_within_m
                if at_t or near:
                    self._fire(npc, behaviour, t)
                    npc.behaviours.remove(behaviour)
            if npc.braking is not None:
                npc.actor.apply_control(carla.VehicleControl(throttle=0.0, brake=min(1.0, npc.braking / MAX_BRAKE_DECEL)))
            if npc.cut_in is not None:
                self._cut_in(npc, t)
        for walker in self.walkers:
            self._walk(walker, t, ego_xy)

    def _fire(self, npc: Npc, b: Behaviour, t: float) -> None:
        port = self.server.endpoint.tm_port
        if b.action in ("brake", "stop"):
            npc.actor.set_autopilot(False, port)
            npc.braking = b.decel if b.action == "brake" else 3.0
        elif b.action == "go":
            npc.braking = None
            npc.actor.set_autopilot(True, port)
            self.tm.set_desired_speed(npc.actor, (b.speed if b.speed is not None else npc.speed) * 3.6)
        elif b.action == "set_speed":
            self.tm.set_desired_speed(npc.actor, float(b.speed) * 3.6)
        elif b.action == "cut_in":
            npc.cut_in = (b.side == "right", t + b.duration_s + CUT_IN_GRACE_S, self._lane_id(npc.actor))

    def _cut_in(self, npc: Npc, t: float) -> None:
        """The Traffic Manager takes a forced lane change as a one-shot request that it may
        drop (in a junction, too soon after another change): ask again each tick until the car
        is on another lane, or the behaviour's time is up."""
        right, until, lane = npc.cut_in
        if t > until or self._lane_id(npc.actor) != lane:
            npc.cut_in = None
            return
        self.tm.force_lane_change(npc.actor, right)  # True: the lane on its right

    def _lane_id(self, actor) -> int | None:
        lane = self.road_map.waypoint(*to_world_xy(actor.get_location()), project=True)
        return None if lane is None else lane.lane_id

    def _walk(self, walker: Walker, t: float, ego_xy: tuple[float, float]) -> None:
        scripted = walker.spec.actor
        if not walker.started:
            timed = scripted.start_t is not None and t >= scripted.start_t - 1e-9
            near = scripted.ego_within_m is not None and _distance(walker.actor, ego_xy) <= scripted.ego_within_m
            walker.started = timed or near or (scripted.start_t is None and scripted.ego_within_m is None)
            if not walker.started:
                return
            if walker.controller is not None:
                walker.controller.start()
                walker.controller.go_to_location(to_carla_location(*walker.spec.path[-1]))
                walker.controller.set_max_speed(scripted.speed)
                return
        if walker.controller is not None:
            return
        path = walker.spec.path
        x, y = to_world_xy(walker.actor.get_location())
        while walker.next_point < len(path):
            tx, ty = path[walker.next_point]
            norm = math.hypot(tx - x, ty - y)
            if norm > WALK_ARRIVED_M:
                walker.actor.apply_control(carla.WalkerControl(
                    direction=to_carla_vector((tx - x) / norm, (ty - y) / norm), speed=scripted.speed))
                return
            walker.next_point += 1
        walker.actor.apply_control(carla.WalkerControl(speed=0.0))


def _distance(actor, xy: tuple[float, float]) -> float:
    x, y = to_world_xy(actor.get_location())
    return math.hypot(x - xy[0], y - xy[1])


def _color(blueprint, spec: SpawnSpec) -> None:
    rgb = getattr(spec.actor, "color_rgb", None)
    if rgb is not None and blueprint.has_attribute("color"):
        blueprint.set_attribute("color", ",".join(str(int(c)) for c in rgb))


def _trigger_order(b: Behaviour) -> tuple:
    return (b.at_t if b.at_t is not None else math.inf, b.ego_within_m or 0.0)

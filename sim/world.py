"""The embedded simulator: a fixed-step world on an OpenDRIVE map, with no server and no GPU.

Speaks CARLA's language: OpenDRIVE maps, CARLA semantic tags, VehicleControl semantics.
The same scenario and seed give byte-identical states and images on one machine: every
random draw comes from generators seeded by the scenario, in a fixed order.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from stagepilot.core.config import ConfigError, StackConfig
from stagepilot.core.maps import find_map
from stagepilot.core.messages import Control, Event, Observation, Route
from stagepilot.core.paths import Polyline
from stagepilot.core.roadmap import MapError, RoadMap
from stagepilot.sim.events import EventMonitor
from stagepilot.sim.interface import Simulator
from stagepilot.sim.placement import Placement
from stagepilot.sim.scenario import PedestrianActor, Pose, Scenario, StaticActor, VehicleActor
from stagepilot.sim.sensors import SensorSuite
from stagepilot.sim.traffic import (
    PEDESTRIAN_SIZE,
    STATIC_SIZE,
    VEHICLE_SIZE,
    Agent,
    NpcVehicle,
    Pedestrian,
    TrafficLight,
    advance_npc,
    build_traffic_lights,
    extend_random_path,
    fire_behaviour,
    npc_accel,
    set_path_rules,
)
from stagepilot.sim.vehicle import DynamicBicycle, VehicleParams

EGO_ID = 1
CAR_COLORS = [(180, 20, 20), (20, 60, 170), (230, 230, 230), (30, 30, 30), (120, 120, 125),
              (200, 160, 20), (20, 120, 60), (140, 30, 110), (90, 60, 40), (60, 150, 200)]


@lru_cache(maxsize=8)
def load_road_map(path: str) -> RoadMap:
    return RoadMap.load(path)


class EmbeddedSimulator(Simulator):
    """The default world. Build it with a stack config, then `reset(scenario)` and `step`."""

    def __init__(self, config: StackConfig | None = None, render: bool = True):
        self.config = config or StackConfig()
        self.dt = self.config.sim.dt_s
        self.render_enabled = render
        try:
            self.vehicle_params = VehicleParams(**self.config.vehicle.model_dump())
        except ValueError as exc:
            raise ConfigError(f"vehicle: {exc}") from None
        self.scenario: Scenario | None = None

    # ------------------------------------------------------------ reset

    def reset(self, scenario: Scenario) -> Observation:
        self.scenario = scenario
        try:
            # A scenario built in memory names its map; load_scenario has resolved the others.
            self.road_map = load_road_map(scenario.map_path or str(find_map(scenario.map)))
        except MapError as exc:
            raise ConfigError(f"{scenario.source}: map: {exc}") from None
        self.rng = np.random.default_rng(scenario.seed)
        self.t = 0.0
        self.frame = 0
        self._ended = False
        self.placement = Placement(self.road_map, scenario)
        self.route = self.placement.route
        # One Route message for the whole drive: consumers cache what they derive from it.
        self.route_message = Route(points=self.route.path.points, s=self.route.path.s,
                                   speed_limit=scenario.speed_limit)
        self.lights = self._build_lights(scenario)
        self.ego = self._build_ego(scenario)
        self.npcs: list[NpcVehicle] = []
        self.pedestrians: list[Pedestrian] = []
        self.statics: list[Agent] = []
        self._next_id = 100
        for index, actor in enumerate(scenario.actors):
            self._add_actor(actor, f"actors.{index}")
        self._add_random_vehicles(scenario.random_vehicles)
        self.monitor = EventMonitor(self.road_map, self.route.path, self.lights)
        self.sensors = SensorSuite(self.config, self.road_map, scenario, self.rng) if self.render_enabled else None
        self.events: list[Event] = []
        return self._observe(self.monitor.update(self.t, self.ego_agent(), self._ego_front(), self.agents()))

    def _fail(self, key: str, problem: str) -> ConfigError:
        return self.placement.fail(key, problem)

    def _resolve(self, pose: Pose, key: str, on_road: bool = True) -> tuple[float, float, float]:
        return self.placement.resolve(pose, key, on_road)

    def _build_lights(self, scenario: Scenario) -> list[TrafficLight]:
        if not scenario.traffic_lights.enabled:
            return []
        lights = build_traffic_lights(self.road_map, self.config.traffic.traffic_lights)
        offsets = {j: float(self.rng.uniform(0, 30)) for j in sorted({l.stop_line.junction_id for l in lights})}
        spec = scenario.traffic_lights
        first = self._first_light_on_route(lights)
        if first is not None and spec.first_light != "auto":
            offsets[first.stop_line.junction_id] = _offset_for(first, spec.first_light, spec.first_light_remaining_s)
        for light in lights:
            light.offset_s = offsets[light.stop_line.junction_id]
        return lights

    def _first_light_on_route(self, lights: list[TrafficLight]) -> TrafficLight | None:
        by_lane = {key: light for light in lights for key in light.stop_line.lane_keys}
        for key in self.route.segment_keys:
            if key in by_lane:
                return by_lane[key]
        return None

    def _build_ego(self, scenario: Scenario) -> DynamicBicycle:
        x, y, yaw = self._resolve(scenario.ego.start, "ego.start")
        # The scenario gives the body centre; the model's pose is the rear axle.
        back = self.vehicle_params.length_m / 2 - self.vehicle_params.rear_overhang_m
        return DynamicBicycle(
            self.vehicle_params, x - back * math.cos(yaw), y - back * math.sin(yaw), yaw,
            speed=scenario.ego.initial_speed,
        )

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _color(self, given) -> tuple[int, int, int]:
        if given is not None:
            return tuple(given)
        return CAR_COLORS[int(self.rng.integers(len(CAR_COLORS)))]

    def _add_actor(self, actor, key: str) -> None:
        if isinstance(actor, VehicleActor):
            x, y, yaw = self._resolve(actor.start, f"{key}.start")
            goal = None if actor.goal is None else self._resolve(actor.goal, f"{key}.goal")[:2]
            self._spawn_npc(x, y, actor.speed, actor.initial_speed, goal, actor.behaviours,
                            actor.obey_traffic_lights, self._color(actor.color_rgb), key)
        elif isinstance(actor, PedestrianActor):
            pts = [self._resolve(p, f"{key}.path.{i}", on_road=False)[:2] for i, p in enumerate(actor.path)]
            path = Polyline(np.array(pts))
            agent = Agent(self._new_id(), "pedestrian", pts[0][0], pts[0][1], float(path.yaw[0]), 0.0,
                          PEDESTRIAN_SIZE, self._color(None))
            self.pedestrians.append(Pedestrian(agent, path, actor.speed, actor.start_t, actor.ego_within_m))
        elif isinstance(actor, StaticActor):
            x, y, yaw = self._resolve(actor.pose, f"{key}.pose", on_road=False)
            parked = actor.kind in ("parked_car", "parked_truck")
            kind = "vehicle" if parked else "static"
            color = self._color(actor.color_rgb) if parked else (actor.color_rgb or (255, 110, 0))
            agent = Agent(self._new_id(), kind, x, y, yaw, 0.0, STATIC_SIZE[actor.kind], tuple(color))
            self.statics.append(agent)

    def _spawn_npc(self, x, y, speed, initial_speed, goal, behaviours, obey, color, key) -> None:
        found = self.road_map.segment_at(x, y)
        if found is None:
            raise self._fail(key, f"({x:.1f}, {y:.1f}) is not on a driving lane")
        segment, s = found
        if goal is not None:
            try:
                route = self.road_map.route([(x, y), goal])
            except MapError as exc:
                raise self._fail(key, str(exc)) from None
            path, keys, s = route.path, list(route.segment_keys), 0.0
        else:
            path, keys = segment.path, [segment.key]
        _, offset = path.project(x, y, s_hint=s)
        px, py, yaw = (float(v) for v in path.interpolate(s))
        agent = Agent(self._new_id(), "vehicle", px, py, yaw,
                      speed if initial_speed is None else initial_speed, VEHICLE_SIZE, color)
        npc = NpcVehicle(agent, path, keys, s, speed, sorted(behaviours, key=_trigger_order), obey,
                         random_route=goal is None, lateral=offset, lateral_target=offset,
                         initial_desired=speed)
        extend_random_path(npc, self.road_map, self.rng, self.lights)
        set_path_rules(npc, self.road_map, self.lights)
        advance_npc(npc, 0.0, 0.0)
        self.npcs.append(npc)

    def _add_random_vehicles(self, count: int) -> None:
        if count == 0:
            return
        segments = [s for s in self.road_map.segments.values() if not s.is_junction and s.path.length > 20]
        ego = self.ego_agent()
        placed = 0
        for _ in range(count * 20):
            if placed == count:
                break
            segment = segments[int(self.rng.integers(len(segments)))]
            s = float(self.rng.uniform(5, segment.path.length - 5))
            x, y, _ = (float(v) for v in segment.path.interpolate(s))
            if any(math.hypot(a.x - x, a.y - y) < 12 for a in [ego, *self.agents()]):
                continue
            self._spawn_npc(x, y, float(self.rng.uniform(6, 11)), None, None, [], True,
                            self._color(None), "random_vehicles")
            placed += 1

    # ------------------------------------------------------------ step

    def step(self, control: Control, render: bool = True) -> Observation:
        """One fixed step. render=False skips the cameras for this step (ground truth of
        objects, lights and lanes is still there), e.g. between the frames a tool keeps."""
        if self.scenario is None:
            raise RuntimeError("reset() the simulator with a scenario before step()")
        self.ego.step(control, self.dt)
        self._step_traffic()
        self.t = round(self.t + self.dt, 9)
        self.frame += 1
        events = self.monitor.update(self.t, self.ego_agent(), self._ego_front(), self.agents())
        if self.t >= self.scenario.duration_s - 1e-9 or self.monitor.route_completed:
            self._ended = True
        return self._observe(events, render)

    def _step_traffic(self) -> None:
        ego = self.ego_agent()
        agents = [ego, *self.agents()]
        for npc in self.npcs:
            for behaviour in list(npc.behaviours):
                fire_at_t = behaviour.at_t is not None and self.t >= behaviour.at_t - 1e-9
                near = behaviour.ego_within_m is not None and math.hypot(
                    ego.x - npc.agent.x, ego.y - npc.agent.y) <= behaviour.ego_within_m
                if fire_at_t or near:
                    fire_behaviour(npc, behaviour, self.config.traffic.idm, npc.initial_desired)
                    npc.behaviours.remove(behaviour)
        # All accelerations from the same snapshot, then integrate: order-independent.
        accels = [npc_accel(npc, agents, self.t, self.config.traffic.idm) for npc in self.npcs]
        for npc, accel in zip(self.npcs, accels):
            advance_npc(npc, accel, self.dt)
            extend_random_path(npc, self.road_map, self.rng, self.lights)
        for ped in self.pedestrians:
            self._step_pedestrian(ped, ego)

    def _step_pedestrian(self, ped: Pedestrian, ego: Agent) -> None:
        if not ped.started:
            timed = ped.start_t is not None and self.t >= ped.start_t - 1e-9
            near = ped.ego_within_m is not None and math.hypot(ego.x - ped.agent.x, ego.y - ped.agent.y) <= ped.ego_within_m
            untriggered = ped.start_t is None and ped.ego_within_m is None
            ped.started = timed or near or untriggered
        if not ped.started or ped.s >= ped.path.length:
            ped.agent.speed = 0.0
            return
        ped.s = min(ped.s + ped.walk_speed * self.dt, ped.path.length)
        x, y, yaw = (float(v) for v in ped.path.interpolate(ped.s))
        ped.agent.x, ped.agent.y, ped.agent.yaw = x, y, yaw
        ped.agent.speed = ped.walk_speed if ped.s < ped.path.length else 0.0

    # ------------------------------------------------------------ state

    @property
    def done(self) -> bool:
        return self._ended

    def agents(self) -> list[Agent]:
        """Every actor but the ego, in a fixed order."""
        return [n.agent for n in self.npcs] + [p.agent for p in self.pedestrians] + self.statics

    def ego_agent(self) -> Agent:
        """The ego as an Agent whose pose is its body centre."""
        state = self.ego.state
        p = self.vehicle_params
        forward = p.length_m / 2 - p.rear_overhang_m
        return Agent(EGO_ID, "vehicle", state.x + forward * math.cos(state.yaw),
                     state.y + forward * math.sin(state.yaw), state.yaw, state.speed,
                     (p.length_m, p.width_m, p.height_m), (0, 0, 0))

    def _ego_front(self) -> tuple[float, float]:
        state = self.ego.state
        reach = self.vehicle_params.length_m - self.vehicle_params.rear_overhang_m
        return state.x + reach * math.cos(state.yaw), state.y + reach * math.sin(state.yaw)

    @property
    def signal_heads(self):
        """The map's signal heads that have a light in this world (none when the scenario turns
        the lights off): what the stack's map says is signalised."""
        ids = {light.id for light in self.lights}
        return tuple(head for head in self.road_map.signal_heads if head.id in ids)

    def light_states(self) -> dict[int, str]:
        return {light.id: light.state(self.t) for light in self.lights}

    def _observe(self, events: list[Event], render: bool = True) -> Observation:
        from stagepilot.sim.observe import build_observation

        self.events.extend(events)
        return build_observation(self, tuple(events), render=render)


def _trigger_order(b) -> tuple:
    return (b.at_t if b.at_t is not None else math.inf, b.ego_within_m or 0.0)


def _offset_for(light: TrafficLight, state: str, remaining: float | None) -> float:
    """A junction cycle offset that puts `light` in `state` at t = 0 with `remaining` s left."""
    timing = light.timing
    half = timing.green_s + timing.yellow_s + timing.all_red_s
    start = {"green": 0.0, "yellow": timing.green_s, "red": timing.green_s + timing.yellow_s}[state]
    length = {"green": timing.green_s, "yellow": timing.yellow_s, "red": timing.all_red_s + half}[state]
    remaining = length / 2 if remaining is None else min(remaining, length)
    phase = start + length - remaining
    return (phase + light.group * half) % light.cycle_s

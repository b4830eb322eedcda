"""Traffic of the embedded simulator: IDM vehicles on lanes, pedestrians, obstacles, lights.

NPC vehicles move along a lane path (a Polyline over road-graph segments) with the
Intelligent Driver Model (REFERENCE.md), treating the nearest object in their lane and a red
light's stop line as leaders. Scripted behaviours (brake, stop, go, cut in, set speed) fire at
a sim time or when the ego comes within a distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stagepilot.core.config import IdmConfig, TrafficLightConfig
from stagepilot.core.lanes import StopLine
from stagepilot.core.paths import Polyline
from stagepilot.core.roadmap import RoadMap
from stagepilot.sim.scenario import Behaviour

VEHICLE_SIZE = (4.5, 1.85, 1.5)  # [m] length, width, height of an NPC car
PEDESTRIAN_SIZE = (0.5, 0.6, 1.75)
STATIC_SIZE = {"parked_car": (4.5, 1.85, 1.5), "parked_truck": (8.0, 2.5, 3.2), "cone": (0.4, 0.4, 0.7),
               "barrier": (0.4, 2.5, 1.0)}


@dataclass
class Agent:
    """Anything with a footprint: the common state read by events, IDM and the renderer."""

    id: int
    kind: str  # vehicle | pedestrian | static
    x: float
    y: float
    yaw: float
    speed: float
    size: tuple[float, float, float]
    color: tuple[int, int, int]
    active: bool = True  # False: not in the world (a pedestrian before it starts walking)

    @property
    def velocity(self) -> tuple[float, float]:
        return self.speed * math.cos(self.yaw), self.speed * math.sin(self.yaw)

    def corners(self) -> np.ndarray:
        """(4, 2) footprint corners in the world frame [m]."""
        half_l, half_w = self.size[0] / 2, self.size[1] / 2
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        local = np.array([[half_l, half_w], [half_l, -half_w], [-half_l, -half_w], [-half_l, half_w]])
        return local @ np.array([[c, s], [-s, c]]) + np.array([self.x, self.y])


def idm_accel(cfg: IdmConfig, speed: float, desired: float, gap: float | None, closing: float) -> float:
    """IDM acceleration [m/s^2]; gap [m] to the leader's rear (None: free road)."""
    desired = max(desired, 0.1)
    free = 1.0 - (speed / desired) ** cfg.delta
    if gap is None:
        return cfg.max_accel * free
    s_star = cfg.min_gap_m + max(
        0.0, speed * cfg.time_headway_s + speed * closing / (2 * math.sqrt(cfg.max_accel * cfg.comfortable_decel))
    )
    return cfg.max_accel * (free - (s_star / max(gap, 0.1)) ** 2)


@dataclass
class TrafficLight:
    """A signal head for one junction approach. Cycles: green, yellow, all red, then waits
    while the other phase group runs."""

    id: int
    stop_line: StopLine
    group: int  # 0 or 1: approaches in one group are green together
    offset_s: float  # shifts the junction's cycle
    timing: TrafficLightConfig
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)  # housing centre [m]
    facing: float = 0.0  # [rad] direction its lamps face

    @property
    def cycle_s(self) -> float:
        t = self.timing
        return 2 * (t.green_s + t.yellow_s + t.all_red_s)

    def state(self, t: float) -> str:
        timing = self.timing
        half = timing.green_s + timing.yellow_s + timing.all_red_s
        phase = (t + self.offset_s - self.group * half) % self.cycle_s
        if phase < timing.green_s:
            return "green"
        if phase < timing.green_s + timing.yellow_s:
            return "yellow"
        return "red"

    def time_to_change(self, t: float) -> float:
        """Seconds until the state changes [s]."""
        step = 0.05
        state, tau = self.state(t), 0.0
        while self.state(t + tau) == state and tau < self.cycle_s:
            tau += step
        return tau


def build_traffic_lights(road_map: RoadMap, timing: TrafficLightConfig) -> list[TrafficLight]:
    """One light per signalised junction approach, where the map's signal head stands
    (core/signals.py); crossing streams are never green together."""
    return [TrafficLight(id=head.id, stop_line=head.stop_line, group=head.group, offset_s=0.0, timing=timing,
                         position=head.position, facing=head.facing) for head in road_map.signal_heads]


@dataclass
class Stop:
    """A point along an NPC path where a light may stop it."""

    s: float  # [m] along the NPC path
    light: TrafficLight


@dataclass
class NpcVehicle:
    agent: Agent
    path: Polyline
    keys: list[tuple[int, int, int]]  # lane segments of the path, in order
    s: float
    desired_speed: float
    behaviours: list[Behaviour]
    obey_lights: bool
    random_route: bool
    initial_desired: float = 0.0  # [m/s] restored by 'go'
    stops: list[Stop] = field(default_factory=list)
    lateral: float = 0.0  # [m] offset from the lane centre, positive left
    lateral_target: float = 0.0
    lateral_rate: float = 0.0  # [m/s]
    forced_decel: float | None = None  # active 'brake' behaviour [m/s^2]
    held: bool = False  # 'stop' behaviour: stay stopped until 'go'
    dead_end: bool = False  # a random route that reached a lane with no successor
    turns: list[LeftTurn] = field(default_factory=list)  # where it must give way to oncoming traffic


@dataclass(frozen=True)
class LeftTurn:
    """A junction connector along an NPC path that turns left, across the oncoming lanes."""

    entry_s: float  # [m] along the NPC path where it enters the junction
    centre: tuple[float, float]  # the connector's midpoint: where it crosses the oncoming lanes
    heading: float  # [rad] the NPC's heading where it enters


@dataclass
class Pedestrian:
    agent: Agent
    path: Polyline
    walk_speed: float
    start_t: float | None
    ego_within_m: float | None
    s: float = 0.0
    started: bool = False


def light_stops(keys, path: Polyline, road_map: RoadMap, lights: list[TrafficLight]) -> list[Stop]:
    """Stop positions along a path for each light that governs one of its lane segments."""
    by_lane = {key: light for light in lights for key in light.stop_line.lane_keys}
    stops = []
    for key in keys:
        if key in by_lane:
            light = by_lane[key]
            cx, cy = light.stop_line.center
            s, offset = path.project(cx, cy)
            if abs(offset) < 8.0:
                stops.append(Stop(s=s, light=light))
    return stops


def left_turns(keys, path: Polyline, road_map: RoadMap) -> list[LeftTurn]:
    """The junction connectors of a path that turn left by more than LEFT_TURN_RAD."""
    turns = []
    for key in keys:
        segment = road_map.segments[key]
        if not segment.is_junction or segment.path.length < 2.0:
            continue
        x0, y0, yaw0 = (float(v) for v in segment.path.interpolate(0.0))
        _, _, yaw1 = (float(v) for v in segment.path.interpolate(segment.path.length))
        if math.remainder(yaw1 - yaw0, math.tau) < LEFT_TURN_RAD:
            continue
        entry_s, offset = path.project(x0, y0)
        if abs(offset) < 1.0:
            cx, cy, _ = (float(v) for v in segment.path.interpolate(segment.path.length / 2))
            turns.append(LeftTurn(entry_s=entry_s, centre=(cx, cy), heading=yaw0))
    return turns


def set_path_rules(npc: "NpcVehicle", road_map: RoadMap, lights: list[TrafficLight]) -> None:
    """Where the NPC's present path makes it stop for lights and give way when turning left."""
    npc.stops = light_stops(npc.keys, npc.path, road_map, lights)
    npc.turns = left_turns(npc.keys, npc.path, road_map)


LEFT_TURN_RAD = 0.6  # [rad] a connector turning left by more than this crosses the oncoming lanes
GIVE_WAY_GAP_S = 4.5  # [s] an oncoming vehicle this near its arrival at the crossing has the way
GIVE_WAY_LOOK_M = 40.0  # [m] a left turn further ahead than this does not slow the NPC yet


def give_way_gap(npc: "NpcVehicle", others: list[Agent]) -> float | None:
    """Gap [m] to the junction entry of the NPC's next left turn, while an oncoming vehicle
    would reach the crossing within GIVE_WAY_GAP_S (traffic turning left gives way to oncoming
    traffic, as CARLA's Traffic Manager and every road code have it). An NPC already inside the
    junction has committed and goes on."""
    me = npc.agent
    front = npc.s + me.size[0] / 2
    for turn in npc.turns:
        gap = turn.entry_s - front
        if gap < -0.5:
            continue
        if gap > GIVE_WAY_LOOK_M:
            return None
        cx, cy = turn.centre
        for other in others:
            if other is me or not other.active or other.kind != "vehicle" or other.speed < 0.5:
                continue
            if math.cos(other.yaw - turn.heading) > -0.7:
                continue  # not oncoming
            c, s = math.cos(other.yaw), math.sin(other.yaw)
            along, across = (cx - other.x) * c + (cy - other.y) * s, -(cx - other.x) * s + (cy - other.y) * c
            if along < -other.size[0] or abs(across) > 10.0:
                continue  # past the crossing, or not on the road through it
            if max(along, 0.0) / other.speed <= GIVE_WAY_GAP_S:
                return max(gap, 0.0)
        return None
    return None


LANE_HALF_WIDTH_M = 1.75


def leader_ahead(npc: NpcVehicle, others: list[Agent], look_ahead: float) -> tuple[float | None, float]:
    """Gap [m] to the nearest agent in the NPC's lane ahead, and that agent's speed along it."""
    me = npc.agent
    c, s = math.cos(me.yaw), math.sin(me.yaw)
    best_gap, best_speed = None, 0.0
    for other in others:
        if other is me or not other.active:
            continue
        dx, dy = other.x - me.x, other.y - me.y
        dist = math.hypot(dx, dy)
        if dist > look_ahead or dx * c + dy * s <= 0.0:
            continue
        if other.kind == "vehicle" and other.speed > 0.5 and math.cos(other.yaw - me.yaw) < -0.5:
            continue  # oncoming traffic in the other lane, not a leader
        s_other, offset = npc.path.project(other.x, other.y, s_hint=npc.s + dist / 2, window_m=dist / 2 + 10)
        if s_other <= npc.s or abs(offset - npc.lateral) > LANE_HALF_WIDTH_M + other.size[1] / 2 - 0.3:
            continue
        gap = s_other - npc.s - me.size[0] / 2 - other.size[0] / 2
        if best_gap is None or gap < best_gap:
            vx, vy = other.velocity
            _, _, path_yaw = npc.path.interpolate(s_other)
            best_gap = gap
            best_speed = vx * math.cos(float(path_yaw)) + vy * math.sin(float(path_yaw))
    return best_gap, best_speed


def light_gap(npc: NpcVehicle, t: float, idm: IdmConfig) -> float | None:
    """Gap [m] to the stop line of the next red (or stoppable yellow) light on the path."""
    if not npc.obey_lights:
        return None
    front = npc.s + npc.agent.size[0] / 2
    for stop in npc.stops:
        gap = stop.s - front
        if gap < -0.5:
            continue
        state = stop.light.state(t)
        braking_distance = npc.agent.speed**2 / (2 * idm.comfortable_decel)
        if state == "red" or (state == "yellow" and gap > braking_distance):
            return max(gap, 0.0)
        return None
    return None


def fire_behaviour(npc: NpcVehicle, b: Behaviour, idm: IdmConfig, initial_speed: float) -> None:
    if b.action == "brake":
        npc.forced_decel = b.decel
        npc.desired_speed = b.speed or 0.0
    elif b.action == "stop":
        npc.forced_decel = idm.comfortable_decel
        npc.desired_speed = 0.0
    elif b.action == "go":
        npc.held = False
        npc.forced_decel = None
        npc.desired_speed = b.speed if b.speed is not None else initial_speed
    elif b.action == "set_speed":
        npc.desired_speed = float(b.speed)
    elif b.action == "cut_in":
        npc.lateral_target = npc.lateral + (2 if b.side == "left" else -2) * LANE_HALF_WIDTH_M
        npc.lateral_rate = abs(npc.lateral_target - npc.lateral) / b.duration_s


def npc_accel(npc: NpcVehicle, others: list[Agent], t: float, idm: IdmConfig) -> float:
    """The NPC's longitudinal acceleration for this step [m/s^2]."""
    speed = npc.agent.speed
    if npc.held:
        return -idm.comfortable_decel if speed > 0 else 0.0
    gap, leader_speed = leader_ahead(npc, others, idm.look_ahead_m)
    stop_gap = light_gap(npc, t, idm)
    stops_at_end = not npc.random_route or npc.dead_end
    end_gap = npc.path.length - npc.s - npc.agent.size[0] / 2 if stops_at_end else None
    candidates = [(gap, leader_speed), (stop_gap, 0.0), (end_gap, 0.0), (give_way_gap(npc, others), 0.0)]
    accel = min(idm_accel(idm, speed, npc.desired_speed, g, speed - v) for g, v in candidates if g is not None) \
        if any(g is not None for g, _ in candidates) else idm_accel(idm, speed, npc.desired_speed, None, 0.0)
    if npc.forced_decel is not None:
        if speed <= npc.desired_speed + 1e-3:
            npc.forced_decel = None
            npc.held = npc.desired_speed == 0.0
        else:
            accel = min(accel, -npc.forced_decel)
    return max(accel, -9.0)


def advance_npc(npc: NpcVehicle, accel: float, dt: float) -> None:
    agent = npc.agent
    speed = max(agent.speed + accel * dt, 0.0)
    npc.s += 0.5 * (agent.speed + speed) * dt
    agent.speed = speed
    if npc.lateral != npc.lateral_target:
        step = npc.lateral_rate * dt
        delta = npc.lateral_target - npc.lateral
        npc.lateral = npc.lateral_target if abs(delta) <= step else npc.lateral + math.copysign(step, delta)
    x, y, yaw = (float(v) for v in npc.path.interpolate(npc.s))
    agent.x = x - math.sin(yaw) * npc.lateral
    agent.y = y + math.cos(yaw) * npc.lateral
    agent.yaw = yaw


def extend_random_path(npc: NpcVehicle, road_map: RoadMap, rng: np.random.Generator,
                       lights: list[TrafficLight], min_ahead_m: float = 150.0) -> None:
    """Grow a randomly-routed NPC's path with random successors so it never runs out."""
    if not npc.random_route or npc.dead_end or npc.path.length - npc.s > min_ahead_m:
        return
    if not road_map.successors(npc.keys[-1]):
        npc.dead_end = True  # nowhere to go: it stops at the end of its lane
        return
    keep_from = max(npc.s - 30.0, 0.0)
    points = npc.path.points[npc.path.s >= keep_from]
    first_x, first_y, _ = npc.path.interpolate(keep_from)
    points = np.vstack([[first_x, first_y], points])
    keys = list(npc.keys)
    length = npc.path.length - keep_from
    while length - (npc.s - keep_from) < 2 * min_ahead_m:
        successors = road_map.successors(keys[-1])
        if not successors:
            npc.dead_end = True
            break
        nxt = successors[int(rng.integers(len(successors)))]
        seg_points = road_map.segments[nxt].path.points
        points = np.vstack([points, seg_points[1:]])
        keys.append(nxt)
        length += road_map.segments[nxt].path.length
    npc.s -= keep_from
    npc.path = Polyline(points)
    npc.keys = keys[-12:]
    set_path_rules(npc, road_map, lights)

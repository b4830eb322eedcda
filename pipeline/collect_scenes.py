"""One scene of `stagepilot collect`: what to render (`SceneJob`), and its scenario sampled from
the scene seed.

The ego gets a route from a random lane position about ROUTE_TARGET_M long; around it go NPC
cars ahead and oncoming, background traffic, pedestrians crossing and walking along the road,
parked cars, cones and barriers, and a weather preset. The result is a plain scenario mapping,
written to the manifest, so a scene can be driven again from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stagepilot.core.config import ConfigError, StackConfig
from stagepilot.core.roadmap import MapError, RoadMap
from stagepilot.sim.scenario import Scenario
from stagepilot.sim.world import load_road_map

ROUTE_MIN_M = 120.0  # [m] shortest ego route
ROUTE_TARGET_M = 300.0
ACTOR_RANGE_M = (12.0, 130.0)  # [m] along the route from the ego start
# Drawn like the simulator's `preset: random` (clear twice as often), but named in the manifest.
WEATHER_PRESETS = ("clear_noon", "clear_noon", "overcast", "dusk", "fog", "night")
# `--first-yellow`: the light starts its yellow phase at t = 0 (clamped to the phase: all of it)
FIRST_YELLOW_REMAINING_S = 60.0
# `--crowd`: queues of cars far down the ego's road, more walkers and parked cars, so that far
# cars are often partly hidden (behind the car ahead of them in the queue, a walker, a parked car)
CROWD_QUEUES = (1, 2)  # queues a crowded scene adds
CROWD_QUEUE_CARS = (3, 6)  # cars in a queue
CROWD_QUEUE_GAP_M = (9.5, 13.0)  # [m] between queued cars' starts
CROWD_QUEUE_CLEARANCE_M = 6.0  # [m] a queued car's start from any other car or obstacle (others claim 12 m)
CROWD_QUEUE_START_M = 35.0  # [m] along the route, the queue's first car at least this far out


@dataclass(frozen=True)
class SceneJob:
    """One scene to render: which map and seed, and where its frames go."""

    split: str
    index: int
    seed: int  # the scenario seed: weather, colours, random traffic, scenery, layout
    map_name: str
    map_path: str
    first_image_id: int
    frames: int
    interval_s: float
    out: Path
    config: StackConfig
    image_format: str
    depth: bool
    first_yellow: float = 0.0  # share of training scenes whose first light on the route starts yellow
    crowd: float = 0.0  # share of training scenes made crowded (`_Layout.crowd`)


def _r(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


def _drivable_keys(road_map: RoadMap) -> list[tuple[int, int, int]]:
    return sorted(k for k, seg in road_map.segments.items() if not seg.is_junction and seg.path.length > 20.0)


def _next_lanes(road_map: RoadMap, key: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    return [k for k in road_map.successors(key) if not road_map.graph.edges[key, k].get("lane_change")]


def has_dead_ends(road_map: RoadMap) -> bool:
    """Whether some lane ends without a successor (the ends of `straight`, `curvy`, the junction arms)."""
    return any(not _next_lanes(road_map, key) for key in road_map.segments)


def _walk(road_map: RoadMap, key, s: float, target_m: float,
          rng: np.random.Generator) -> tuple[tuple[float, float], float]:
    """A goal about `target_m` on from lane `key` at `s`, along random successors; it stops
    short at a dead end. Returns the goal (x, y) and the distance walked [m]."""
    seg = road_map.segments[key]
    walked, goal = seg.path.length - s, (key, min(seg.path.length - 1.0, s + target_m))
    while walked < target_m:
        nexts = _next_lanes(road_map, key)
        if not nexts:
            break
        key = nexts[int(rng.integers(len(nexts)))]
        seg = road_map.segments[key]
        if not seg.is_junction:
            goal = (key, max(1.0, min(seg.path.length - 1.0, target_m - walked)))
        walked += seg.path.length
    x, y, _ = road_map.segments[goal[0]].path.interpolate(goal[1])
    return (_r(x), _r(y)), walked


def _sample_route(road_map: RoadMap, rng: np.random.Generator):
    """An ego start at a random lane position and a goal some hundred metres on. Returns the
    start (x, y), the goal (x, y) and the route (RoutePath) the simulator will build."""
    keys = _drivable_keys(road_map)
    for _ in range(100):
        key = keys[int(rng.integers(len(keys)))]
        s = float(rng.uniform(2.0, road_map.segments[key].path.length - 10.0))
        x, y, _ = road_map.segments[key].path.interpolate(s)
        start = (_r(x), _r(y))
        goal, _ = _walk(road_map, key, s, ROUTE_TARGET_M, rng)
        try:
            route = road_map.route([start, goal])
        except MapError:
            continue
        if route.path.length >= ROUTE_MIN_M:
            return start, goal, route
    raise ConfigError(f"{road_map.source}: found no ego route of {ROUTE_MIN_M:.0f} m or more")


class _Layout:
    """Actors placed around the ego route; cars and obstacles kept apart from each other.

    Every NPC car gets a goal: the simulator's goal-less (random-turn) NPCs break at a lane's
    dead end (sim/traffic.py extend_random_path), and three of the four project maps have some.
    """

    def __init__(self, road_map: RoadMap, route, rng: np.random.Generator, ego_xy: tuple[float, float]):
        self.road_map, self.path, self.rng = road_map, route.path, rng
        self.s_max = min(ACTOR_RANGE_M[1], self.path.length - 25.0)
        self.actors: list[dict[str, Any]] = []
        self._placed: list[tuple[float, float]] = [ego_xy]  # cars and obstacles, world [m]

    def _xy(self, s: float, offset: float) -> tuple[float, float]:
        x, y, yaw = (float(v) for v in self.path.interpolate(s))
        return x - math.sin(yaw) * offset, y + math.cos(yaw) * offset

    def _lane_point(self, xy: tuple[float, float]):
        """(lane segment, s along it, its centre point rounded) under `xy`, or None where no lane
        (junctions left out) runs within 1 m of it."""
        found = self.road_map.segment_at(*xy)
        if found is None or found[0].is_junction:
            return None
        segment, s = found
        x, y, _ = segment.path.interpolate(s)
        start = (_r(x), _r(y))
        return (segment, s, start) if math.dist(start, xy) <= 1.0 else None

    def _claim(self, xy: tuple[float, float], clearance_m: float) -> bool:
        if any(math.dist(xy, p) < clearance_m for p in self._placed):
            return False
        self._placed.append(xy)
        return True

    def count(self, high: int) -> int:
        return int(self.rng.integers(0, high + 1))

    def _car(self, xy: tuple[float, float], speed: float | None = None, clearance_m: float = 12.0) -> None:
        """An NPC on the lane under `xy`, with a random goal, unless it would crowd another."""
        lane = self._lane_point(xy)
        if lane is None or not self._claim(lane[2], clearance_m):
            return
        segment, s, start = lane
        goal, _ = _walk(self.road_map, segment.key, s, ROUTE_TARGET_M, self.rng)
        self.actors.append({"type": "vehicle", "start": {"x": start[0], "y": start[1]},
                            "goal": {"x": goal[0], "y": goal[1]},
                            "speed": _r(self.rng.uniform(3.0, 11.0) if speed is None else speed)})

    def vehicles(self, background: int) -> None:
        """NPCs ahead in the ego lane, in the lane to its left (oncoming on two-way roads), and
        `background` anywhere on the map."""
        for offset in [0.0] * self.count(2) + [3.5] * self.count(2):
            self._car(self._xy(_r(self.rng.uniform(25.0, self.s_max)), offset))
        keys = _drivable_keys(self.road_map)
        for _ in range(background):
            segment = self.road_map.segments[keys[int(self.rng.integers(len(keys)))]]
            x, y, _ = segment.path.interpolate(float(self.rng.uniform(5.0, segment.path.length - 5.0)))
            self._car((float(x), float(y)))

    def pedestrians(self, crossing: int = 2, along: int = 4) -> None:
        for _ in range(self.count(crossing)):  # crossing the road, starting when the ego comes near
            s, half = _r(self.rng.uniform(ACTOR_RANGE_M[0] + 10.0, self.s_max)), _r(self.rng.uniform(5.0, 9.0))
            ends = [{"route_s": s, "offset": -half}, {"route_s": s, "offset": half}]
            self.actors.append({"type": "pedestrian", "path": ends if self.rng.random() < 0.5 else ends[::-1],
                                "speed": _r(self.rng.uniform(0.8, 2.0)),
                                "ego_within_m": _r(self.rng.uniform(20.0, 50.0))})
        for _ in range(self.count(along)):  # along the road: on the sidewalks, some on the road's edge
            offset = _r(self.rng.choice([-1.0, 1.0]) * self.rng.uniform(2.3, 7.5))
            s = _r(self.rng.uniform(ACTOR_RANGE_M[0], self.s_max - 20.0))
            path = [{"route_s": _r(s + d), "offset": offset} for d in (0.0, 7.0, 14.0, 21.0)]
            self.actors.append({"type": "pedestrian", "path": path if self.rng.random() < 0.5 else path[::-1],
                                "speed": _r(self.rng.uniform(0.8, 1.8)), "start_t": _r(self.rng.uniform(0.0, 3.0))})

    def _static(self, kind: str, s: float, offset: float, clearance_m: float) -> bool:
        if not self._claim(self._xy(s, offset), clearance_m):
            return False
        self.actors.append({"type": "static", "kind": kind, "pose": {"route_s": s, "offset": offset}})
        return True

    def parked(self, high: int = 3) -> None:
        for _ in range(self.count(high)):
            right = self.rng.random() < 0.7
            offset = _r(-self.rng.uniform(2.9, 3.6) if right else self.rng.uniform(5.3, 6.5))
            self._static("parked_car", _r(self.rng.uniform(ACTOR_RANGE_M[0], self.s_max)), offset, 7.0)

    def obstacles(self) -> None:
        """Parked cars at either kerb, lines of cones along the lane edge, a barrier."""
        self.parked()
        for _ in range(self.count(2)):
            offset = _r(self.rng.choice([-1.0, 1.0]) * self.rng.uniform(2.1, 2.8))
            s, cones = _r(self.rng.uniform(ACTOR_RANGE_M[0], self.s_max - 10.0)), int(self.rng.integers(1, 5))
            for k in range(cones):
                if not self._static("cone", _r(s + 3.0 * k), offset, 2.0):
                    break
        if self.rng.random() < 0.3:
            s, offset = _r(self.rng.uniform(ACTOR_RANGE_M[0], self.s_max)), _r(-self.rng.uniform(3.0, 3.5))
            self._static("barrier", s, offset, 4.0)

    def crowd(self, rng: np.random.Generator) -> None:
        """Make the scene crowded, drawing from `rng` (its own stream, so that what the scene
        already holds, and its weather, stay the seed's): queues of slow cars far down the
        route, in the ego's lane or the one beside it, each car partly hiding the next, plus
        more walkers along the road and more parked cars."""
        self.rng = rng
        for _ in range(int(rng.integers(CROWD_QUEUES[0], CROWD_QUEUES[1] + 1))):
            s, speed = float(rng.uniform(CROWD_QUEUE_START_M, max(CROWD_QUEUE_START_M, self.s_max - 30.0))), _r(rng.uniform(2.0, 6.0))
            lanes = [float(offset) for offset in rng.permutation([0.0, 3.5, -3.5])
                     if self._lane_point(self._xy(s, float(offset))) is not None]
            cars = int(rng.integers(CROWD_QUEUE_CARS[0], CROWD_QUEUE_CARS[1] + 1))
            if not lanes:
                continue
            for _ in range(cars):
                if s > self.s_max:
                    break
                self._car(self._xy(_r(s), lanes[0]), speed, CROWD_QUEUE_CLEARANCE_M)
                s += float(rng.uniform(*CROWD_QUEUE_GAP_M))
        self.pedestrians(crossing=1, along=4)
        self.parked(3)


def _drawn(job: SceneJob, attempt: int, stream: int, share: float) -> bool:
    """Whether a training scene falls in a `share` of scenes, drawn on its own random `stream`, so
    that the rest of the scene is the seed's whatever the share. Validation scenes never do."""
    return job.split == "train" and np.random.default_rng([job.seed, attempt, stream]).random() < share


def crowded(job: SceneJob, attempt: int) -> bool:
    """Whether `--crowd` makes this scene crowded."""
    return _drawn(job, attempt, 4, job.crowd)


def sample_scenario(job: SceneJob, attempt: int) -> tuple[Scenario, dict[str, Any]]:
    """The scene's scenario, and its parameters as plain data (a valid scenario mapping)."""
    road_map = load_road_map(job.map_path)
    rng = np.random.default_rng([job.seed, attempt])
    start, goal, route = _sample_route(road_map, rng)
    speed_limit = _r(rng.uniform(8.3, 13.9))
    lane_length = sum(seg.path.length for seg in road_map.segments.values() if not seg.is_junction)
    traffic = int(min(30, rng.integers(lane_length / 250.0, lane_length / 100.0 + 1)))
    # Goal-less NPCs are the simulator's random traffic; they are safe only without dead ends.
    random_vehicles = 0 if has_dead_ends(road_map) else traffic
    layout = _Layout(road_map, route, rng, start)
    layout.vehicles(background=traffic - random_vehicles)
    layout.pedestrians()
    layout.obstacles()
    initial_speed = _r(rng.uniform(0.0, 0.8 * speed_limit))
    weather = str(rng.choice(WEATHER_PRESETS))
    if crowded(job, attempt):
        layout.crowd(np.random.default_rng([job.seed, attempt, 5]))
    params = {
        "name": f"collect_{job.split}_{job.index:05d}",
        "map": job.map_name,
        "seed": job.seed,
        "duration_s": 3600.0,  # scenes end by frame count, not time
        "speed_limit": speed_limit,
        "ego": {"start": {"x": start[0], "y": start[1]}, "goal": {"x": goal[0], "y": goal[1]},
                "initial_speed": initial_speed},
        "actors": layout.actors,
        "random_vehicles": random_vehicles,
        "weather": {"preset": weather},
    }
    if _drawn(job, attempt, 3, job.first_yellow):
        params["traffic_lights"] = {"first_light": "yellow", "first_light_remaining_s": FIRST_YELLOW_REMAINING_S}
    scenario = Scenario.model_validate(params).model_copy(
        update={"source": f"collect:{params['name']}", "map_path": job.map_path})
    return scenario, params

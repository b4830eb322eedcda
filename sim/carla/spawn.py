"""The spawn plan of a scenario on a CARLA map, and spawning it with retries.

`spawn_plan` needs no server: it places the ego, every scenario actor and the random traffic
on a `RoadMap` (which `carla.Map` builds offline) with the same placement code as the embedded
simulator (sim/placement.py), so a plan can be checked before a server is involved
(tests/test_carla_spawn.py). `spawn_with_retry` tries the planned place, then places nearby
along the heading, and names the actor when none is free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import carla
import numpy as np

from stagepilot.core.carla_frame import to_carla_location, to_carla_transform
from stagepilot.core.roadmap import RoadMap
from stagepilot.sim.carla.connection import CarlaError
from stagepilot.sim.placement import Placement
from stagepilot.sim.scenario import PedestrianActor, Scenario, StaticActor, VehicleActor

# Blueprints by role, in order of preference; the first one the server has is used.
NPC_CARS = ("vehicle.tesla.model3", "vehicle.audi.a2", "vehicle.toyota.prius", "vehicle.nissan.micra",
            "vehicle.mercedes.coupe_2020", "vehicle.dodge.charger_2020", "vehicle.mini.cooper_s_2021",
            "vehicle.lincoln.mkz_2017")
PROPS = {"parked_car": NPC_CARS, "parked_truck": ("vehicle.carlamotors.european_hgv", "vehicle.carlamotors.carlacola"),
         "cone": ("static.prop.constructioncone", "static.prop.trafficcone01"),
         "barrier": ("static.prop.streetbarrier", "static.prop.chainbarrier")}
WALKERS = tuple(f"walker.pedestrian.{i:04d}" for i in range(1, 15))
LIFT_M = {"ego": 0.3, "vehicle": 0.3, "parked": 0.3, "pedestrian": 1.0, "prop": 0.05}  # above the ground
RETRY_STEPS_M = (0.0, 2.0, -2.0, 4.0, -4.0, 6.0, -6.0)  # along the heading
RANDOM_MIN_GAP_M = 12.0


@dataclass(frozen=True)
class SpawnSpec:
    """One actor to spawn: where (world frame, body centre on the ground) and as what."""

    key: str  # the scenario key that names it in errors: ego, actors.2, random_vehicles.0
    role: str  # ego | vehicle | parked | pedestrian | prop
    blueprints: tuple[str, ...]  # acceptable blueprint ids, in order of preference
    x: float  # [m]
    y: float  # [m]
    yaw: float  # [rad]
    actor: VehicleActor | PedestrianActor | StaticActor | None = None
    path: tuple[tuple[float, float], ...] = ()  # a pedestrian's path [m]
    route: tuple[tuple[float, float], ...] = ()  # a vehicle's route to its goal [m]


def spawn_plan(road_map: RoadMap, scenario: Scenario, ego_blueprint: str,
               rng: np.random.Generator) -> tuple[Placement, list[SpawnSpec]]:
    """The ego route and every actor of `scenario` placed on `road_map`; random vehicles are
    drawn from `rng` (seed it with the scenario's seed for the same plan every time)."""
    placement = Placement(road_map, scenario)
    x, y, yaw = placement.resolve(scenario.ego.start, "ego.start")
    plan = [SpawnSpec("ego", "ego", (ego_blueprint,), x, y, yaw)]
    for index, actor in enumerate(scenario.actors):
        key = f"actors.{index}"
        if isinstance(actor, VehicleActor):
            x, y, yaw = placement.resolve(actor.start, f"{key}.start")
            route = ()
            if actor.goal is not None:
                goal = placement.resolve(actor.goal, f"{key}.goal")[:2]
                try:
                    points = road_map.route([(x, y), goal]).path.points
                except ValueError as exc:
                    raise placement.fail(key, str(exc)) from None
                route = tuple(map(tuple, points[:: max(1, len(points) // 50)]))
            plan.append(SpawnSpec(key, "vehicle", _shuffled(NPC_CARS, rng), x, y, yaw, actor, route=route))
        elif isinstance(actor, PedestrianActor):
            points = [placement.resolve(p, f"{key}.path.{i}", on_road=False)[:2] for i, p in enumerate(actor.path)]
            heading = math.atan2(points[1][1] - points[0][1], points[1][0] - points[0][0])
            plan.append(SpawnSpec(key, "pedestrian", _shuffled(WALKERS, rng), *points[0], heading, actor,
                                  path=tuple(points)))
        elif isinstance(actor, StaticActor):
            x, y, yaw = placement.resolve(actor.pose, f"{key}.pose", on_road=False)
            role = "parked" if actor.kind in ("parked_car", "parked_truck") else "prop"
            plan.append(SpawnSpec(key, role, PROPS[actor.kind], x, y, yaw, actor))
    plan += _random_vehicles(road_map, scenario.random_vehicles, plan, rng)
    return placement, plan


def _shuffled(names: tuple[str, ...], rng: np.random.Generator) -> tuple[str, ...]:
    first = int(rng.integers(len(names)))
    return names[first:] + names[:first]


def _random_vehicles(road_map: RoadMap, count: int, placed: list[SpawnSpec],
                     rng: np.random.Generator) -> list[SpawnSpec]:
    """`count` vehicles on random lanes outside junctions, 12 m or more from everything."""
    segments = [s for s in road_map.segments.values() if not s.is_junction and s.path.length > 20]
    taken = [(s.x, s.y) for s in placed]
    found: list[SpawnSpec] = []
    for _ in range(count * 20):
        if len(found) == count or not segments:
            break
        segment = segments[int(rng.integers(len(segments)))]
        x, y, yaw = (float(v) for v in segment.path.interpolate(float(rng.uniform(5, segment.path.length - 5))))
        if any(math.hypot(px - x, py - y) < RANDOM_MIN_GAP_M for px, py in taken):
            continue
        taken.append((x, y))
        found.append(SpawnSpec(f"random_vehicles.{len(found)}", "vehicle", _shuffled(NPC_CARS, rng), x, y, yaw))
    return found


def ground_z(road_map: RoadMap, x: float, y: float) -> float:
    """[m] height of the road (or the nearest lane of any type) under (x, y)."""
    wp = road_map.carla_map.get_waypoint(to_carla_location(x, y), project_to_road=True,
                                         lane_type=carla.LaneType.Any)
    return float(wp.transform.location.z) if wp is not None else 0.0


def spawn_transforms(road_map: RoadMap, spec: SpawnSpec) -> list[carla.Transform]:
    """Where to try, in order: the planned place, then along the heading (RETRY_STEPS_M)."""
    found = []
    for step in RETRY_STEPS_M if spec.role != "ego" else (0.0, 0.5, -0.5):
        x, y = spec.x + step * math.cos(spec.yaw), spec.y + step * math.sin(spec.yaw)
        found.append(to_carla_transform(x, y, ground_z(road_map, x, y) + LIFT_M[spec.role], spec.yaw))
    return found


def pick_blueprint(library, spec: SpawnSpec):
    """The first of `spec.blueprints` the server has."""
    for name in spec.blueprints:
        try:
            return library.find(name)
        except (IndexError, RuntimeError):
            continue
    raise CarlaError(f"{spec.key}: the server has none of the blueprints {', '.join(spec.blueprints)}")


def spawn_with_retry(world, road_map: RoadMap, spec: SpawnSpec, blueprint, where: str):
    """The spawned actor; a taken place is retried nearby; a failure names the actor."""
    for transform in spawn_transforms(road_map, spec):
        actor = world.try_spawn_actor(blueprint, transform)
        if actor is not None:
            return actor
    raise CarlaError(f"{where}: could not spawn {spec.key} ({blueprint.id}) at ({spec.x:.1f}, {spec.y:.1f}) "
                     f"or within {max(RETRY_STEPS_M):.0f} m along its heading: the place is taken or not on the "
                     "server's map")

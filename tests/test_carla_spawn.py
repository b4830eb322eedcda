"""The CARLA backend's spawn plan (sim/carla/spawn.py), computed offline with carla.Map: every
shipped scenario, and every scenario of the default suite, puts the ego and its vehicles on a
driving lane, heading the lane's way, and everything else on a lane of some kind, with no two
actors on top of each other."""

from __future__ import annotations

import math

import carla
import numpy as np
import pytest

from stagepilot.core.carla_frame import to_carla_location, world_pose
from stagepilot.sim.carla.spawn import LIFT_M, SpawnSpec, ground_z, spawn_plan, spawn_transforms
from stagepilot.sim.scenario import SCENARIO_DIR, load_scenario
from stagepilot.sim.suites import load_suite
from stagepilot.sim.world import load_road_map

from tests.conftest import shared_map

SHIPPED = sorted(path.stem for path in SCENARIO_DIR.glob("*.yaml"))
DRIVEN = ("ego", "vehicle")


def _scenario(name: str):
    if name.startswith("town0"):
        shared_map(f"Town0{name[5]}")  # skips when the town is not on the map search path
    return load_scenario(name)


def _check(scenario) -> list[SpawnSpec]:
    road_map = load_road_map(scenario.map_path)
    _, plan = spawn_plan(road_map, scenario, "vehicle.lincoln.mkz_2020", np.random.default_rng(scenario.seed))
    carla_map = road_map.carla_map
    assert plan[0].role == "ego" and plan[0].key == "ego"
    for spec in plan:
        where = f"{scenario.name}: {spec.key} at ({spec.x:.1f}, {spec.y:.1f})"
        location = to_carla_location(spec.x, spec.y)
        if spec.role in DRIVEN:
            wp = carla_map.get_waypoint(location, project_to_road=False, lane_type=carla.LaneType.Driving)
            assert wp is not None, f"{where} is not on a driving lane"
            lane_yaw = world_pose(wp.transform)[5]
            assert math.cos(spec.yaw - lane_yaw) > 0.9, f"{where} does not head the lane's way"
        else:
            wp = carla_map.get_waypoint(location, project_to_road=False, lane_type=carla.LaneType.Any)
            assert wp is not None, f"{where} is on no lane of any kind"
        first = world_pose(spawn_transforms(road_map, spec)[0])
        assert first[:2] == pytest.approx((spec.x, spec.y), abs=1e-3)
        assert first[2] == pytest.approx(ground_z(road_map, spec.x, spec.y) + LIFT_M[spec.role], abs=1e-3)
    for i, a in enumerate(plan):
        for b in plan[i + 1:]:
            if a.role != "pedestrian" and b.role != "pedestrian":
                assert math.hypot(a.x - b.x, a.y - b.y) > 3.0, f"{scenario.name}: {a.key} and {b.key} overlap"
    return plan


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_scenario_spawns_on_the_road(name) -> None:
    scenario = _scenario(name)
    plan = _check(scenario)
    assert len(plan) == 1 + len(scenario.actors) + scenario.random_vehicles


def test_every_scenario_of_the_default_suite_spawns_on_the_road() -> None:
    sampled = load_suite("default").sample()
    assert len(sampled) >= 20
    for item in sampled:
        _check(item.scenario)


def test_the_plan_is_the_same_for_the_same_seed() -> None:
    scenario = _scenario("town_traffic")
    road_map = load_road_map(scenario.map_path)
    plans = [spawn_plan(road_map, scenario, "vehicle.tesla.model3", np.random.default_rng(scenario.seed))[1]
             for _ in range(2)]
    assert plans[0] == plans[1] and scenario.random_vehicles > 0

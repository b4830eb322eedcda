"""The random-routes generator: a scenario document for a seeded route through junctions on any
OpenDRIVE map, checked against the route the simulator itself plans from it."""

from __future__ import annotations

import math
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import PERFECT, shared_map
from stagepilot.core.config import ConfigError, load_stack
from stagepilot.core.maps import PROJECT_MAPS
from stagepilot.pipeline.driver import drive
from stagepilot.sim.random_routes import ROUTE_MAX_M, ROUTE_MIN_M, random_routes_scenario
from stagepilot.sim.scenario import Scenario, resolve_map
from stagepilot.sim.world import EmbeddedSimulator

MAPS = ["town", "Town01", "Town02"]
SEEDS = [1, 2]
PEDESTRIANS = 3
SIDE_REACH_M = 20.0  # [m] a pedestrian's path stays this close to the route


@lru_cache(maxsize=None)
def _generated(map_name: str, seed: int) -> str:
    if map_name.startswith("Town"):
        shared_map(map_name)
    params = {"map": map_name, "seed": seed, "vehicles": 4, "pedestrians": PEDESTRIANS, "weather": "overcast"}
    return yaml.safe_dump(random_routes_scenario(params))  # plain data: YAML round-trips it


def generated(map_name: str, seed: int) -> dict:
    return yaml.safe_load(_generated(map_name, seed))


def scenario_of(doc: dict) -> Scenario:
    """The document as load_scenario would give it: validated, with its map resolved."""
    map_path = resolve_map(doc["map"], Path("<generated>"), ())
    return Scenario.model_validate(doc).model_copy(update={"source": doc["name"], "map_path": str(map_path)})


def reset(doc: dict) -> EmbeddedSimulator:
    sim = EmbeddedSimulator(render=False)
    sim.reset(scenario_of(doc))
    return sim


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("map_name", MAPS)
def test_the_simulators_route_passes_two_junctions_within_the_length_bounds(map_name, seed):
    doc = generated(map_name, seed)
    sim = reset(doc)
    length = sim.route.path.length
    assert len(sim.route.junction_ids) >= 2
    assert ROUTE_MIN_M <= length <= ROUTE_MAX_M
    assert set(doc["ego"]) == {"start", "goal"}
    assert all(set(pose) == {"road", "lane", "s"} for pose in doc["ego"].values())
    allowed = length / (0.5 * doc["speed_limit"]) + 20.0 + 20.0 * len(sim.route.junction_ids)  # a red phase each
    assert doc["duration_s"] == pytest.approx(allowed, abs=1.0)
    assert doc["random_vehicles"] == 4 and doc["weather"] == {"preset": "overcast"}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("map_name", MAPS)
def test_pedestrians_walk_beside_the_route_or_cross_it_off_the_driving_lanes(map_name, seed):
    sim = reset(generated(map_name, seed))
    route = sim.route.path
    assert len(sim.pedestrians) == PEDESTRIANS
    for walker in sim.pedestrians:
        points = walker.path.points
        offsets = [route.project(float(x), float(y))[1] for x, y in points]
        assert not any(sim.road_map.on_road(float(x), float(y)) for x, y in points)
        assert max(abs(o) for o in offsets) < SIDE_REACH_M
        if walker.ego_within_m is not None:  # a crossing: from one side of the route to the other
            assert len(points) == 2 and offsets[0] * offsets[1] < 0


@pytest.mark.parametrize("map_name", MAPS)
def test_the_same_seed_gives_the_same_document_and_another_seed_another_route(map_name):
    doc = generated(map_name, 1)
    again = random_routes_scenario({"map": map_name, "seed": 1, "vehicles": 4, "pedestrians": PEDESTRIANS,
                                    "weather": "overcast"})
    assert again == doc
    assert generated(map_name, 2)["ego"] != doc["ego"]


def test_a_map_without_junctions_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"map straight: the map has no junction"):
        random_routes_scenario({"map": "straight", "seed": 1})


def test_the_one_junction_map_needs_a_lower_junction_count():
    with pytest.raises(ConfigError, match=r"map junction: no route .* passes through 2 junctions"):
        random_routes_scenario({"map": "junction", "seed": 1})
    sim = reset(random_routes_scenario({"map": "junction", "seed": 1, "min_junctions": 1}))
    assert sim.route.junction_ids == (100,)


def test_a_user_map_file_is_named_by_its_absolute_path(tmp_path):
    user_map = tmp_path / "my_town.xodr"
    shutil.copy(PROJECT_MAPS / "town.xodr", user_map)
    doc = random_routes_scenario({"map": str(user_map), "seed": 3})
    assert doc["map"] == str(user_map.resolve()) and doc["name"] == "random_routes_my_town_3"
    assert len(reset(doc).route.junction_ids) >= 2


@pytest.mark.parametrize("params, named", [
    ({"map": "town", "seed": 1, "vehicels": 3}, "vehicels: unknown key"),
    ({"map": "town", "seed": 1, "weather": "snow"}, "weather"),
    ({"seed": 1}, "map: required key is missing"),
    ({"map": "no_such_town", "seed": 1}, "map no_such_town not found"),
])
def test_bad_params_name_the_key_or_map(params, named):
    with pytest.raises(ConfigError, match=named):
        random_routes_scenario(params)


def test_a_town01_route_drives_with_perfect_perception():
    doc = generated("Town01", 1)
    result = drive(load_stack([], [*PERFECT]), scenario_of(doc), render=False, max_time_s=10.0)
    assert result.series.t[-1] == pytest.approx(10.0, abs=0.1)
    assert math.isfinite(result.series.route_progress[-1]) and np.max(result.series.route_progress) > 5.0

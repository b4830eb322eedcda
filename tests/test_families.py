"""Scenario families and suites: every family loads with ranged parameters, suites sample the
same scenarios from the same seed, every scenario of the default suite validates on a map that
exists, mistakes are one-line ConfigErrors, and a family of each kind drives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import PERFECT
from stagepilot.core.config import ConfigError, load_stack
from stagepilot.pipeline.driver import drive
from stagepilot.sim.families import FAMILY_DIR, family_names, load_family, substitute
from stagepilot.sim.suites import load_suite, suite_names

TEMPLATE_FAMILIES = [
    "lead_vehicle_brakes", "slow_lead_vehicle", "occluded_pedestrian", "cut_in", "static_obstacle_free",
    "static_obstacle_blocked", "junction_left_turn", "junction_right_turn", "red_light_runner",
    "unsignalised_junction", "curve_lane_keeping", "stop_and_go",
]


def _suite_file(tmp_path: Path, data: dict, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def default_draws():
    return load_suite("default").sample()


# ---------------------------------------------------------------- families


def test_the_shipped_families_are_the_template_ones_and_random_routes():
    assert sorted(TEMPLATE_FAMILIES + ["random_routes"]) == family_names()


@pytest.mark.parametrize("name", family_names())
def test_every_family_loads_and_every_parameter_has_a_range_or_values(name):
    family = load_family(name)
    assert family.description and family.modelled_on[0].isupper()
    assert family.parameters
    for parameter in family.parameters.values():
        if parameter.type in ("choice", "map"):
            assert len(parameter.values) >= 2, parameter
        else:
            assert parameter.low < parameter.high, parameter
    assert (family.generator is None) == bool(family.template)


@pytest.mark.parametrize("name", TEMPLATE_FAMILIES)
def test_draws_stay_in_their_ranges_and_give_valid_scenarios(name):
    family = load_family(name)
    rng = np.random.default_rng(11)
    for index in range(3):
        params = family.sample(rng)
        family.check(params)
        scenario = family.scenario(params, f"{name}-{index}")
        assert scenario.name == f"{name}-{index}" and Path(scenario.map_path).is_file()
        for key, value in params.items():
            parameter = family.parameters[key]
            assert parameter.problem(value) is None
            assert type(value) is {"int": int, "float": float}.get(parameter.type, type(value))


def test_a_placeholder_keeps_its_type_alone_and_is_formatted_inside_text():
    doc = substitute({"a": "${x}", "b": ["at ${x} m, ${w}"], "c": 3}, {"x": 2.5, "w": "fog"})
    assert doc == {"a": 2.5, "b": ["at 2.5 m, fog"], "c": 3}


# ---------------------------------------------------------------- suites


def test_a_suite_samples_the_same_scenarios_every_time(default_draws):
    again = load_suite("default").sample()
    assert [(d.id, d.params, d.scenario.model_dump()) for d in default_draws] == \
        [(d.id, d.params, d.scenario.model_dump()) for d in again]


def test_another_seed_draws_other_scenarios_and_a_new_family_leaves_the_others_alone(tmp_path):
    base = {"seed": 5, "families": {"cut_in": 2, "stop_and_go": 1}}
    first = load_suite(_suite_file(tmp_path, base, "a.yaml")).sample()
    other_seed = load_suite(_suite_file(tmp_path, {**base, "seed": 6}, "b.yaml")).sample()
    grown = load_suite(_suite_file(tmp_path, {**base, "families": {"lead_vehicle_brakes": 1, "cut_in": 3,
                                                                    "stop_and_go": 1}}, "c.yaml")).sample()
    assert [d.params for d in first] != [d.params for d in other_seed]
    by_id = {d.id: d.params for d in grown}
    assert all(by_id[d.id] == d.params for d in first)
    assert [d.id for d in grown] == ["lead_vehicle_brakes-01", "cut_in-01", "cut_in-02", "cut_in-03", "stop_and_go-01"]


def test_every_scenario_of_the_default_suite_validates_on_a_map_that_exists(default_draws):
    suite = load_suite("default")
    assert {"default", "full"} <= set(suite_names())
    assert 35 <= len(default_draws) == suite.size <= 45
    assert len({d.id for d in default_draws}) == len(default_draws)
    assert {d.family for d in default_draws} == {*TEMPLATE_FAMILIES, "random_routes"}
    for draw in default_draws:
        assert Path(draw.scenario.map_path).is_file(), draw.id
        assert draw.scenario.name == draw.id and draw.params


def test_the_full_suite_loads_every_family_and_scenario_it_names():
    suite = load_suite("full")
    assert set(suite.families) == set(family_names())
    assert suite.size > 2 * load_suite("default").size


# ---------------------------------------------------------------- mistakes


def test_an_unknown_family_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_family("cutin")
    assert "cutin: no such scenario family (known: " in _one_line(exc) and "cut_in" in str(exc.value)
    path = _suite_file(tmp_path, {"seed": 1, "families": {"cutin": 2}})
    with pytest.raises(ConfigError) as exc:
        load_suite(path)
    assert f"{path}: families.cutin: no such scenario family" in _one_line(exc)


@pytest.mark.parametrize("params, expected", [
    ({"cutter_speed": 30.0}, "family cut_in: parameter cutter_speed = 30.0 is outside its range [9.0, 12.0]"),
    ({"seed": 2.5}, "family cut_in: parameter seed = 2.5 is not a whole number"),
    ({"weather": "rain"}, "family cut_in: parameter weather = 'rain' is not one of"),
    ({"lane_count": 2}, "family cut_in: unknown parameter lane_count"),
    ({"trigger_m": None}, "family cut_in: parameter trigger_m is missing"),
])
def test_a_parameter_outside_the_family_is_refused(params, expected):
    family = load_family("cut_in")
    drawn = family.sample(np.random.default_rng(0))
    drawn.update(params)
    drawn = {k: v for k, v in drawn.items() if v is not None}
    with pytest.raises(ConfigError) as exc:
        family.scenario(drawn, "cut_in-x")
    assert expected in _one_line(exc)


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(author="me"), "author: unknown key"),
    (lambda d: d["parameters"].update(gap={"type": "float"}), "parameters.gap: a float parameter takes `range"),
    (lambda d: d["scenario"].update(description="${nope}"), "${nope} names no parameter"),
    (lambda d: d["parameters"].update(unused={"type": "int", "range": [0, 3]}),
     "parameters.unused: the scenario template never uses it"),
    (lambda d: d["parameters"]["cutter_speed"].update(range=[7.0, 120.0]), "actors.0.speed"),
])
def test_a_family_file_with_a_mistake_names_the_file_and_key(tmp_path, change, expected):
    data = yaml.safe_load((FAMILY_DIR / "cut_in.yaml").read_text())
    change(data)
    path = tmp_path / "my_cut_in.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as exc:
        load_family(path)
    assert str(path) in _one_line(exc) and expected in str(exc.value)


@pytest.mark.parametrize("data, expected", [
    ({"seed": 1, "families": {"cut_in": 1}, "famlies": {}}, "famlies: unknown key"),
    ({"seed": 1, "families": {"cut_in": 1}, "criteria": {"blocked": 5}}, "criteria.blocked: unknown key"),
    ({"families": {"cut_in": 1}}, "seed: required key is missing"),
    ({"seed": 1, "families": {"cut_in": 1}, "scenarios": ["no_such_scenario"]}, "scenarios.0: no_such_scenario"),
])
def test_a_suite_file_with_a_mistake_names_the_file_and_key(tmp_path, data, expected):
    path = _suite_file(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_suite(path)
    assert str(path) in _one_line(exc) and expected in str(exc.value)


def test_an_unknown_suite_names_the_known_ones():
    with pytest.raises(ConfigError) as exc:
        load_suite("nightly")
    assert "nightly: no such suite (known: " in _one_line(exc) and "default" in str(exc.value)


# ---------------------------------------------------------------- driving


@pytest.mark.parametrize("name", ["cut_in", "random_routes"])
def test_a_family_of_each_kind_drives(name):
    family = load_family(name)
    params = family.sample(np.random.default_rng(3))
    if name == "random_routes":
        params.update(map="town", vehicles=2, pedestrians=1)
    result = drive(load_stack([], [*PERFECT]), family.scenario(params, f"{name}-t"), render=False, max_time_s=4.0)
    assert result.outcome["error"] is None and result.outcome["collisions"] == 0
    assert result.outcome["route_progress_m"] > 5.0


def test_a_suite_can_send_the_random_routes_family_to_any_opendrive_file(tmp_path):
    """`random_routes: {count: N, params: {map: PATH}}`: the user's own map, by path."""
    mine = tmp_path / "my_town.xodr"
    mine.write_text((Path(__file__).resolve().parents[1] / "configs" / "maps" / "town.xodr").read_text())
    suite = tmp_path / "mine.yaml"
    suite.write_text(f"seed: 5\nfamilies:\n  random_routes: {{count: 2, params: {{map: {mine}}}}}\n")
    draws = load_suite(str(suite)).sample()
    assert [Path(d.scenario.map_path) for d in draws] == [mine, mine]
    assert draws[0].scenario.ego != draws[1].scenario.ego  # two routes on it

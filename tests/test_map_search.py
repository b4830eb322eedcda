"""The map search path: a scenario's `map: Town01` is found through --maps, STAGEPILOT_MAPS, the
project's maps and $CARLA_ROOT, in that order; a missing map is one line naming every place."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from stagepilot.core.maps import CARLA_OPENDRIVE, MAPS_ENV, PROJECT_MAPS, find_map
from stagepilot.core.roadmap import MapError
from stagepilot.pipeline.cli import main
from stagepilot.sim.scenario import SCENARIO_DIR, Scenario, load_scenario
from stagepilot.sim.world import EmbeddedSimulator

from conftest import ROOT, shared_map

STRAIGHT = PROJECT_MAPS / "straight.xodr"
EGO = {"start": {"road": 1, "lane": -1, "s": 20}, "goal": {"road": 1, "lane": -1, "s": 300}}


def _folder_with(tmp_path, folder: str, name: str):
    """A folder holding a copy of the straight map under the file name `name`.xodr."""
    path = tmp_path / folder / f"{name}.xodr"
    path.parent.mkdir(parents=True)
    shutil.copyfile(STRAIGHT, path)
    return path


def test_the_places_are_searched_in_order(tmp_path):
    cli, env = _folder_with(tmp_path, "cli", "Town09"), _folder_with(tmp_path, "env", "Town09")
    carla = _folder_with(tmp_path, f"carla/{CARLA_OPENDRIVE.as_posix()}", "Town09")
    environ = {MAPS_ENV: f"{tmp_path / 'empty'}{os.pathsep}{env.parent}", "CARLA_ROOT": str(tmp_path / "carla")}
    assert find_map("Town09", [cli.parent], environ) == cli.resolve()
    assert find_map("Town09", [], environ) == env.resolve()
    assert find_map("Town09", [], {"CARLA_ROOT": environ["CARLA_ROOT"]}) == carla.resolve()
    # The project's maps come before $CARLA_ROOT.
    shutil.copyfile(STRAIGHT, carla.parent / "straight.xodr")
    assert find_map("straight", [], {"CARLA_ROOT": environ["CARLA_ROOT"]}) == STRAIGHT.resolve()


def test_a_missing_map_is_one_line_naming_every_place_looked(tmp_path):
    with pytest.raises(MapError) as info:
        find_map("Town07", [tmp_path], {MAPS_ENV: "/nonexistent/maps"})
    assert str(info.value) == (
        f"map Town07 not found: no Town07.xodr in --maps {tmp_path}, STAGEPILOT_MAPS /nonexistent/maps "
        f"(no such folder), the project's maps {PROJECT_MAPS}, $CARLA_ROOT (not set)")


def test_a_town_name_resolves_through_stagepilot_maps_and_through_maps_dirs(monkeypatch, tmp_path):
    town = shared_map("Town01")
    monkeypatch.setenv(MAPS_ENV, f"{tmp_path}{os.pathsep}{town.parent}")
    assert load_scenario("town01_route").map_path == str(town)
    monkeypatch.delenv(MAPS_ENV)
    with pytest.raises(MapError, match="map Town01 not found"):
        load_scenario("town01_route")
    assert load_scenario("town01_route", maps_dirs=[town.parent]).map_path == str(town)
    # --maps comes first: a folder with its own Town01 wins over STAGEPILOT_MAPS.
    monkeypatch.setenv(MAPS_ENV, str(town.parent))
    mine = _folder_with(tmp_path, "mine", "Town01")
    assert load_scenario("town01_route", maps_dirs=[mine.parent]).map_path == str(mine.resolve())


def test_a_path_to_an_xodr_file_keeps_working(tmp_path, scenario_file):
    mine = _folder_with(tmp_path, "maps", "mine")
    path = scenario_file({"name": "mine", "map": "maps/mine.xodr", "ego": EGO})
    assert load_scenario(path).map_path == str(mine.resolve())
    with pytest.raises(MapError, match="map maps/other.xodr not found: no such file relative to the scenario"):
        load_scenario(scenario_file({"name": "other", "map": "maps/other.xodr", "ego": EGO}))


def test_a_scenario_built_in_memory_names_its_map(stack):
    scenario = Scenario.model_validate({"name": "memory", "map": "straight", "ego": EGO})
    obs = EmbeddedSimulator(stack, render=False).reset(scenario)
    assert abs(obs.ego.x - 20.0) < 2.0 and abs(obs.ego.y + 1.75) < 0.1  # road 1, lane -1, s = 20


def test_drive_with_a_missing_town_exits_with_one_line(tmp_path, scenario_file):
    path = scenario_file({"name": "lost", "map": "Town07", "ego": EGO})
    env = {k: v for k, v in os.environ.items() if k != "CARLA_ROOT"} | {MAPS_ENV: str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "stagepilot.pipeline.cli", "drive", "--scenario", str(path),
                           "--maps", str(tmp_path / "x"), "--quiet", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr == (
        f"stagepilot: error: {path}: map Town07 not found: no Town07.xodr in --maps {tmp_path / 'x'} "
        f"(no such folder), STAGEPILOT_MAPS {tmp_path}, the project's maps {PROJECT_MAPS}, $CARLA_ROOT (not set)\n")
    assert not (tmp_path / "run").exists()


def test_a_short_drive_on_town01_through_maps(monkeypatch, tmp_path):
    town = shared_map("Town01")
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(MAPS_ENV)
    monkeypatch.delenv("CARLA_ROOT", raising=False)
    out = tmp_path / "run"
    maps = os.path.relpath(town.parent, ROOT)  # a relative --maps, wherever the checkout lies
    assert main(["drive", "--scenario", "town01_route", "--perception", "perfect", "--maps", maps,
                 "--quiet", "--out", str(out), "scenario.duration_s=3"]) == 0
    run = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert run["scenario"]["map"] == str(town)
    assert metrics["outcome"]["duration_s"] == 3.0 and metrics["outcome"]["collisions"] == 0


def test_scenario_yaml_names_the_towns_not_a_folder():
    for name, town in (("town01_route", "Town01"), ("town02_route", "Town02")):
        data = yaml.safe_load((ROOT / "configs" / "scenarios" / f"{name}.yaml").read_text())
        assert data["map"] == town and "shared" not in json.dumps(data)


def test_sim_list_outside_the_project_lists_every_scenario_and_says_which_cannot_load(tmp_path):
    """Run from another folder with no map search path: every scenario is listed, the towns
    it cannot find are marked with the reason, and the exit status is 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("STAGEPILOT_MAPS", "CARLA_ROOT")}
    done = subprocess.run([sys.executable, "-m", "stagepilot.pipeline.cli", "sim", "list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    shipped = {path.stem for path in SCENARIO_DIR.glob("*.yaml")}
    assert set(lines) == shipped
    assert "(cannot run here)" in lines["town01_route"] and "Town01.xodr" in lines["town01_route"]
    assert "(cannot run here)" not in lines["town_loop"]

"""Teardown on a CARLA server, against the recording double (tests/carla_double.py): on a
normal end, an exception mid-drive and Ctrl-C, every actor we spawned is destroyed, walkers'
AI controllers stop first, and the server's settings come back. No server can run here; the
double only counts, and every method it has exists on the real API (checked below)."""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path

import carla
import pytest

from stagepilot.core.config import load_stack
from stagepilot.pipeline.driver import drive
from stagepilot.sim.carla.connection import CarlaError
from stagepilot.sim.scenario import load_scenario

from tests import carla_double
from tests.carla_double import Client, Server

LIBCARLA_PYI = Path(carla.__file__).parent / "libcarla.pyi"


def _pyi_members() -> dict[str, set[str]]:
    """Every class of libcarla.pyi with the names it and its bases define."""
    tree = ast.parse(LIBCARLA_PYI.read_text())
    own, bases = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            names = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            names |= {t.id for n in node.body if isinstance(n, ast.AnnAssign) for t in [n.target]
                      if isinstance(t, ast.Name)}
            names |= {t.id for n in node.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
            own[node.name] = names
            bases[node.name] = [b.id for b in node.bases if isinstance(b, ast.Name)]

    def members(name: str) -> set[str]:
        return own.get(name, set()).union(*(members(b) for b in bases.get(name, [])))

    return {name: members(name) for name in own}


def test_every_method_of_the_double_exists_on_the_real_api() -> None:
    members = _pyi_members()
    missing = []
    for double, names in carla_double.STANDS_FOR.items():
        real = set().union(*(members[n] for n in names))
        for name, _ in inspect.getmembers(double, inspect.isfunction):
            if not name.startswith("_") and name not in real:
                missing.append(f"{double.__name__}.{name} (stands for {'/'.join(names)})")
    assert not missing, "the double has methods the carla API does not: " + ", ".join(missing)


def test_the_api_check_catches_a_made_up_method() -> None:
    members = _pyi_members()
    assert "tick" in members["World"] and "destroy" in members["Vehicle"]  # inherited from Actor
    assert "tick_twice" not in members["World"]


@pytest.fixture
def server(monkeypatch):
    def make(**faults) -> Server:
        server = Server(**faults)
        monkeypatch.setattr(Client, "server", server, raising=False)
        monkeypatch.setattr(carla, "Client", Client)
        return server
    return make


def _config():
    return load_stack(None, ["sim.source=carla", "perception.kind=perfect", "carla.port=2990",
                             "runtime.time_model=ideal"])


def _scenario(name: str = "lead_vehicle_braking", *overrides: str):
    return load_scenario(name, ["duration_s=1.0", *overrides])


def _clean(server: Server) -> None:
    assert server.spawned, "the drive spawned nothing"
    assert not server.alive(), f"actors left on the server: {sorted(server.alive())}"
    assert server.settings.synchronous_mode == server.original.synchronous_mode
    assert server.settings.fixed_delta_seconds == server.original.fixed_delta_seconds
    assert not server.tm_sync


def test_a_normal_drive_cleans_up(server) -> None:
    srv = server()
    result = drive(_config(), _scenario())
    assert result.outcome["frames"] == 21 and not result.interrupted
    sync = [value for what, value in srv.log if what == "settings"]
    assert sync == [1, 0], "synchronous mode on for the drive, the server's own settings after"
    assert srv.loads == [("generate_opendrive_world", "")], "a project map goes to the server as OpenDRIVE"
    standing = result.outcome  # the double's actors never move: the ego stays where it was spawned
    assert standing["off_road"] == 0 and standing["lane_departures"] == 0 and standing["route_progress_m"] < 1.0
    kinds = {a.type_id for a in srv.world.actors}
    assert {"vehicle.lincoln.mkz_2020", "sensor.camera.rgb", "sensor.camera.depth",
            "sensor.camera.semantic_segmentation", "sensor.other.collision"} <= kinds
    _clean(srv)


def test_observations_place_the_ego_and_actors_where_the_plan_put_them(server) -> None:
    from stagepilot.core.messages import Control
    from stagepilot.sim.carla.world import CarlaSimulator

    server()
    sim = CarlaSimulator(_config())
    try:
        obs = sim.reset(_scenario())
        start = sim.placement.resolve(sim.scenario.ego.start, "ego.start")
        for _ in range(3):
            obs = sim.step(Control())
        body = sim.ego_agent()
        assert (body.x, body.y) == pytest.approx(start[:2], abs=1e-3)
        back = -sim.rear_axle_x  # the double's box centre is the actor origin
        assert (obs.ego.x, obs.ego.y) == pytest.approx((start[0] - back * math.cos(start[2]),
                                                        start[1] - back * math.sin(start[2])), abs=1e-3)
        lead = next(o for o in obs.ground_truth.objects if o.kind == "vehicle")
        assert lead.center_ego[0] == pytest.approx(35.0 + back, abs=0.05) and abs(lead.center_ego[1]) < 0.05
        assert obs.ground_truth.lane.on_road and abs(obs.ground_truth.lane.lateral_offset) < 0.01
    finally:
        sim.close()


def test_an_exception_mid_drive_cleans_up_and_names_the_server(server) -> None:
    srv = server(fail_at_tick=8, failure=RuntimeError("time-out of 10000ms while waiting for the simulator"))
    with pytest.raises(CarlaError, match=r"CARLA at localhost:2990: ticking frame 5: the server did not answer"):
        drive(_config(), _scenario())
    _clean(srv)


def test_ctrl_c_mid_drive_cleans_up(server) -> None:
    srv = server(fail_at_tick=8, failure=KeyboardInterrupt())
    result = drive(_config(), _scenario())
    assert result.interrupted and result.outcome["frames"] == 5
    _clean(srv)


def test_walkers_ai_controllers_stop_before_anything_is_destroyed(server) -> None:
    srv = server()
    scenario = _scenario("pedestrian_crossing")
    walker = scenario.actors[0].model_copy(update={"controller": "ai", "ego_within_m": None})
    drive(_config(), scenario.model_copy(update={"actors": [walker]}))
    controllers = [a.id for a in srv.world.actors if a.type_id == "controller.ai.walker"]
    assert controllers, "the walker got no AI controller"
    order = [(what, actor) for what, actor in srv.log if what in ("stop", "destroy")]
    first_destroy = next(i for i, (what, _) in enumerate(order) if what == "destroy")
    assert all(("stop", c) in order[:first_destroy] for c in controllers)
    _clean(srv)


def test_a_server_that_dies_mid_drive_ends_with_one_message_and_no_hang(server, capsys) -> None:
    srv = server(fail_at_tick=4, failure=RuntimeError("time-out of 10000ms while waiting for the simulator"),
                 gone=True)
    with pytest.raises(CarlaError, match="localhost:2990"):
        drive(_config(), _scenario())
    err = capsys.readouterr().err
    assert "may remain on the server" in err and "restarting the server removes them" in err
    assert srv.alive(), "the dead server kept its actors (nothing could reach it)"


def _metadata(path: Path) -> dict[str, dict[str, str]]:
    from mcap.reader import make_reader

    with open(path, "rb") as handle:
        return {m.name: dict(m.metadata) for m in make_reader(handle).iter_metadata()}


def _drive_cli(tmp_path, *extra: str) -> tuple[int, Path]:
    from stagepilot.pipeline.cli import main

    out = tmp_path / "run"
    status = main(["drive", "--sim", "carla", "--port", "2990", "--quiet", "--scenario", "lead_vehicle_braking",
                   "--out", str(out), "--perception", "perfect", "--time-model", "ideal", *extra,
                   "scenario.duration_s=1.0"])
    return status, out


def test_a_carla_drive_replays_with_no_server(server, tmp_path, capsys) -> None:
    from stagepilot.pipeline.cli import main

    srv = server()
    status, out = _drive_cli(tmp_path, "--carla-recorder")
    assert status == 0
    _clean(srv)
    assert ("start_recorder", 0) in srv.log and ("stop_recorder", 0) in srv.log
    simulator = _metadata(out / "drive.mcap")["simulator"]
    assert simulator["simulator"] == "carla" and simulator["server"] == "localhost:2990"
    assert simulator["carla_recorder_file"] == "stagepilot-lead_vehicle_braking-2.log"
    capsys.readouterr()
    assert main(["recording", "info", str(out / "drive.mcap")]) == 0
    assert "CARLA 0.9.16 at localhost:2990, map OpenDriveMap" in capsys.readouterr().out
    dead = Server(fail_at_tick=1, failure=RuntimeError("no server"), gone=True)
    dead.dead = True
    Client.server = dead  # any call to a server now fails: the replay must make none
    capsys.readouterr()
    assert main(["replay", str(out / "drive.mcap"), "--quiet"]) == 0
    assert "match" in capsys.readouterr().out.lower()


def test_a_lost_connection_leaves_a_readable_run_folder(server, tmp_path, capsys) -> None:
    import json

    srv = server(fail_at_tick=10, failure=RuntimeError("time-out of 10000ms while waiting for the simulator"),
                 gone=True)
    status, out = _drive_cli(tmp_path)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stagepilot: error")]
    assert status == 1 and len(err) == 1 and "CARLA at localhost:2990: ticking frame 7" in err[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["outcome"]["frames"] == 7 and "CarlaError" in metrics["outcome"]["error"]
    assert _metadata(out / "drive.mcap")["outcome"]["frames"] == "7"
    assert srv.alive()  # the server died holding them; the message said so


def test_collect_from_carla_writes_the_same_dataset_format(server, tmp_path) -> None:
    import json

    from stagepilot.pipeline.cli import main

    srv = server()
    out = tmp_path / "ds"
    assert main(["collect", "--sim", "carla", "--port", "2990", "--out", str(out), "--frames", "2",
                 "--frames-per-scene", "2", "--split", "train", "--seed", "1", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    coco = json.loads((out / "annotations" / "train.json").read_text())
    cameras = manifest["cameras"] if "cameras" in manifest else {"front": manifest["camera"]}
    front = cameras["front"]
    assert front["K"][0][2] == pytest.approx(319.5), "CARLA's optical axis is the image centre"
    rig = len(load_stack().sim.cameras)
    assert len(coco["images"]) == 2 * rig and all((out / image["file_name"]).is_file() for image in coco["images"])
    assert manifest["splits"]["train"]["scenes"][0]["lighting"]["carla_weather"]
    _clean(srv)


def test_a_town_only_the_server_has_is_loaded_by_name(server, scenario_file, tmp_path) -> None:
    from stagepilot.pipeline.cli import main

    srv = server()
    path = scenario_file({"name": "town07_drive", "map": "Town07", "seed": 1, "duration_s": 0.5,
                          "ego": {"start": {"road": 1, "lane": -1, "s": 20.0}, "goal": {"road": 1, "lane": -1, "s": 200.0}}})
    srv.extra_towns = {"Town07": "straight"}  # the server has it; the map search path does not
    status = main(["drive", "--sim", "carla", "--port", "2990", "--quiet", "--perception", "perfect",
                   "--scenario", str(path), "--out", str(tmp_path / "run")])
    assert status == 0 and ("load_world", "Town07") in srv.loads
    _clean(srv)


def test_a_town_neither_has_is_one_clear_error(server, scenario_file, tmp_path, capsys) -> None:
    from stagepilot.pipeline.cli import main

    server()
    path = scenario_file({"name": "town99_drive", "map": "Town99", "duration_s": 0.5,
                          "ego": {"start": {"x": 0, "y": 0}, "goal": {"x": 50, "y": 0}}})
    status = main(["drive", "--sim", "carla", "--port", "2990", "--quiet", "--scenario", str(path),
                   "--out", str(tmp_path / "run")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 1 and len(err) == 1
    assert "map Town99: the server has no such town (it has Town01, Town02" in err[0]


def test_lights_frozen_for_a_drive_are_running_again_after_it(server) -> None:
    srv = server()
    drive(_config(), _scenario("lead_vehicle_braking", "traffic_lights.enabled=false"))
    lights = [entry for entry in srv.log if entry[0] in ("freeze_lights", "reset_lights")]
    assert lights == [("freeze_lights", 1), ("freeze_lights", 0), ("reset_lights", 0)]
    _clean(srv)


def test_a_cut_in_is_asked_for_until_the_car_changes_lane(server, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(carla_double.TrafficManager, "force_lane_change",
                        lambda self, actor, direction: calls.append(direction), raising=True)
    from stagepilot.sim.scenario import Behaviour

    srv = server()
    scenario = _scenario("lead_vehicle_braking")
    cut_in = Behaviour(action="cut_in", at_t=0.2, side="right", duration_s=0.3)
    car = scenario.actors[0].model_copy(update={"behaviours": [cut_in]})
    drive(_config(), scenario.model_copy(update={"actors": [car]}))
    # the double's car never moves: asked each tick from 0.2 s until 0.2 + 0.3 + 2 s (the 1 s drive ends first)
    assert len(calls) == 16 and all(calls)
    _clean(srv)


def test_a_taken_spawn_point_is_retried_nearby_and_a_failure_names_the_actor(server, monkeypatch) -> None:
    real = carla_double.World.try_spawn_actor
    tried: list[tuple[str, float]] = []

    def crowded(self, blueprint, transform, attach_to=None):
        if blueprint.id.startswith("vehicle.") and blueprint.id != "vehicle.lincoln.mkz_2020":
            tried.append((blueprint.id, transform.location.x))
            if len(tried) < 3 or self.server.crowded:
                return None  # the place is taken
        return real(self, blueprint, transform, attach_to)

    monkeypatch.setattr(carla_double.World, "try_spawn_actor", crowded)
    srv = server()
    srv.crowded = False
    drive(_config(), _scenario())
    assert len(tried) == 3 and len({x for _, x in tried}) == 3, "retried at other places along the lane"
    _clean(srv)
    tried.clear()
    srv = server()
    srv.crowded = True
    with pytest.raises(CarlaError, match=r"could not spawn actors\.0 \(vehicle\.[a-z0-9_.]+\) at \(.*\) or within 6 m"):
        drive(_config(), _scenario())
    assert len(tried) == 7
    assert srv.spawned and not srv.alive(), "the ego and its sensors were destroyed after the failed spawn"


def test_the_maps_heads_bind_to_the_servers_lights_and_the_first_one_is_set(server) -> None:
    """One CARLA light per signalised approach of the junction, found by its stop waypoints:
    each map head gets its light, the timings come from the config, the route's first light is
    red as the scenario asks, and the ground truth reads the lights' states."""
    from stagepilot.core.carla_frame import to_carla_location
    from stagepilot.core.messages import Control
    from stagepilot.sim.carla.world import CarlaSimulator
    from stagepilot.sim.world import load_road_map

    scenario = _scenario("red_light_junction")
    heads = load_road_map(scenario.map_path).signal_heads

    def lights_for(carla_map):
        found = []
        for head in heads:
            road, _, lane = head.stop_line.lane_keys[0]
            wp = carla_map.get_waypoint(to_carla_location(*head.stop_line.p0), lane_type=carla.LaneType.Driving)
            stop = carla_map.get_waypoint_xodr(road, lane, wp.s) if wp is not None else None
            found.append(([stop] if stop is not None else [], to_carla_location(*head.position[:2])))
        return found

    srv = server()
    srv.lights_for = lights_for
    sim = CarlaSimulator(_config())
    try:
        obs = sim.reset(scenario)
        assert len(sim.lights) == len(heads) >= 4 and {h.id for h in sim.signal_heads} == {h.id for h in heads}
        lights = [a for a in srv.world.actors if a.type_id == "traffic.traffic_light"]
        assert all(light.times == {"green": 12.0, "yellow": 3.0, "red": 1.0} for light in lights)
        assert ("reset_lights", 0) in srv.log
        red = [t for t in obs.ground_truth.traffic_lights if t.state == "red"]
        assert len(red) == 1, "the route's first light, and no other, was set to red"
        first = next(light for light in sim.lights if light.current == "red")
        assert any(key in sim.route.segment_keys for key in first.stop_line.lane_keys)
        obs = sim.step(Control())
        assert {t.id: t.state for t in obs.ground_truth.traffic_lights}[first.id] == "red"
    finally:
        sim.close()
    _clean(srv)

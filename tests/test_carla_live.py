"""Against a live CARLA server (0.9.15/0.9.16): runs when CARLA_HOST is set (CARLA_PORT,
default 2000; CARLA_TM_PORT, default 8000), and is skipped otherwise.

    CARLA_HOST=localhost .venv/bin/python -m pytest -m carla

Covers connecting, synchronous mode and restoring the server's settings; driving the Town01
route for 20 s with each perception mode; recording that drive and replaying it with no
server; `evaluate` on a three-scenario CARLA suite; and teardown leaving no actor of ours.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import yaml

from stagepilot.core.config import load_stack
from stagepilot.pipeline.cli import main
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.recorder import Recorder
from stagepilot.sim.scenario import load_scenario, scenario_path

from tests.conftest import shared_map

HOST = os.environ.get("CARLA_HOST", "")
PORT = int(os.environ.get("CARLA_PORT", "2000"))
TM_PORT = int(os.environ.get("CARLA_TM_PORT", "8000"))
pytestmark = [pytest.mark.carla, pytest.mark.slow,
              pytest.mark.skipif(not HOST, reason="no CARLA server configured (set CARLA_HOST)")]
SERVER = [f"carla.host={HOST}", f"carla.port={PORT}", f"carla.tm_port={TM_PORT}", "carla.timeout_s=30"]
CLI_SERVER = ["--sim", "carla", "--host", HOST, "--port", str(PORT), "--tm-port", str(TM_PORT), "--timeout", "30"]


def _client():
    import carla

    client = carla.Client(HOST, PORT)
    client.set_timeout(30.0)
    return client


def _ours(world) -> set[int]:
    """Ids of every vehicle, walker, sensor and walker controller on the server."""
    kinds = ("vehicle.", "walker.", "sensor.", "controller.ai.walker", "static.prop")
    return {a.id for a in world.get_actors() if a.type_id.startswith(kinds)}


def _config(perception: str = "perfect"):
    return load_stack(None, ["sim.source=carla", *SERVER, f"perception.kind={perception}"])


def _route(duration_s: float = 20.0):
    shared_map("Town01")
    return load_scenario("town01_route", [f"duration_s={duration_s}"])


def test_connects_runs_synchronous_and_restores_the_settings() -> None:
    world = _client().get_world()
    before = world.get_settings()
    seen = {}

    def look(obs, record) -> None:
        if obs.frame == 3:
            settings = _client().get_world().get_settings()
            seen.update(sync=settings.synchronous_mode, dt=settings.fixed_delta_seconds)

    result = drive(_config(), _route(1.0), on_frame=look)
    assert result.outcome["frames"] == 21 and result.outcome["error"] is None
    assert seen == {"sync": True, "dt": pytest.approx(0.05)}
    after = _client().get_world().get_settings()
    assert (after.synchronous_mode, after.fixed_delta_seconds) == (before.synchronous_mode, before.fixed_delta_seconds)


@pytest.mark.parametrize("perception", ["perfect", "learned"])
def test_drives_the_town01_route_for_20_s(perception, tmp_path) -> None:
    before = _ours(_client().get_world())
    scenario = _route()
    config = _config(perception)
    result = drive(config, scenario, observers=(Recorder(tmp_path / "drive.mcap", config, scenario),))
    outcome = result.outcome
    assert outcome["frames"] == 401 and outcome["error"] is None
    assert outcome["route_progress_m"] > 20.0, "the ego hardly moved"
    assert outcome["collisions"] == 0 and outcome["red_lights"] == 0
    assert _ours(_client().get_world()) == before, "actors of ours are left on the server"
    # The recording replays with no server: every stage matches its recorded outputs.
    assert main(["replay", str(tmp_path / "drive.mcap"), "--quiet"]) == 0


def test_evaluate_scores_a_three_scenario_suite(tmp_path) -> None:
    shared_map("Town01")
    names = []
    for name in ("town01_route", "town_loop", "lead_vehicle_braking"):  # 20 s each
        data = yaml.safe_load(scenario_path(name).read_text())
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**data, "duration_s": 20}))
        names.append(f"{name}.yaml")
    suite = tmp_path / "carla_suite.yaml"
    suite.write_text(yaml.safe_dump({"description": "three short CARLA scenarios", "seed": 1, "scenarios": names,
                                     "criteria": {"blocked_s": 60}}))
    out = tmp_path / "eval"
    status = main(["evaluate", "--suite", str(suite), "--out", str(out), "--quiet", "--perception", "perfect",
                   *CLI_SERVER])
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["scenarios"]) == 3
    assert all(0.0 <= s["driving_score"] <= 100.0 for s in results["scenarios"])


def test_a_closed_port_beside_the_server_fails_cleanly(capsys, tmp_path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status = main(["drive", "--sim", "carla", "--port", str(port), "--timeout", "2", "--quiet",
                   "--out", str(tmp_path / "run")])
    assert status == 1 and f":{port}" in capsys.readouterr().err

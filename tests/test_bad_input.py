"""Bad input gets one clear line naming the file and the key, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stagepilot.pipeline.cli import main
from stagepilot.core.config import ConfigError, load_stack

GOOD = {
    "name": "bad",
    "map": "straight",
    "ego": {"start": {"road": 1, "lane": -1, "s": 20}, "goal": {"road": 1, "lane": -1, "s": 300}},
}


def with_changes(**changes) -> dict:
    data = {**GOOD, **changes}
    return {k: v for k, v in data.items() if v is not None}


def render(capsys, tmp_path, scenario_path) -> tuple[int, str]:
    code = main(["sim", "render", "--scenario", str(scenario_path), "--out", str(tmp_path / "out"), "--duration", "0.1"])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"wheather": {"preset": "fog"}}, ["wheather", "unknown key"]),
        ({"actors": [{"type": "bicycle", "start": {"x": 0, "y": 0}}]}, ["actors.0", "bicycle"]),
        ({"actors": [{"type": "vehicle", "start": {"road": 1, "lane": -1, "s": 50}, "sped": 3}]}, ["actors.0.sped", "unknown key"]),
        ({"map": "no_such_town"}, ["map", "no_such_town", "not found"]),
        ({"ego": {"start": {"x": 50.0, "y": 40.0}, "goal": {"road": 1, "lane": -1, "s": 300}}}, ["ego.start", "off the road"]),
        ({"ego": {"start": {"road": 1, "lane": -1, "s": 20}, "goal": {"x": 300.0, "y": 60.0}}}, ["ego.goal", "off the road"]),
        ({"ego": {"start": {"road": 1, "lane": -7, "s": 20}, "goal": {"road": 1, "lane": -1, "s": 300}}}, ["ego.start", "no lane -7"]),
        ({"duration_s": -5}, ["duration_s", "greater than 0"]),
        ({"seed": "abc"}, ["seed", "integer"]),
    ],
)
def test_bad_scenario_is_one_line_naming_file_and_key(capsys, tmp_path, scenario_file, changes, expected):
    path = scenario_file(with_changes(**changes))
    code, err = render(capsys, tmp_path, path)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert str(path) in err
    for text in expected:
        assert text in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "xodr, expected",
    [
        ("<OpenDRIVE><road id='1'", "malformed OpenDRIVE XML at line 1"),
        ("<html><body>not a map</body></html>", "not an OpenDRIVE file"),
        ("<OpenDRIVE><header/></OpenDRIVE>", "no <road> elements"),
    ],
)
def test_malformed_opendrive_names_the_map_file(capsys, tmp_path, scenario_file, xodr, expected):
    bad_map = tmp_path / "broken.xodr"
    bad_map.write_text(xodr)
    path = scenario_file(with_changes(map=str(bad_map)))
    code, err = render(capsys, tmp_path, path)
    assert code == 2 and len(err.splitlines()) == 1
    assert str(path) in err and "map" in err and str(bad_map) in err and expected in err


def test_malformed_scenario_yaml(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nego: {start: [1, 2\n")
    code, err = render(capsys, tmp_path, path)
    assert code == 2 and str(path) in err and "malformed YAML at line" in err


def test_unknown_scenario_name_lists_the_known_ones(capsys, tmp_path):
    code, err = render(capsys, tmp_path, "no_such_scenario")
    assert code == 2 and "no_such_scenario" in err and "town_loop" in err


@pytest.mark.parametrize(
    "override, expected",
    [
        ("sim.dtt=0.1", "command line: sim.dtt: unknown key"),
        ("vehicle.mass_kg=-3", "command line: vehicle.mass_kg: Input should be greater than 0"),
        ("sim.cameras.front.fov_deg=wide", "command line: sim.cameras.front.fov_deg: Input should be a valid number"),
        ("nonsense", "is not of the form key.path=value"),
        ("controller.kind=lqr", "command line: controller.kind: Input should be 'pid_pure_pursuit', 'pid_stanley' or 'mpc'"),
        ("controller.mpc.horizon_steps=-5", "command line: controller.mpc.horizon_steps: Input should be greater than"),
        ("controller.longitudinal.kp_vv=[1, 2]", "command line: controller.longitudinal.kp_vv: unknown key"),
        ("planner.lattice.weights.ofset=2", "command line: planner.lattice.weights.ofset: unknown key"),
        ("planner.behaviour.comfort_decel=-1", "command line: planner.behaviour.comfort_decel: Input should be greater than 0"),
    ],
)
def test_bad_stack_override_names_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        load_stack([], [override])
    assert expected in str(info.value)


def test_bad_stack_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("sim:\n  render:\n    ground_resolution_m: 5\n")
    with pytest.raises(ConfigError) as info:
        load_stack([path])
    assert str(path) in str(info.value) and "sim.render.ground_resolution_m" in str(info.value)


def test_later_config_files_and_overrides_win(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("sim:\n  dt_s: 0.02\ntraffic:\n  idm:\n    min_gap_m: 3.0\n")
    second.write_text("sim:\n  dt_s: 0.04\n")
    config = load_stack([first, second], ["traffic.idm.max_accel=1.1"])
    assert config.sim.dt_s == 0.04
    assert config.traffic.idm.min_gap_m == 3.0
    assert config.traffic.idm.max_accel == 1.1
    assert config.sim.cameras["front"].width == 640  # untouched defaults survive


def test_cli_entry_point_prints_no_traceback(tmp_path, scenario_file):
    path = scenario_file(with_changes(wheather={"preset": "fog"}))
    result = subprocess.run(
        [sys.executable, "-m", "stagepilot.pipeline.cli", "sim", "render", "--scenario", str(path), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("stagepilot: error:") and "wheather" in result.stderr

"""Every file and override the CLI reads goes through one bounded, strict reader: whatever a
user hands it, the answer is the value, or one line naming the file (or the command line) and
the key, exit status 2, never a traceback. Ends with a seeded fuzz of the shipped configs."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest
import yaml

from stagepilot.core.config import DEFAULT_STACK, ConfigError, load_stack
from stagepilot.core.roadmap import MapError
from stagepilot.pipeline.cli import main
from stagepilot.sim.scenario import SCENARIO_DIR, load_scenario

GOOD = {
    "name": "inputs",
    "map": "straight",
    "ego": {"start": {"road": 1, "lane": -1, "s": 20}, "goal": {"road": 1, "lane": -1, "s": 300}},
}
GOOD_TEXT = yaml.safe_dump(GOOD, sort_keys=False)


def run(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def render(capsys, tmp_path: Path, scenario: str | Path, *overrides: str) -> tuple[int, str]:
    return run(capsys, ["sim", "render", "--scenario", str(scenario), "--out", str(tmp_path / "out"),
                        "--duration", "0.1", *overrides])


def config_show(capsys, *args: str) -> tuple[int, str]:
    return run(capsys, ["config", "show", *args])


def assert_one_line(code: int, err: str, *expected: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("stagepilot: error: ") and "Traceback" not in err
    for text in expected:
        assert text in err, err


def write(tmp_path: Path, content: str | bytes, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# ---------------------------------------------------------------- the reader


def test_a_scenario_that_is_not_utf8(capsys, tmp_path):
    path = write(tmp_path, b"name: caf\xe9\nmap: straight\n")
    assert_one_line(*render(capsys, tmp_path, path), str(path), "not UTF-8 text (byte 0xe9 at offset 9)")


def test_an_unbounded_scenario_file_is_read_no_further_than_the_bound(capsys, tmp_path):
    assert_one_line(*render(capsys, tmp_path, "/dev/zero"), "/dev/zero: larger than 16 MiB; not a config file")


def test_an_empty_scenario_names_the_file_not_defaults(capsys, tmp_path):
    path = write(tmp_path, "")
    code, err = render(capsys, tmp_path, path)
    assert_one_line(code, err, str(path), "empty")
    assert "defaults" not in err


def test_a_comment_only_stack_file_names_the_file(capsys, tmp_path):
    path = write(tmp_path, "# nothing yet\n", "mine.yaml")
    assert_one_line(*config_show(capsys, "--config", str(path)), str(path), "no YAML content")


def test_a_duplicate_key_is_an_error_not_last_wins(capsys, tmp_path):
    path = write(tmp_path, GOOD_TEXT + "seed: 1\nseed: 2\n")
    line = GOOD_TEXT.count("\n") + 2
    assert_one_line(*render(capsys, tmp_path, path), str(path), f"line {line}: duplicate key 'seed'")


def test_a_duplicate_key_in_a_stack_file_names_its_line(capsys, tmp_path):
    path = write(tmp_path, "sim:\n  dt_s: 0.05\n  dt_s: 0.02\n", "mine.yaml")
    assert_one_line(*config_show(capsys, "--config", str(path)), str(path), "line 3: duplicate key 'dt_s'")


def test_a_yaml_alias_bomb_is_one_short_line(capsys, tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = write(tmp_path, GOOD_TEXT + "\n".join(lines) + "\ndescription: *a8\n")
    code, err = render(capsys, tmp_path, path)
    assert_one_line(code, err, str(path), "alias", "not supported")
    assert len(err) < 300


def test_yaml_nested_without_end_is_one_line(capsys, tmp_path):
    path = write(tmp_path, GOOD_TEXT + "description: " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_line(*render(capsys, tmp_path, path), str(path), "nested deeper than")


def test_a_training_config_that_is_not_utf8(capsys, tmp_path):
    path = write(tmp_path, b"epochs: 3\nnotes: \xff\xfe\n", "train.yaml")
    assert_one_line(*run(capsys, ["train", "--config", str(path)]), str(path), "not UTF-8 text (byte 0xff at offset 17)")


@pytest.mark.parametrize("content, expected", [
    (b"<OpenDRIVE>\xff</OpenDRIVE>", "not UTF-8 text (byte 0xff at offset 11)"),
    (b"", "empty file"),
])
def test_a_map_file_goes_through_the_reader(capsys, tmp_path, content, expected):
    bad_map = write(tmp_path, content, "broken.xodr")
    path = write(tmp_path, yaml.safe_dump({**GOOD, "map": str(bad_map)}))
    assert_one_line(*render(capsys, tmp_path, path), str(path), "map", str(bad_map), expected)


# ---------------------------------------------------------------- where an error comes from


@pytest.mark.parametrize("override, expected", [
    ("simm.dt_s=0.02", "command line: simm: unknown key"),  # a new top-level section
    ("sim.dt_s.steps=3", "command line: sim.dt_s: Input should be a valid number"),  # a value made a mapping
    ("perception.learned.checkpoint.path=x", "command line: perception.learned.checkpoint: "),
    ("sim.cameras.front.fov_deg={a: 1, a: 2}", "command line: sim.cameras.front.fov_deg={a: 1, a: 2}: duplicate key 'a'"),
    ("sim.cameras.front.fov_deg=[*wide]", "command line: sim.cameras.front.fov_deg=[*wide]: alias *wide"),
])
def test_a_bad_override_is_blamed_on_the_command_line(capsys, override, expected):
    code, err = config_show(capsys, override)
    assert_one_line(code, err, expected)
    assert "stack.yaml" not in err


def test_an_unknown_scenario_override_key_is_blamed_on_the_command_line(capsys, tmp_path, scenario_file):
    path = scenario_file(GOOD)
    code, err = render(capsys, tmp_path, path, "scenario.wheather.preset=fog")
    assert_one_line(code, err, "command line: wheather: unknown key")
    assert str(path) not in err


def test_an_override_that_breaks_a_section_is_blamed_on_the_command_line(capsys, tmp_path, scenario_file):
    path = scenario_file(GOOD)
    code, err = render(capsys, tmp_path, path, "scenario.ego.goal={road: 1, lane: -1, s: 20}")
    assert_one_line(code, err, "command line: ego: ego.goal is at ego.start: a zero-length route")


def test_an_echoed_value_is_clipped(capsys):
    code, err = config_show(capsys, "sim.cameras.front.fov_deg=" + "w" * 5000)
    assert_one_line(code, err, "command line: sim.cameras.front.fov_deg")
    assert len(err) < 300


# ---------------------------------------------------------------- finite, physical numbers


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "0", "soon"])
def test_render_duration_must_be_finite_and_positive(capsys, value):
    with pytest.raises(SystemExit) as info:
        main(["sim", "render", "--out", "unused", "--duration", value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.splitlines() == [f"stagepilot sim render: error: argument --duration: expected a finite number > 0, "
                                f"got '{value}' (see stagepilot sim render --help)"]


@pytest.mark.parametrize("override, expected", [
    ("faults.stage_delay_ms={planner: -50}", "command line: faults.stage_delay_ms.planner: Input should be greater than or equal to 0"),
    ("faults.stage_delay_ms={planner: .nan}", "command line: faults.stage_delay_ms.planner: Input should be a finite number"),
    ("faults.stage_delay_ms={planner: 1.0e+9}", "command line: faults.stage_delay_ms.planner: Input should be less than or equal to"),
    ("runtime.stages.planner.budget_ms=.inf", "command line: runtime.stages.planner.budget_ms: Input should be a finite number"),
    ("perception.learned.score_threshold={vehicle: .nan}", "command line: perception.learned.score_threshold.vehicle: Input should be a finite"),
    ("planner.lattice.horizons_s=[2.0, .nan]", "command line: planner.lattice.horizons_s.1: Input should be a finite number"),
    ("planner.behaviour.max_decel=1e300", "command line: planner.behaviour.max_decel: Input should be less than or equal to"),
    ("planner.behaviour.look_ahead_m=1e300", "command line: planner.behaviour.look_ahead_m: Input should be less than or equal to"),
    ("controller.longitudinal.kp_bp_mps=[0, 1e300]", "command line: controller.longitudinal.kp_bp_mps.1: Input should be less than"),
    ("vehicle.mass_kg=.inf", "command line: vehicle.mass_kg: Input should be a finite number"),
])
def test_stack_numbers_are_finite_and_in_range(capsys, override, expected):
    assert_one_line(*config_show(capsys, override), expected)


def test_a_stack_file_with_nan_names_the_file_and_key(capsys, tmp_path):
    path = write(tmp_path, "sim:\n  cameras:\n    front: {x: .nan}\n", "mine.yaml")
    assert_one_line(*config_show(capsys, "--config", str(path)), f"{path}: sim.cameras.front.x: Input should be a finite number")


@pytest.mark.parametrize("changes, expected", [
    ({"actors": [{"type": "vehicle", "start": {"road": 1, "lane": -1, "s": 50}, "speed": 1e300}]},
     "actors.0.speed: Input should be less than or equal to 100"),
    ({"ego": {**GOOD["ego"], "initial_speed": math.inf}}, "ego.initial_speed: Input should be a finite number"),
    ({"duration_s": math.nan}, "duration_s: Input should be a finite number"),
    ({"duration_s": 1e9}, "duration_s: Input should be less than or equal to"),
    ({"ego": {"start": {"x": 1e300, "y": 0.0}, "goal": GOOD["ego"]["goal"]}}, "ego.start.x: Input should be less than"),
    ({"actors": [{"type": "static", "kind": "cone", "pose": {"route_s": 30}, "color_rgb": [999, 0, 0]}]},
     "actors.0.color_rgb.0: Input should be less than or equal to 255"),
])
def test_scenario_numbers_are_finite_and_in_range(capsys, tmp_path, scenario_file, changes, expected):
    path = scenario_file({**GOOD, **changes})
    assert_one_line(*render(capsys, tmp_path, path), f"{path}: {expected}")


def test_a_goal_at_the_start_is_a_zero_length_route(capsys, tmp_path, scenario_file):
    path = scenario_file({**GOOD, "ego": {"start": GOOD["ego"]["start"], "goal": dict(GOOD["ego"]["start"])}})
    assert_one_line(*render(capsys, tmp_path, path), f"{path}: ego: ego.goal is at ego.start: a zero-length route")


# ---------------------------------------------------------------- fuzz


SOURCES = [DEFAULT_STACK, *sorted(SCENARIO_DIR.glob("*.yaml"))]
ODD_VALUES = ["text", "", 0, -1, 1.5, True, None, [], {}, [1, "a"], {"k": 1}, 1e300, -1e300, 10**30, 2**64,
              5e-324, math.nan, math.inf, -math.inf, "1e400", "\u2028", "\u202egnirts", "caf\u00e9 \U0001F697",
              "\x00", "\x85line", "a\nb"]
ODD_STRINGS = ["", "a\nb", "\u2028", "\x00", "\x1b[31m", "x" * 5000, "/dev/zero", "../" * 50 + "etc", "town.xodr",
               "\u00fcber \U0001F6A6", "a" * 300 + ".xodr"]


def _paths(tree, prefix=()):
    """Every key path (and list index) of a parsed YAML tree."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _parent(tree, path):
    for part in path[:-1]:
        tree = tree[part]
    return tree


def _mutate_tree(rng: random.Random, tree) -> None:
    path = rng.choice(list(_paths(tree)))
    parent, key = _parent(tree, path), path[-1]
    action = rng.choice(["value", "value", "string", "delete", "key", "unknown"])
    strings = [p for p in _paths(tree) if isinstance(_parent(tree, p)[p[-1]], str)]
    if action == "string" and strings:
        path = rng.choice(strings)
        _parent(tree, path)[path[-1]] = rng.choice(ODD_STRINGS)
    elif action == "value":
        parent[key] = rng.choice(ODD_VALUES)
    elif action == "delete":
        del parent[key]
    elif action == "key" and isinstance(parent, dict):
        parent[rng.choice(["\u00fcber", "x" * 200, "a.b", "\u2029", 7, None, True])] = parent.pop(key)
    elif isinstance(parent, dict):
        parent[f"unknown_{rng.randrange(100)}"] = rng.choice(ODD_VALUES)


def _mutate_text(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\n")
    at = rng.randrange(len(lines))
    action = rng.choice(["truncate", "duplicate", "bytes", "alias", "digits", "indent"])
    if action == "truncate":
        return data[: rng.randrange(len(data) + 1)]
    if action == "duplicate" and re.match(rb"\s*[\w]+:", lines[at]):
        lines.insert(at + 1, lines[at])
    elif action == "bytes":
        lines[at] += rng.choice([b"\xff", b"\xc3", b"\x00", b"\t", b": [", b" &x", b" *x", b"\xef\xbb\xbf"])
    elif action == "alias":
        lines += [b"zz: &z [1, 2]", b"zw: *z"]
    elif action == "digits":
        lines[at] = re.sub(rb"\d+(\.\d+)?", b"9" * rng.choice([20, 400, 5000]), lines[at], count=1)
    else:
        lines[at] = b" " * rng.randrange(1, 5) + lines[at]
    return b"\n".join(lines)


def mutated(rng: random.Random, source: Path) -> bytes:
    """One mutant of a shipped YAML file: a few tree edits, then maybe a few byte edits."""
    tree = yaml.safe_load(source.read_text())
    for _ in range(rng.randint(0, 3)):
        _mutate_tree(rng, tree)
    data = yaml.safe_dump(tree, sort_keys=False, allow_unicode=rng.random() < 0.5).encode()
    for _ in range(rng.choice([0, 0, 1, 2])):
        data = _mutate_text(rng, data)
    return data


def _load(source: Path, path: Path) -> None:
    if source == DEFAULT_STACK:
        load_stack([path])
    else:
        load_scenario(path)


def _fuzz_problem(source: Path, path: Path) -> str | None:
    """Why this mutant's answer is wrong, or None when it loads or fails with one good line."""
    try:
        _load(source, path)
    except (ConfigError, MapError) as exc:
        message = str(exc)
        if len(message.splitlines()) != 1 or len(message) > 2000:
            return f"not one short line: {message[:300]!r}"
        if str(path) not in message and "command line" not in message:
            return f"does not name the file: {message[:300]!r}"
    except Exception as exc:  # noqa: BLE001  (the point of the test)
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    return None


@pytest.mark.parametrize("chunk", range(12))
def test_fuzz_mutated_configs_load_or_fail_with_one_line(tmp_path, chunk):
    rng = random.Random(1000 + chunk)
    problems = []
    for case in range(50):  # 12 x 50 = 600 cases
        source = rng.choice(SOURCES)
        path = write(tmp_path, mutated(rng, source), f"case{case}.yaml")
        problem = _fuzz_problem(source, path)
        if problem:
            problems.append(f"seed {1000 + chunk} case {case} ({source.name}): {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("seed", range(5))
def test_fuzz_through_config_show(capsys, tmp_path, seed):
    rng = random.Random(seed)
    path = write(tmp_path, mutated(rng, DEFAULT_STACK), "stack.yaml")
    code, err = config_show(capsys, "--config", str(path))
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:
        assert_one_line(code, err, str(path))


def test_a_route_with_no_length_is_one_line_naming_the_map():
    from stagepilot.core.config import CONFIG_ROOT
    from stagepilot.core.roadmap import RoadMap

    road_map = RoadMap.load(CONFIG_ROOT / "maps" / "straight.xodr")
    start = road_map.route([(10.0, -1.75), (60.0, -1.75)]).path.points[0]
    with pytest.raises(MapError, match=r"straight\.xodr: the route .* has no length: the goal is at the start"):
        road_map.route([tuple(start), tuple(start + 1e-9)])

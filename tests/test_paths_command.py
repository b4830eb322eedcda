"""`stagepilot paths`: what learned perception timed on this machine and remembers, listed with
each candidate's time, and forgotten on request so that the next run times again."""

from __future__ import annotations

import json

import pytest

from stagepilot.core.config import LearnedPerceptionConfig
from stagepilot.perception import operating
from stagepilot.perception.paths import cpu_identity
from stagepilot.perception.runner import NetworkRunner
from stagepilot.pipeline.cli import main
from stagepilot.pipeline.commands import _path_line


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    return tmp_path


def test_a_timed_path_is_listed_with_its_candidates_then_forgotten_and_timed_again(cache, capsys):
    first = NetworkRunner(LearnedPerceptionConfig(threads=1), batch=1)
    assert first.path["chosen_by"] == "measured"
    assert main(["paths", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["cpu"] == cpu_identity()
    [row] = listed["choices"]
    assert row["kind"] == "network path" and row["this_cpu"]
    assert row["chosen"] == f"{first.path['backend']} {first.path['dtype']}"
    assert row["timed_ms"] == first.path["candidates_ms"]
    h, w = first.input_size
    assert row["timed_on"] == f"1 x {h}x{w}, 1 threads"  # what the times mean

    assert main(["paths"]) == 0
    text = capsys.readouterr().out
    assert f"network path: {row['chosen']}" in text and f"timed on 1 x {h}x{w}" in text
    fastest = min(row["timed_ms"], key=row["timed_ms"].get)
    assert text.index(fastest) < min(text.index(n) for n in row["timed_ms"] if n != fastest)  # fastest first

    again = NetworkRunner(LearnedPerceptionConfig(threads=1), batch=1)
    assert again.path["chosen_by"] == "remembered"
    # what a drive prints of it (perception/learned.py ``path``: the runner's and the point's)
    point = operating.PointChoice(operating.BY_NAME["main_only"], "measured", 14.0, {"main_only": 10.31})
    line = _path_line({**first.path, "operating_point": point.describe()})
    assert line == (f"perception: {row['chosen']} on cpu (measured), operating point main_only "
                    "(measured: network 10.31 ms against a target of 14 ms)")
    assert _path_line({**again.path, "operating_point": point.describe()}).endswith(
        "; `stagepilot paths` lists what this machine remembers")
    assert main(["paths", "--forget"]) == 0
    assert "forgot 1 remembered choice " in capsys.readouterr().out
    assert not (cache / "paths.json").exists()
    assert main(["paths"]) == 0
    assert "nothing remembered" in capsys.readouterr().out
    after = NetworkRunner(LearnedPerceptionConfig(threads=1), batch=1)
    assert after.path["chosen_by"] == "measured"


def test_an_operating_point_is_listed_in_ladder_order_with_its_target_and_its_steps(cache, capsys):
    point = operating.PointChoice(operating.BY_NAME["main_only"], "measured", 14.0,
                                  {"full": 30.1, "main_only": 12.0, "main_unzoomed": 7.5}, "point-test",
                                  ("full", "main_only", "main_unzoomed"))
    assert point.step_down(812, "the stage took over 32 ms on 3 of its last 100 frames").name == "main_unzoomed"
    assert main(["paths"]) == 0
    text = capsys.readouterr().out
    assert "operating point: main_unzoomed" in text
    assert "against a target of 14 ms: full 30.1, main_only 12, main_unzoomed 7.5" in text
    assert "stepped down from main_only to main_unzoomed in a drive: the stage took over 32 ms" in text


def test_an_unreadable_memory_file_is_named_and_can_be_forgotten(cache, capsys):
    (cache / "paths.json").write_text("{truncated")
    assert main(["paths"]) == 2
    err = capsys.readouterr().err
    assert "paths.json: not JSON" in err and "stagepilot paths --forget" in err
    assert main(["paths", "--forget"]) == 0
    assert "forgot 0 remembered choices" in capsys.readouterr().out
    assert not (cache / "paths.json").exists()

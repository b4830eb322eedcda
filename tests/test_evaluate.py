"""`stagepilot evaluate`: the same scores on 1 worker, 2 workers and Ray; bad input is one line
before anything runs; a crashing scenario fails alone; --compare finds a planted change; the
default suite runs end to end with perfect perception; a signal stops it with its workers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stagepilot.pipeline import driver
from stagepilot.pipeline.cli import main
from stagepilot.pipeline.evaluation import SCORE_FIELDS, evaluate

from conftest import default_signals, one_line_error

MINI = """\
description: three short scenarios, for the tests
seed: 3
families:
  lead_vehicle_brakes: 1
  cut_in: 1
  junction_right_turn: 1
"""


@pytest.fixture
def mini(tmp_path) -> Path:
    path = tmp_path / "mini.yaml"
    path.write_text(MINI)
    return path


def _scores(evaluation) -> list[tuple]:
    return [(s["id"], *(json.dumps(s.get(k), sort_keys=True) for k in SCORE_FIELDS)) for s in evaluation.scenarios]


def test_scores_are_identical_on_one_worker_two_workers_and_ray(mini, tmp_path):
    common = {"overrides": ["perception.kind=perfect", "perception.perfect.coverage=all"], "record": False}
    one = evaluate(str(mini), workers=1, out_dir=tmp_path / "one", **common)
    two = evaluate(str(mini), workers=2, out_dir=tmp_path / "two", **common)
    ray = evaluate(str(mini), workers=2, backend="ray", out_dir=tmp_path / "ray", **common)
    assert [s["status"] for s in one.scenarios] == ["completed"] * 3, one.scenarios
    assert _scores(one) == _scores(two) == _scores(ray)
    assert one.mean_driving_score == two.mean_driving_score == ray.mean_driving_score


@pytest.mark.parametrize("suite, expected", [
    ("seed: 1\nfamilies: {no_such_family: 2}\n", "no such scenario family"),
    ("seed: 1\nfamilies: {cut_in: {count: 2, params: {cutter_speed: 30.0}}}\n", "cutter_speed = 30.0 is outside its range"),
    ("seed: 1\nfamilies: {cut_in: 2}\nworkers: 3\n", "workers: unknown key"),
])
def test_bad_suites_are_one_line_before_any_scenario_runs(tmp_path, capsys, suite, expected):
    path = tmp_path / "suite.yaml"
    path.write_text(suite)
    out = tmp_path / "out"
    line = one_line_error(capsys, ["evaluate", "--suite", str(path), "--out", str(out), "--quiet"])
    assert expected in line and str(path) in line
    assert not out.exists()  # nothing ran, nothing was written


def test_an_unreachable_ray_address_is_one_line_before_any_scenario_runs(mini, tmp_path, capsys):
    out = tmp_path / "out"
    line = one_line_error(capsys, ["evaluate", "--suite", str(mini), "--backend", "ray", "--ray-address",
                                    "127.0.0.1:1", "--out", str(out), "--quiet"])
    assert "--ray-address 127.0.0.1:1: cannot reach the Ray cluster" in line
    assert not out.exists()


def test_a_crashing_scenario_is_reported_failed_and_the_others_complete(mini, tmp_path, monkeypatch):
    real = driver.drive

    def crashing(config, scenario, **kwargs):
        if scenario.name == "cut_in-01":
            raise RuntimeError("planted crash in the planner")
        return real(config, scenario, **kwargs)

    monkeypatch.setattr(driver, "drive", crashing)
    evaluation = evaluate(str(mini), workers=1, out_dir=tmp_path / "ev", overrides=["perception.kind=perfect", "perception.perfect.coverage=all"],
                          record=False)
    by_id = {s["id"]: s for s in evaluation.scenarios}
    assert by_id["cut_in-01"]["status"] == "failed"
    assert by_id["cut_in-01"]["error"] == "RuntimeError: planted crash in the planner"
    assert by_id["cut_in-01"]["driving_score"] == 0.0
    assert [by_id[i]["status"] for i in ("lead_vehicle_brakes-01", "junction_right_turn-01")] == ["completed"] * 2


def test_compare_finds_a_score_change_planted_by_a_config_change(mini, tmp_path, capsys):
    before = tmp_path / "before"
    assert main(["evaluate", "--suite", str(mini), "--perception", "perfect", "--out", str(before), "--quiet",
                 "--no-record"]) == 0
    capsys.readouterr()
    # Perception that sees 1 m ahead: the lead car that brakes is seen too late.
    after = tmp_path / "after"
    assert main(["evaluate", "--suite", str(mini), "--perception", "perfect", "--out", str(after), "--quiet",
                 "--no-record", "--compare", str(before), "perception.perfect.max_range_m=1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("lead_vehicle_brakes-01"))
    delta = float(row.split()[-1])
    assert delta < -10.0, row
    old = json.loads((before / "results.json").read_text())["scenarios"][0]["driving_score"]
    new = json.loads((after / "results.json").read_text())["scenarios"][0]["driving_score"]
    assert delta == pytest.approx(new - old, abs=0.05)
    assert "compared with" in out and (after / "report.md").read_text().count("vs compared") == 1


@pytest.mark.slow
def test_the_default_suite_runs_end_to_end_and_scores_the_same_on_1_and_2_workers_and_ray(tmp_path, capsys):
    out = tmp_path / "default"
    # coverage all: the planning stack on its own, with no camera to render (the rig oracle's
    # figures are docs/results/eval/default-perfect.json's)
    assert main(["evaluate", "--suite", "default", "--perception", "perfect", "--workers", "2", "--out", str(out),
                 "--quiet", "perception.perfect.coverage=all"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["scenarios"]) == 40 and results["mean_driving_score"] >= 90.0, results["families"]
    assert not [s["id"] for s in results["scenarios"] if s["status"] == "failed"]
    for name in ("report.md", "scores.png", "infractions.png", "comfort.png"):
        assert (out / name).is_file()
    assert (out / "scenarios" / "cut_in-01" / "drive.mcap").is_file()
    assert "mean driving score" in capsys.readouterr().out
    common = {"overrides": ["perception.kind=perfect", "perception.perfect.coverage=all"], "record": False}
    one = evaluate("default", workers=1, out_dir=tmp_path / "one", **common)
    ray = evaluate("default", workers=2, backend="ray", out_dir=tmp_path / "ray", **common)
    two = [(s["id"], *(json.dumps(s.get(k), sort_keys=True) for k in SCORE_FIELDS)) for s in results["scenarios"]]
    assert _scores(one) == two == _scores(ray)


def _children(pid: int) -> set[int]:
    """The processes `pid` started (Linux /proc), its workers' children left out."""
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(c) for c in (task / "children").read_text().split()}
    return children


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux /proc")
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_stops_evaluate_and_its_workers(mini, tmp_path, signum, status):
    """`kill` (a job scheduler) and a closed terminal stop `evaluate --workers 2` as Ctrl-C does:
    the drives in flight are ended with it, and no worker outlives the command."""
    out = tmp_path / "eval"
    proc = subprocess.Popen([sys.executable, "-m", "stagepilot.pipeline.cli", "evaluate", "--suite", str(mini),
                             "--perception", "perfect", "--workers", "2", "--no-record", "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not any((out / "scenarios").glob("*/*")):
        time.sleep(0.2)  # until a drive writes into its run folder: the workers are busy
    assert proc.poll() is None, proc.communicate()
    workers = _children(proc.pid)
    assert workers
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr
    assert "interrupted" in stderr
    time.sleep(1.0)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
             and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
    assert not alive, f"workers {alive} outlived `evaluate`"

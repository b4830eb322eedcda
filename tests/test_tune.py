"""`stagepilot tune`: bad spaces and storages are one line before any trial runs; a short study
(3 scenarios, 4 trials, 2 workers) writes an overlay that re-evaluates to its score exactly; a
hopeless trial is pruned before its last scenario; an interrupted study resumes to the
requested number of trials; trials run on local Ray."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from stagepilot.core.config import ConfigError, load_stack
from stagepilot.pipeline.evaluation import evaluate
from stagepilot.pipeline.tuning import TuneOptions, tune
from stagepilot.pipeline.tuning_space import load_space, overlay, schema_leaf
from conftest import PERFECT, ROOT, default_signals, one_line_error

SMOKE = "smoke"  # configs/suites/smoke.yaml: three short scenarios


def _space(tmp_path: Path, params: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"params": params}))
    return path


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- bad input, before any trial


@pytest.mark.parametrize("params, expected", [
    ({"planner.lattice.weights.ofset": {"type": "float", "low": 0.1, "high": 1.0}},
     "planner.lattice.weights.ofset: unknown key: planner.lattice.weights has no 'ofset' "
     "(did you mean planner.lattice.weights.offset?)"),
    ({"planner.behaviour.time_headway_s": {"type": "float", "low": 0.5, "high": 90.0}},
     "planner.behaviour.time_headway_s: high 90 is outside the schema's bounds (> 0 and <= 60)"),
    ({"planner.lattice.limits.min_accel": {"type": "float", "low": -12.0, "high": -1.0}},
     "low -12 is outside the schema's bounds (>= -10 and < 0)"),
    ({"controller.kind": {"type": "categorical", "choices": ["mpc", "lqr"]}},
     "controller.kind: choice 'lqr' is not allowed by the schema (allowed: pid_pure_pursuit, pid_stanley, mpc)"),
    ({"planner.lattice.num_offsets": {"type": "float", "low": 3, "high": 9}},
     "type float does not fit the schema's int key"),
    ({"planner.lattice.horizons_s.0": {"type": "float", "low": 1.0, "high": 9.0}},
     "the stack does not validate with 9.0"),
    ({"planner.lattice.weights": {"type": "float", "low": 0.1, "high": 1.0}}, "not a single value that can be tuned"),
])
def test_a_bad_space_is_one_line_naming_the_key_before_any_trial(tmp_path, capsys, params, expected):
    space = _space(tmp_path, params)
    out = tmp_path / "study"
    line = one_line_error(capsys, ["tune", "--space", str(space), "--suite", SMOKE, "--trials", "2",
                                    "--out", str(out), "--quiet", *PERFECT])
    assert expected in line and str(space) in line, line
    assert not out.exists()  # no study folder, no trial


@pytest.mark.parametrize("url", ["postgresql://tuner@127.0.0.1:1/studies", "nosuchdb://somewhere/x",
                                 "sqlite:////no/such/folder/study.db"])
def test_an_unreadable_storage_url_is_one_line_before_any_trial(tmp_path, capsys, url):
    out = tmp_path / "study"
    line = one_line_error(capsys, ["tune", "--space", "planner", "--suite", SMOKE, "--trials", "2",
                                    "--storage", url, "--out", str(out), "--quiet", *PERFECT])
    assert line.startswith(f"stagepilot: error: --storage {url}: cannot open the study storage (")
    assert not out.exists()


def test_the_shipped_spaces_validate_and_the_detuned_overlay_lies_inside_the_planner_space():
    for name in ("planner", "controller"):
        assert len(load_space(name).params) >= 7
    planner = {p.key: p.spec for p in load_space("planner").params}
    detuned = yaml.safe_load((ROOT / "configs" / "tuning" / "detuned.yaml").read_text())

    def keys(tree, prefix=""):
        for key, value in tree.items():
            yield from keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]

    for key, value in keys(detuned):
        assert key in planner, key  # a tuner of the planner space can undo every detuned key
        assert planner[key].low <= value <= planner[key].high, key
    load_stack([ROOT / "configs" / "tuning" / "detuned.yaml"], [*PERFECT])


def test_a_table_entry_is_tuned_by_index_and_written_as_the_whole_table():
    base = load_stack()
    leaf = schema_leaf("controller.longitudinal.kp_v.1", base, "test")
    assert leaf.kind is float and leaf.container == "tuple"
    tree = overlay({"controller.longitudinal.kp_v.1": 2.5, "controller.mpc.actuator_lag_s": 0.05}, base)
    assert tree == {"controller": {"longitudinal": {"kp_v": [2.0, 2.5, 1.2]}, "mpc": {"actuator_lag_s": 0.05}}}
    with pytest.raises(ConfigError, match=r"kp_v is a table of 3 entries; index it with 0..2"):
        schema_leaf("controller.longitudinal.kp_v.3", base, "test")


# ---------------------------------------------------------------- studies


def test_a_short_study_on_two_workers_writes_an_overlay_that_re_evaluates_to_its_score(tmp_path):
    """The CI tune: 3 scenarios, 4 trials, 2 workers."""
    out = tmp_path / "study"
    result = tune(TuneOptions(space="planner", suite=SMOKE, trials=4, workers=2, overrides=[*PERFECT], out_dir=out,
                              show_progress=False))
    study = optuna.load_study(study_name="planner-smoke", storage=f"sqlite:///{out / 'study.db'}")
    assert len([t for t in study.trials if t.state.is_finished()]) == 4 == result.finished
    assert study.trials[0].user_attrs["baseline"]  # the base config's values come first
    rows = _rows(out / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4
    best_text = (out / "best.yaml").read_text()
    assert best_text.startswith(f"# stagepilot tune: study planner-smoke, trial {result.best_number}, ")
    best = yaml.safe_load(best_text)
    assert set(best) == {"planner"} and set(best["planner"]) == {"behaviour", "lattice"}  # the tuned keys only
    for name in ("history.png", "importances.png", "report.md"):
        assert (out / name).stat().st_size > 0
    # `evaluate --config best.yaml` drives the same scenarios to the same scores
    again = evaluate(SMOKE, config_files=[out / "best.yaml"], overrides=[*PERFECT], out_dir=tmp_path / "again",
                     record=False)
    trial = json.loads((out / "trials" / f"{result.best_number:04d}" / "results.json").read_text())
    assert [s["driving_score"] for s in again.scenarios] == [s["driving_score"] for s in trial["scenarios"]]
    assert again.mean_driving_score == pytest.approx(result.best_score, abs=1e-3)


def test_a_hopeless_trial_is_pruned_before_its_last_scenario(tmp_path):
    # a goal 15 m short of the route's end: every scenario ends in a timeout short of the goal
    key = "planner.behaviour.goal_tolerance_m"
    space = _space(tmp_path, {key: {"type": "categorical", "choices": [1.0, 15.0]}})
    out = tmp_path / "study"
    out.mkdir()
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    for value in (1.0, 1.0, 15.0):
        study.enqueue_trial({key: value})
    tune(TuneOptions(space=str(space), suite=SMOKE, trials=3, study="prune", overrides=[*PERFECT], out_dir=out,
                     prune_startup=2, prune_warmup=0, show_progress=False))
    trials = optuna.load_study(study_name="prune", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert trials[2].user_attrs["scenarios_run"] < 3
    assert "pruned" in (out / "report.md").read_text().lower()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_an_interrupted_study_resumes_with_the_same_command_to_the_requested_trials(tmp_path, signum):
    out = tmp_path / "study"
    command = [sys.executable, "-m", "stagepilot.pipeline.cli", "tune", "--space", "planner", "--suite", SMOKE,
               "--trials", "3", "--out", str(out), "--quiet", *PERFECT]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, preexec_fn=default_signals)
    deadline = time.monotonic() + 240
    while not (out / "trials" / "0001" / "overlay.yaml").exists():  # trial 0 done, trial 1 under way
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(process.pid, signum)  # the whole process group, as Ctrl-C in a terminal does
    _, err = process.communicate(timeout=60)
    if signum == signal.SIGINT:
        assert process.returncode == 130 and "the same command resumes the study" in err, err
        assert (out / "trials.csv").exists()  # what finished is written out
    storage = f"sqlite:///{out / 'study.db'}"
    finished = [t for t in optuna.load_study(study_name="planner-smoke", storage=storage).trials
                if t.state.is_finished() and t.state.name != "FAIL"]
    assert len(finished) < 3
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    trials = optuna.load_study(study_name="planner-smoke", storage=storage).trials
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3
    interrupted = [t for t in trials if t.state.name == "FAIL"]
    assert len(interrupted) == 1  # trial 1, run again with the same parameters
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == interrupted[0].number)
    assert retry.params == interrupted[0].params and retry.state.name == "COMPLETE"


@pytest.mark.slow
def test_a_multi_objective_study_runs_on_local_ray_and_reports_its_pareto_front(tmp_path):
    out = tmp_path / "study"
    result = tune(TuneOptions(space="planner", suite=SMOKE, trials=3, workers=2, backend="ray", objective="multi",
                              overrides=[*PERFECT], out_dir=out, show_progress=False))
    study = optuna.load_study(study_name="planner-smoke", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert all(len(t.values) == 2 for t in study.trials)
    assert result.best_number in {t.number for t in study.best_trials}  # best.yaml is on the front
    assert (out / "pareto.png").stat().st_size > 0

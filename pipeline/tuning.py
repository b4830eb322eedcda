"""`stagepilot tune`: an Optuna study over config keys, scored on a scenario suite.

A trial is one config overlay: the space's keys (pipeline/tuning_space.py) set to values the
sampler chose, on top of the base stack (`--config` files and overrides). It drives the suite's
scenarios one after another in the suite's fixed order, each through the evaluator's job
(pipeline/evaluation.py `run_scenario`: the same driver, criteria and score as `stagepilot
evaluate`), and after each scenario reports the running mean of the objective, so that the
pruner can stop a hopeless trial before its last scenario. Trials run in parallel: `--workers`
trials at once, each scenario a job on the evaluator's local process pool or a Ray task.

Objective (`score`, the default): the mean over the suite's scenarios of

    driving score - comfort_penalty x (share of nuPlan's comfort bounds the drive broke)

so a drive that breaks every bound loses `comfort_penalty` points (10 by default), one that
breaks one of six loses 1.7. `multi` makes it a two-objective study instead: the mean driving
score (maximised) and the mean share of comfort bounds broken, in percent (minimised); Optuna
cannot prune multi-objective trials, so they always run every scenario.

Sampling: a seeded TPE sampler (constant liar for parallel trials). The first trial of a new
study is the base config's own values, so the study's history starts from the baseline.
Storage: SQLite in the study folder unless `--storage URL` names any RDB (PostgreSQL, MySQL) that
several tuners share. The same command resumes a study: trials that an interrupted run left
running are marked failed and queued again with the same parameters, and the run stops when
the study holds the requested number of finished (complete or pruned) trials.

Outputs in the study folder: best.yaml (the tuned keys only, a header naming study, trial,
score and date), trials.csv, trials/NNNN/results.json (each trial's per-scenario results, in
the evaluator's format, for `evaluate --compare`), plots (optimisation history, parameter
importances, the Pareto front of a multi-objective study) and report.md.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from stagepilot.core.config import ConfigError, config_hash, load_stack
from stagepilot.pipeline.evaluation import (EvaluationResult, ScenarioPool, family_means, scenario_jobs, share_note,
                                           write_results)
from stagepilot.pipeline.tuning_report import StudyOutputs, _params_text, _values_text
from stagepilot.pipeline.tuning_space import base_values, flat_overrides, load_space, overlay
from stagepilot.pipeline.tuning_study import (HEARTBEAT_S, FolderLock, check_identity, counted, finished, open_storage,
                                             recover, study_identity)

OBJECTIVES = ("score", "multi")
COMFORT_PENALTY = 10.0  # [points] a drive that breaks every comfort bound loses this much


@dataclass
class TuneOptions:
    space: str
    suite: str
    trials: int
    study: str | None = None
    storage: str | None = None
    workers: int = 1
    backend: str = "local"
    ray_address: str | None = None
    objective: str = "score"
    comfort_penalty: float = COMFORT_PENALTY
    config_files: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    holdout: str | None = None
    seed: int = 0
    prune_startup: int = 5  # complete trials before the pruner acts
    prune_warmup: int | None = None  # scenarios a trial runs before it can be pruned (default: a quarter)
    pruner: str = "median"
    maps_dirs: list[str] = field(default_factory=list)
    keep_runs: bool = False
    show_progress: bool = True


@dataclass
class TuneResult:
    out_dir: Path
    study_name: str
    storage: str
    best_number: int | None
    best_values: list[float] | None
    best_score: float | None
    baseline_score: float | None
    finished: int
    paths: dict[str, Path]
    holdout: dict[str, float] | None = None
    pruned: int = 0


# ---------------------------------------------------------------- the objective


def comfort_broken(entry: dict[str, Any]) -> float:
    """The share [0, 1] of nuPlan's comfort bounds a scored drive broke (0 when it has none)."""
    bounds = (entry.get("comfort") or {}).get("bounds") or {}
    if not bounds:
        return 0.0
    return sum(1 for holds in bounds.values() if holds is False) / len(bounds)


def scenario_value(entry: dict[str, Any], comfort_penalty: float) -> float:
    return float(entry.get("driving_score", 0.0)) - comfort_penalty * comfort_broken(entry)


def trial_values(results: list[dict], objective: str, comfort_penalty: float) -> list[float]:
    n = max(1, len(results))
    if objective == "multi":
        return [sum(float(r.get("driving_score", 0.0)) for r in results) / n,
                100.0 * sum(comfort_broken(r) for r in results) / n]
    return [sum(scenario_value(r, comfort_penalty) for r in results) / n]


# ---------------------------------------------------------------- storage and study


# ---------------------------------------------------------------- running trials


@dataclass
class _Running:
    trial: Any  # optuna.Trial
    params: dict[str, Any]
    overrides: list[str]
    folder: Path
    jobs: list[dict]
    results: list[dict] = field(default_factory=list)
    handle: Any = None
    started: float = field(default_factory=time.perf_counter)


class Tuner(StudyOutputs):
    def __init__(self, options: TuneOptions):
        from stagepilot.sim.suites import load_suite

        o = self.options = options
        if o.trials < 1:
            raise ConfigError(f"--trials {o.trials}: expected at least 1")
        if o.workers < 1:
            raise ConfigError(f"--workers {o.workers}: expected at least 1")
        if o.objective not in OBJECTIVES:
            raise ConfigError(f"--objective {o.objective}: expected one of {', '.join(OBJECTIVES)}")
        if not (math.isfinite(o.comfort_penalty) and o.comfort_penalty >= 0.0):
            raise ConfigError(f"--comfort-penalty {o.comfort_penalty}: expected a finite number >= 0")
        if o.pruner not in ("median", "none"):
            raise ConfigError(f"--pruner {o.pruner}: expected median or none")
        self.base = load_stack(o.config_files, o.overrides)
        self.space = load_space(o.space, o.config_files, o.overrides)
        self.suite = load_suite(o.suite)
        self.sampled = self.suite.sample(o.maps_dirs)
        share_note(self.base, o.workers)
        self.holdout_suite = load_suite(o.holdout) if o.holdout else None
        if self.holdout_suite is not None:
            self.holdout_suite.sample(o.maps_dirs)  # its maps and parameters are checked now too
        if o.backend == "ray":
            self._check_ray()
        self.study_name = o.study or f"{self.space.name}-{self.suite.name}"
        self.out_dir = Path(o.out_dir) if o.out_dir is not None else Path("runs") / f"tune-{self.study_name}"
        self.storage_url = o.storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"
        if o.storage:  # a shared storage that does not open fails before the folder is made
            self.storage = open_storage(o.storage)
        self.blocked_s = float(self.suite.criteria.get("blocked_s", 180.0))
        self.warmup = o.prune_warmup if o.prune_warmup is not None else max(1, len(self.sampled) // 4)

    def _check_ray(self) -> None:
        from stagepilot.pipeline.evaluation import check_ray_address

        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--backend ray: Ray is not installed (pip install 'stagepilot[ray]')") from None
        if self.options.ray_address:
            check_ray_address(self.options.ray_address)

    # -- study

    def _create_study(self):
        import optuna

        o = self.options
        if not o.storage:
            self.storage = open_storage(self.storage_url, shared=False)
        sampler = optuna.samplers.TPESampler(seed=o.seed, constant_liar=o.workers > 1,
                                             n_startup_trials=min(10, max(2, o.trials // 3)))
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=o.prune_startup, n_warmup_steps=self.warmup)
                  if o.pruner == "median" and o.objective == "score" else optuna.pruners.NopPruner())
        directions = ["maximize", "minimize"] if o.objective == "multi" else ["maximize"]
        try:
            study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=sampler,
                                        pruner=pruner, directions=directions, load_if_exists=True)
        except ValueError as exc:  # an existing study of other directions
            raise ConfigError(f"study {self.study_name!r}: {exc}") from None
        if [d.name.lower() for d in study.directions] != directions:
            raise ConfigError(f"study {self.study_name!r} was created with objective directions "
                              f"{[d.name.lower() for d in study.directions]}; choose a new --study")
        identity = study_identity(self.space, self.suite.name, config_hash(self.base), o.objective,
                                  o.comfort_penalty)
        check_identity(study, identity)
        return study

    def _ask(self, study) -> _Running | None:
        """The next trial, or None when its values together break a cross-key rule of the
        schema: that trial is failed with the reason (and never queued again)."""
        trial = study.ask()
        params = {p.key: p.suggest(trial) for p in self.space.params}
        trial.set_user_attr("params_used", params)
        tree = overlay(params, self.base)
        overrides = [*self.options.overrides, *flat_overrides(tree)]
        try:
            load_stack(self.options.config_files, overrides)
        except ConfigError as exc:
            trial.set_user_attr("invalid", str(exc))
            study.tell(trial, state=_fail_state())
            return None
        folder = self.out_dir / "trials" / f"{trial.number:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "overlay.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
        jobs = scenario_jobs(self.sampled, config_files=self.options.config_files, overrides=overrides,
                             out_dir=folder, threads=self.pool.threads, blocked_s=self.blocked_s, video=False,
                             record=False, ship_maps=self.options.backend == "ray")
        return _Running(trial, params, overrides, folder, jobs)

    def _submit_next(self, running: _Running) -> None:
        running.handle = self.pool.submit(running.jobs[len(running.results)])

    def _step(self, study, running: _Running, entry: dict) -> str | None:
        """Take one scenario's result; 'complete' or 'pruned' when the trial is over."""
        from optuna.trial import TrialState

        o = self.options
        running.results.append(entry)
        if not self.options.keep_runs:
            shutil.rmtree(entry.get("run_dir") or "", ignore_errors=True)
        step = len(running.results) - 1
        values = trial_values(running.results, o.objective, o.comfort_penalty)
        if o.objective == "score":
            running.trial.report(values[0], step)
        done = len(running.results) == len(running.jobs)
        pruned = not done and o.objective == "score" and running.trial.should_prune()
        if not (done or pruned):
            return None
        self._finish_trial(running, pruned)
        if pruned:
            study.tell(running.trial, state=TrialState.PRUNED)
            return "pruned"
        study.tell(running.trial, values)
        return "complete"

    def _finish_trial(self, running: _Running, pruned: bool) -> None:
        o = self.options
        trial = running.trial
        scores = [float(r.get("driving_score", 0.0)) for r in running.results]
        trial.set_user_attr("mean_driving_score", round(sum(scores) / len(scores), 4))
        trial.set_user_attr("comfort_broken_pct", round(trial_values(running.results, "multi", 0.0)[1], 3))
        trial.set_user_attr("scenarios_run", len(running.results))
        trial.set_user_attr("scenario_wall_s", round(sum(float(r.get("wall_s", 0.0)) for r in running.results), 2))
        if pruned:
            trial.set_user_attr("pruned_after", running.results[-1]["id"])
        evaluation = EvaluationResult(self.suite.name, running.folder, running.results,
                                      config_hash(load_stack(o.config_files, running.overrides)), o.backend,
                                      o.workers, time.perf_counter() - running.started)
        evaluation.families = family_means(running.results)
        write_results(evaluation)
        if not o.keep_runs:
            shutil.rmtree(running.folder / "scenarios", ignore_errors=True)

    def run(self) -> TuneResult:
        o = self.options
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with FolderLock(self.out_dir):
            study = self._create_study()
            queued = recover(study, own_storage=not o.storage)
            if not study.get_trials(deepcopy=False):
                study.enqueue_trial(base_values(self.space, self.base), user_attrs={"baseline": True})
            self.pool = ScenarioPool(o.backend, o.workers, o.ray_address, isolate=True)
            start_finished = finished(study)
            bar = tqdm(total=o.trials, initial=min(start_finished, o.trials), desc=f"tune {self.study_name}",
                       unit="trial", disable=not o.show_progress, file=sys.stderr, dynamic_ncols=True)
            if queued:
                bar.write(f"resuming: {queued} interrupted trial(s) queued again with their parameters")
            running: list[_Running] = []
            try:
                with self.pool:
                    self._loop(study, running, bar)
            except BaseException as exc:
                interrupted = not isinstance(exc, Exception)
                for item in running:  # failed, and queued again when the study resumes
                    item.trial.set_user_attr("interrupted", interrupted)
                    study.tell(item.trial, state=_fail_state())
                bar.close()
                if interrupted:
                    self.write_outputs(study)
                    print(f"tune: interrupted with {finished(study)} of {o.trials} trials finished; "
                          f"the same command resumes the study ({self.out_dir})", file=sys.stderr)
                raise
            bar.close()
            paths = self.write_outputs(study)
            holdout = self.run_holdout(study) if self.holdout_suite is not None else None
            if holdout is not None:
                paths["report"] = self.write_report(study, holdout)
            return self._result(study, paths, holdout)

    def _loop(self, study, running: list[_Running], bar: tqdm) -> None:
        o = self.options
        best_seen = None
        while True:
            while len(running) < o.workers and counted(study) < o.trials:
                item = self._ask(study)
                if item is None:
                    bar.write(f"trial {len(study.get_trials(deepcopy=False)) - 1}: not a valid stack, skipped "
                              f"({study.get_trials(deepcopy=False)[-1].user_attrs['invalid']})")
                    continue
                self._submit_next(item)
                running.append(item)
            if not running:
                return
            done = self.pool.wait([r.handle for r in running], timeout=HEARTBEAT_S)
            if self.options.storage:  # a heartbeat, so that other tuners sharing the study see it alive
                for item in running:
                    study._storage.record_heartbeat(item.trial._trial_id)
            for handle in done:
                item = next(r for r in running if r.handle is handle)
                outcome = self._step(study, item, self.pool.result(handle))
                if outcome is None:
                    self._submit_next(item)
                    continue
                running.remove(item)
                bar.update(1)
                best = self._best(study)
                if best is not None and best.number != best_seen:
                    best_seen = best.number
                    bar.set_postfix_str(f"best {best.values[0]:.2f} (trial {best.number})")
                    bar.write(f"trial {best.number}: best so far, {_values_text(best.values, o.objective)}: "
                              f"{_params_text(best.user_attrs.get('params_used', best.params))}")
                elif outcome == "pruned":
                    bar.write(f"trial {item.trial.number}: pruned after {len(item.results)} of "
                              f"{len(item.jobs)} scenarios")

    # -- results

    def _best(self, study):
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            return None
        if self.options.objective == "multi":  # the Pareto trial of the highest score, then least discomfort
            front = study.best_trials
            return max(front, key=lambda t: (t.values[0], -t.values[1], -t.number))
        return max(complete, key=lambda t: (t.values[0], -t.number))

    def _baseline(self, study):
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if trial.user_attrs.get("baseline"):
                return trial
        return None

    def _result(self, study, paths: dict[str, Path], holdout) -> TuneResult:
        from optuna.trial import TrialState

        best, baseline = self._best(study), self._baseline(study)
        return TuneResult(self.out_dir, self.study_name, self.storage_url if not self.options.storage else self.options.storage,
                          best.number if best else None, list(best.values) if best else None,
                          best.user_attrs.get("mean_driving_score") if best else None,
                          baseline.user_attrs.get("mean_driving_score") if baseline else None, finished(study), paths,
                          holdout, len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))))


def _fail_state():
    from optuna.trial import TrialState

    return TrialState.FAIL


def tune(options: TuneOptions) -> TuneResult:
    """Everything that can be wrong with the input is a ConfigError before any trial runs."""
    return Tuner(options).run()

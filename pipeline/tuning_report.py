"""What a tuning study writes into its folder (pipeline/tuning.py runs the study): best.yaml,
trials.csv, the plots, report.md, and the held-out suite's evaluation."""

from __future__ import annotations

import csv
import datetime
import sys
from pathlib import Path
from typing import Any

import yaml

from stagepilot.core.inputs import clip
from stagepilot.pipeline.evaluation import write_results
from stagepilot.pipeline.metrics import NUPLAN_BOUNDS
from stagepilot.pipeline.tuning_space import overlay


class StudyOutputs:
    """The writers of a Tuner (its space, suite, options, folder, best and baseline trials)."""

    def write_outputs(self, study) -> dict[str, Path]:
        paths = {"study": self.out_dir, "trials_csv": self.write_trials_csv(study)}
        best = self._best(study)
        if best is not None:
            paths["best"] = self.write_best(best)
        paths.update(self.write_plots(study))
        paths["report"] = self.write_report(study, None)
        return paths

    def write_best(self, best) -> Path:
        o = self.options
        params = best.user_attrs.get("params_used", best.params)
        tree = overlay(params, self.base)
        stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        header = [f"# stagepilot tune: study {self.study_name}, trial {best.number}, "
                  f"{_values_text(best.values, o.objective)}, mean driving score "
                  f"{best.user_attrs.get('mean_driving_score', float('nan')):.2f} on suite {self.suite.name}",
                  f"# space {_shown(self.space.source)}; base: configs/stack.yaml"
                  + "".join(f" + {f}" for f in o.config_files) + "".join(f" {x}" for x in o.overrides),
                  f"# written {stamp}; use: stagepilot evaluate --config <base files> --config best.yaml"]
        path = self.out_dir / "best.yaml"
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text("\n".join(header) + "\n" + yaml.safe_dump(tree, sort_keys=False))
        tmp.replace(path)
        return path

    def write_trials_csv(self, study) -> Path:
        path = self.out_dir / "trials.csv"
        keys = self.space.keys
        value_names = ["score_mean", "comfort_broken_pct"] if self.options.objective == "multi" else ["objective"]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["number", "state", *value_names, "mean_driving_score", "comfort_broken_pct",
                             "scenarios_run", "pruned_after", "scenario_wall_s", "started", "finished", *keys])
            for t in study.get_trials(deepcopy=False):
                used = t.user_attrs.get("params_used", t.params)
                values = list(t.values) if t.values is not None else [""] * len(value_names)
                writer.writerow([t.number, t.state.name, *values, t.user_attrs.get("mean_driving_score", ""),
                                 t.user_attrs.get("comfort_broken_pct", ""), t.user_attrs.get("scenarios_run", ""),
                                 t.user_attrs.get("pruned_after", ""), t.user_attrs.get("scenario_wall_s", ""),
                                 _stamp(t.datetime_start), _stamp(t.datetime_complete),
                                 *[used.get(k, "") for k in keys]])
        return path

    def write_plots(self, study) -> dict[str, Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna.visualization.matplotlib as ovm
        from optuna.trial import TrialState

        out: dict[str, Path] = {}
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        multi = self.options.objective == "multi"
        plots = [("history", lambda: ovm.plot_optimization_history(
            study, target=(lambda t: t.values[0]) if multi else None,
            target_name="mean driving score" if multi else "objective"))]
        if len(complete) >= 2 and len(self.space.params) >= 1:
            plots.append(("importances", lambda: ovm.plot_param_importances(
                study, target=(lambda t: t.values[0]) if multi else None)))
        if multi and complete:
            plots.append(("pareto", lambda: ovm.plot_pareto_front(
                study, target_names=["mean driving score", "comfort bounds broken [%]"])))
        import warnings

        for name, make in plots:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                    axes = make()
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances of one distinct value
                print(f"tune: no {name} plot ({exc})", file=sys.stderr)
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            path = self.out_dir / f"{name}.png"
            figure.savefig(path, dpi=110)
            plt.close(figure)
            out[name] = path
        return out

    def run_holdout(self, study) -> dict[str, float] | None:
        from stagepilot.pipeline.evaluation import evaluate

        o = self.options
        best_path = self.out_dir / "best.yaml"
        if not best_path.is_file():
            return None
        figures = {}
        for label, files in (("baseline", o.config_files), ("best", [*o.config_files, str(best_path)])):
            out = self.out_dir / "holdout" / label
            evaluation = evaluate(str(self.holdout_suite.source), config_files=files, overrides=o.overrides,
                                  workers=o.workers, backend=o.backend, ray_address=o.ray_address, out_dir=out,
                                  record=False, maps_dirs=o.maps_dirs, show_progress=o.show_progress)
            write_results(evaluation)
            figures[label] = evaluation.mean_driving_score
        return figures

    def write_report(self, study, holdout: dict[str, float] | None) -> Path:
        from optuna.trial import TrialState

        from stagepilot.pipeline.evaluation import load_results

        o = self.options
        best, baseline = self._best(study), self._baseline(study)
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        lines = [f"# Tuning study {self.study_name}", "",
                 f"- suite `{self.suite.name}` ({len(self.sampled)} scenarios), space `{_shown(self.space.source)}` "
                 f"({len(self.space.params)} keys), base `configs/stack.yaml`"
                 + "".join(f" + `{f}`" for f in o.config_files) + "".join(f" `{x}`" for x in o.overrides),
                 f"- objective: {_objective_text(o)}",
                 f"- trials: {len(complete)} complete, {len(pruned)} pruned, "
                 f"{sum(t.state == TrialState.FAIL for t in trials)} failed (interrupted, run again)",
                 f"- storage: `{self.storage_url if o.storage is None else clip(o.storage)}`, study `{self.study_name}`",
                 ""]
        full = len(self.sampled)
        if pruned and complete:
            walls = [t.user_attrs.get("scenario_wall_s", 0.0) for t in complete]
            mean_full = sum(walls) / len(walls)
            spent = sum(t.user_attrs.get("scenario_wall_s", 0.0) for t in pruned)
            skipped_runs = sum(full - t.user_attrs.get("scenarios_run", full) for t in pruned)
            saved = mean_full * len(pruned) - spent
            total = sum(walls) + spent
            lines += [f"Pruning: {len(pruned)} trials stopped early, {skipped_runs} of {full * len(pruned)} of their "
                      f"scenario drives skipped, about {saved / 60:.1f} min of drive time saved "
                      f"({100 * saved / max(total + saved, 1e-9):.0f} % of what the study would have taken).", ""]
        if baseline is not None and best is not None:
            b = baseline.user_attrs.get("mean_driving_score", float("nan"))
            t = best.user_attrs.get("mean_driving_score", float("nan"))
            lines += ["| | trial | objective | mean driving score |", "|---|---:|---:|---:|",
                      f"| baseline (base config) | {baseline.number} | {_values_text(baseline.values, o.objective)} "
                      f"| {b:.2f} |",
                      f"| tuned (best.yaml) | {best.number} | {_values_text(best.values, o.objective)} | {t:.2f} |",
                      "", f"Change in mean driving score: **{t - b:+.2f}**.", ""]
            before_path = self.out_dir / "trials" / f"{baseline.number:04d}" / "results.json"
            after_path = self.out_dir / "trials" / f"{best.number:04d}" / "results.json"
            if before_path.is_file() and after_path.is_file():
                before, after = load_results(before_path), load_results(after_path)
                lines += self._family_rows(before, after)
            lines += self._moved_rows(baseline, best)
        if holdout is not None:
            lines += ["## Held-out suite", "",
                      f"Suite `{self.holdout_suite.name}`, never seen by the search "
                      f"({len(self.holdout_suite.sample(o.maps_dirs))} scenarios):", "",
                      "| | mean driving score |", "|---|---:|", f"| baseline | {holdout['baseline']:.2f} |",
                      f"| tuned | {holdout['best']:.2f} |", "",
                      f"Change: **{holdout['best'] - holdout['baseline']:+.2f}**.", ""]
        plots = [name for name in ("history", "importances", "pareto") if (self.out_dir / f"{name}.png").is_file()]
        if plots:
            lines += ["## Plots", "", *[f"![{name}]({name}.png)" for name in plots], ""]
        path = self.out_dir / "report.md"
        path.write_text("\n".join(lines))
        return path

    def _family_rows(self, before: dict, after: dict) -> list[str]:
        fam_before = before.get("families", {})
        fam_after = after.get("families", {})
        rows = ["## Per family (baseline -> tuned)", "", "| family | baseline | tuned | change |",
                "|---|---:|---:|---:|"]
        for family in fam_after:
            b, a = fam_before.get(family), fam_after[family]
            rows.append(f"| {family} | {'' if b is None else f'{b:.1f}'} | {a:.1f} | "
                        f"{'' if b is None else f'{a - b:+.1f}'} |")
        return [*rows, ""]

    def _moved_rows(self, baseline, best) -> list[str]:
        before = baseline.user_attrs.get("params_used", baseline.params)
        after = best.user_attrs.get("params_used", best.params)
        rows = ["## Parameters", "", "| key | base | tuned |", "|---|---:|---:|"]
        for key in self.space.keys:
            mark = "" if before.get(key) == after.get(key) else " **moved**"
            rows.append(f"| `{key}` | {before.get(key)} | {after.get(key)}{mark} |")
        return [*rows, ""]


def _shown(path: Path) -> str:
    """A path as a reader would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _stamp(moment) -> str:
    return moment.isoformat(timespec="seconds") if moment else ""


def _values_text(values, objective: str) -> str:
    if values is None:
        return "-"
    if objective == "multi":
        return f"score {values[0]:.2f}, comfort bounds broken {values[1]:.1f} %"
    return f"objective {values[0]:.2f}"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{key.rsplit('.', 1)[-1] if not key.rsplit('.', 1)[-1].isdigit() else key.split('.', 1)[-1]}="
                     f"{value}" for key, value in params.items())


def _objective_text(o) -> str:  # o: TuneOptions
    if o.objective == "multi":
        return ("two objectives: mean driving score (max) and mean share of nuPlan comfort bounds broken, % (min); "
                "Pareto front in pareto.png")
    return (f"mean over scenarios of driving score - {o.comfort_penalty:g} x share of nuPlan comfort bounds broken "
            f"({len(NUPLAN_BOUNDS)} bounds); pruned by the running mean after each scenario (median pruner)")

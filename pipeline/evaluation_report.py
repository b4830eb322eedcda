"""The report of a suite evaluation: report.md with three plots (scores.png: the mean driving
score per family; infractions.png: infractions per family by kind; comfort.png: the
distributions of the comfort figures over the scenarios), the family and scenario tables, and
the differences against a compared evaluation."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

KINDS = ("collision_pedestrian", "collision_vehicle", "collision_static", "red_light", "stop_sign", "timeout",
         "route_deviation", "blocked")


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def plot_scores(path: Path, evaluation) -> None:
    families = list(evaluation.families)
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(families) + 2), 4.5))
    values = [evaluation.families[f] for f in families]
    colors = ["#2ca02c" if v >= 80 else ("#ff7f0e" if v >= 50 else "#d62728") for v in values]
    ax.bar(range(len(families)), values, color=colors)
    ax.axhline(evaluation.mean_driving_score, color="black", lw=1, ls="--",
               label=f"mean {evaluation.mean_driving_score:.1f}")
    ax.set_xticks(range(len(families)), families, rotation=35, ha="right")
    ax.set(ylim=(0, 105), ylabel="mean driving score", title=f"{evaluation.suite}: driving score per family")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def plot_infractions(path: Path, evaluation) -> None:
    families = list(evaluation.families)
    counts = {kind: np.zeros(len(families)) for kind in (*KINDS, "failed")}
    for entry in evaluation.scenarios:
        i = families.index(entry["family"] or "explicit")
        for kind, n in (entry.get("infractions") or {}).items():
            if kind in counts:
                counts[kind][i] += n
        counts["failed"][i] += entry.get("status") == "failed"
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(families) + 2), 4.5))
    bottom = np.zeros(len(families))
    for kind, values in counts.items():
        if values.any():
            ax.bar(range(len(families)), values, bottom=bottom, label=kind)
            bottom += values
    ax.set_xticks(range(len(families)), families, rotation=35, ha="right")
    ax.set(ylabel="infractions (count)", title="infractions per family")
    if bottom.any():
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no infraction", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    _save(fig, path)


def _comfort_figures(entry: dict) -> dict[str, float]:
    """The numeric comfort figures of one scenario (flattened: `lon_jerk_abs_p95`, ...)."""
    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}" if not prefix else f"{prefix}.{key}", item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            out[prefix] = float(value)

    walk("", entry.get("comfort") or {})
    return out


def plot_comfort(path: Path, evaluation) -> None:
    figures: dict[str, list[float]] = {}
    for entry in evaluation.scenarios:
        for name, value in _comfort_figures(entry).items():
            figures.setdefault(name, []).append(value)
    names = [n for n in sorted(figures) if len(figures[n]) > 1][:12]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.5))
    if names:
        ax.boxplot([figures[n] for n in names], showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=35, ha="right", fontsize=8)
    ax.set(title="comfort over the scenarios (nuPlan figures)")
    fig.tight_layout()
    _save(fig, path)


def write_report(evaluation, deltas: dict | None = None, compared: str | None = None) -> Path:
    from stagepilot.pipeline.commands_evaluate import family_table, scenario_table

    out = Path(evaluation.out_dir)
    plot_scores(out / "scores.png", evaluation)
    plot_infractions(out / "infractions.png", evaluation)
    plot_comfort(out / "comfort.png", evaluation)
    failed = [e for e in evaluation.scenarios if e.get("status") == "failed"]
    lines = [f"# Evaluation of `{evaluation.suite}`", "",
             f"- mean driving score: **{evaluation.mean_driving_score:.2f}** over {len(evaluation.scenarios)} scenarios",
             f"- config hash `{evaluation.config_hash}`; {evaluation.backend} backend, {evaluation.workers} worker(s), "
             f"{evaluation.wall_s:.1f} s", ""]
    if compared:
        lines += [f"Compared with `{compared}`: the last column is this score minus that one.", ""]
    lines += ["## Per family", "", "```", family_table(evaluation), "```", "", "![scores](scores.png)", "",
              "## Per scenario", "", "```", scenario_table(evaluation, deltas), "```", "",
              "![infractions](infractions.png)", "", "![comfort](comfort.png)", ""]
    if failed:
        lines += ["## Failed scenarios", ""] + [f"- `{e['id']}`: {e.get('error', '')}" for e in failed] + [""]
    details = [(e["id"], d) for e in evaluation.scenarios for d in e.get("details") or []]
    if details:
        lines += ["## Infractions", ""] + [f"- `{sid}`: {line}" for sid, line in details] + [""]
    page = out / "report.md"
    page.write_text("\n".join(lines))
    return page

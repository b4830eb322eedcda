"""summary.png: the driven path against the route, speed over time, and stage latencies over
time with their budgets, misses and fail-safe stretches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stagepilot.pipeline.series import DriveSeries


def plot_summary(path: Path, series: DriveSeries, route_points: np.ndarray, budgets: dict[str, float | None],
                 title: str) -> None:
    """Path against route, speed over time, and stage latencies over time, 1600x1000 PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 10), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, width_ratios=(1, 1.3))
    _plot_path(fig.add_subplot(grid[:, 0]), series, route_points)
    _plot_speed(fig.add_subplot(grid[0, 1]), series)
    _plot_latency(fig.add_subplot(grid[1, 1]), series, budgets)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")  # atomic: a reader never sees half a PNG
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when the write failed


def _plot_path(ax, series: DriveSeries, route_points: np.ndarray) -> None:
    ax.plot(route_points[:, 0], route_points[:, 1], color="m", lw=1.5, label="route")
    ax.plot(series.x, series.y, color="g", lw=2, label="driven (rear axle)")
    if series.x:
        ax.plot(series.x[0], series.y[0], "go", label="start")
        # A square window around the driven path, so a short drive is not a dot on a long route.
        cx, cy = (min(series.x) + max(series.x)) / 2, (min(series.y) + max(series.y)) / 2
        half = max(max(series.x) - min(series.x), max(series.y) - min(series.y)) / 2 + 20.0  # [m]
        ax.set_xlim(cx - half, cx + half)
        ax.set_ylim(cy - half, cy + half)
    for event, x, y in series.events:
        ax.plot(x, y, "rx", ms=9)
        ax.annotate(f"{event.kind} {event.t:.1f}s", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_aspect("equal", adjustable="box")
    ax.set(xlabel="x [m]", ylabel="y [m]", title="path against route")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def _shade_failsafes(ax, series: DriveSeries) -> None:
    for i, stretch in enumerate(series.failsafes):
        ax.axvspan(stretch["t"], stretch["t_end"] + 1e-3, color="r", alpha=0.15,
                   label="fail-safe" if i == 0 else None)


def _plot_speed(ax, series: DriveSeries) -> None:
    ax.plot(series.t, series.speed, color="g", label="speed")
    if np.isfinite(series.planned_speed).any():
        ax.plot(series.t, series.planned_speed, color="c", ls="--", label="planned (plan start)")
    for event, _, _ in series.events:
        ax.axvline(event.t, color="k", lw=0.8, alpha=0.5)
        ax.text(event.t, ax.get_ylim()[1], event.kind, rotation=90, va="top", fontsize=7)
    _shade_failsafes(ax, series)
    ax.set(xlabel="t [s]", ylabel="speed [m/s]", title="speed")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def _plot_latency(ax, series: DriveSeries, budgets: dict[str, float | None]) -> None:
    t = np.array(series.t)
    for i, name in enumerate(series.stages()):
        color = f"C{i}"
        values = series.stage_series(name)
        ax.plot(t, values, color=color, lw=1, label=name)
        if budgets.get(name) is not None:
            ax.axhline(budgets[name], color=color, ls="--", lw=1)
        missed = [m["t"] for m in series.misses if m["stage"] == name]
        if missed:
            ax.plot(missed, np.interp(missed, t, np.nan_to_num(values)), "rx", ms=8)
    if series.misses:
        ax.plot([], [], "rx", label="budget miss")
    _shade_failsafes(ax, series)
    ax.set(xlabel="t [s]", ylabel="latency [ms]", title="stage latencies (dashed: budgets)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)

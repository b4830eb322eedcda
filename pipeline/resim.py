"""`stagepilot replay RECORDING --resim`: drive the recorded scenario again, closed loop.

The scenario, its seed, the config and the map all come from the recording (overrides on top);
the code is today's. The new drive is compared with the recorded one frame by frame: the ego
pose and speed (within `resim` tolerances of configs/replay.yaml), the events and the outcome.
The drives part at the first frame where the ego is further apart than the tolerance, or where
the events differ; the report names that frame, and what differs in the outcome.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagepilot.pipeline.recording import Recording, RecordingError
from stagepilot.pipeline.replay_compare import ReplayTolerances, load_tolerances

OUTCOME_KEYS = ("completed", "collisions", "red_lights", "off_road", "lane_departures", "frames", "failsafe_frames",
                "route_progress_m")


@dataclass
class ResimResult:
    path: Path
    frames_recorded: int
    frames_now: int
    parted: dict[str, Any] | None  # frame, t, distance_m, speed diff, why; None when the drives agree
    outcome_recorded: dict[str, Any]
    outcome_now: dict[str, Any]
    outcome_differences: list[str] = field(default_factory=list)
    max_distance_m: float = 0.0
    series: list[dict[str, Any]] = field(default_factory=list)  # per frame: t, recorded and new ego x, y, speed
    truncated: str | None = None

    @property
    def ok(self) -> bool:
        return self.parted is None and not self.outcome_differences

    def exit_status(self) -> int:
        return 2 if self.truncated else (0 if self.ok else 1)

    def table(self) -> str:
        lines = [f"resim: {self.frames_recorded} frames recorded, {self.frames_now} driven now; "
                 f"largest ego distance {self.max_distance_m:.4f} m"]
        if self.parted is None:
            lines.append("the drives agree frame by frame")
        else:
            p = self.parted
            lines.append(f"the drives part at frame {p['frame']} (t {p['t']:.2f} s): {p['why']}")
        for line in self.outcome_differences:
            lines.append(f"outcome {line}")
        if self.truncated:
            lines.append(f"recording: {self.truncated}")
        return "\n".join(lines)


def _recorded(recording: Recording) -> list[dict[str, Any]]:
    return [{"frame": f.frame, "t": f.t, "ego": f.runtime["ego"],
             "events": [(e["kind"], e.get("other_id")) for e in f.runtime.get("events", [])]}
            for f in recording.frames()]


def resim(path: str | Path, *, config_files=(), overrides=(), tolerances: ReplayTolerances | None = None,
          show_progress: bool = False) -> ResimResult:
    from stagepilot.pipeline.driver import drive
    from stagepilot.sim.scenario import Scenario

    tolerances = tolerances or load_tolerances()
    with Recording(path) as recording:
        config = recording.stage_config(config_files, overrides)
        data = recording.scenario_data()
        found = recording.map_text()
        recorded = _recorded(recording)
        truncated = recording.truncated if not recording.complete else None
        outcome_recorded = json.loads(recording.meta.get("outcome", {}).get("outcome", "{}"))
    if not recorded:
        raise RecordingError(f"{path}: holds no whole frame to compare with")
    with tempfile.TemporaryDirectory() as tmp:
        if found is not None:  # the recording's own map, wherever it was recorded
            map_file = Path(tmp) / f"{found[0]}.xodr"
            map_file.write_text(found[1])
            data["map_path"] = str(map_file)
        scenario = Scenario.model_validate(data)
        limit = recorded[-1]["t"] if truncated or not outcome_recorded else None
        result = drive(config, scenario, show_progress=show_progress, max_time_s=limit)
    return compare_drives(Path(path), recorded, result, outcome_recorded, tolerances, truncated)


def compare_drives(path: Path, recorded: list[dict], result, outcome_recorded: dict, tolerances: ReplayTolerances,
                   truncated: str | None) -> ResimResult:
    tol = tolerances.resim
    now = {r.frame: r for r in result.records}
    out = ResimResult(path, len(recorded), len(result.records), None, outcome_recorded, result.outcome,
                      truncated=truncated)
    for rec in recorded:
        new = now.get(rec["frame"])
        if new is None:
            out.parted = out.parted or {"frame": rec["frame"], "t": rec["t"], "distance_m": math.nan,
                                        "why": "the new drive ended before this frame"}
            break
        ego = rec["ego"]
        distance = math.hypot(new.ego.x - ego["x"], new.ego.y - ego["y"])
        speed = abs(new.ego.speed - ego["speed"])
        out.max_distance_m = max(out.max_distance_m, distance)
        out.series.append({"t": rec["t"], "recorded": (ego["x"], ego["y"], ego["speed"]),
                           "now": (new.ego.x, new.ego.y, new.ego.speed), "distance_m": distance})
        if out.parted is not None:
            continue
        events_now = [(e.kind, e.other_id) for e in new.events]
        why = None
        if distance > tol.position_m:
            why = f"the ego is {distance:.3f} m from where it was (tolerance {tol.position_m} m)"
        elif speed > tol.speed_mps:
            why = f"the ego speed differs by {speed:.3f} m/s (tolerance {tol.speed_mps} m/s)"
        elif events_now != rec["events"]:
            why = f"events: recorded {rec['events']}, now {events_now}"
        if why:
            out.parted = {"frame": rec["frame"], "t": rec["t"], "distance_m": distance, "speed_diff_mps": speed,
                          "why": why}
    if out.parted is None and not truncated and len(result.records) > len(recorded):
        last = recorded[-1]
        out.parted = {"frame": last["frame"] + 1, "t": last["t"], "distance_m": math.nan,
                      "why": f"the new drive goes on for {len(result.records) - len(recorded)} more frames"}
    if outcome_recorded and not truncated:
        for key in OUTCOME_KEYS:
            a, b = outcome_recorded.get(key), result.outcome.get(key)
            if isinstance(a, float) and isinstance(b, (int, float)):
                if abs(a - b) > max(tol.position_m, 0.01):
                    out.outcome_differences.append(f"{key}: recorded {a}, now {b}")
            elif a != b:
                out.outcome_differences.append(f"{key}: recorded {a}, now {b}")
    return out


def write_resim_report(out_dir: Path, result: ResimResult) -> Path:
    """report.md and resim.png (both paths, and the distance between them over time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (ax_path, ax_gap) = plt.subplots(1, 2, figsize=(12, 5))
    if result.series:
        rec = [s["recorded"] for s in result.series]
        new = [s["now"] for s in result.series]
        ax_path.plot([r[0] for r in rec], [r[1] for r in rec], label="recorded", lw=2)
        ax_path.plot([n[0] for n in new], [n[1] for n in new], "--", label="now", lw=1.5)
        ax_gap.plot([s["t"] for s in result.series], [s["distance_m"] for s in result.series])
    if result.parted is not None:
        ax_gap.axvline(result.parted["t"], color="red", lw=1, label=f"part at frame {result.parted['frame']}")
        ax_gap.legend()
    ax_path.set(title="ego path", xlabel="x [m]", ylabel="y [m]", aspect="equal")
    ax_path.legend()
    ax_gap.set(title="distance between the drives", xlabel="t [s]", ylabel="[m]")
    fig.tight_layout()
    fig.savefig(out_dir / "resim.png", dpi=90)
    plt.close(fig)
    page = out_dir / "report.md"
    page.write_text(f"# Re-simulation of {result.path.name}\n\n```\n{result.table()}\n```\n\n![resim](resim.png)\n")
    return page

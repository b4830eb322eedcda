"""`stagepilot drive`: one closed-loop drive through the staged runtime, into a run folder.

The run folder is complete whatever happens: the drive ends, Ctrl-C interrupts it, or a
stage raises. Everything recorded up to that point is written (config, run.json,
metrics.json, video.mp4, summary.png, trace.json).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from stagepilot.core.config import ConfigError, StackConfig
from stagepilot.pipeline.run_outputs import RunWriter, default_run_dir
from stagepilot.pipeline.runtime import StagedRuntime
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.world import EmbeddedSimulator


@dataclass(frozen=True)
class DriveResult:
    out_dir: Path
    outcome: dict
    interrupted: bool


def _progress_line(obs, record, runtime) -> str:
    stages = " ".join(f"{name[:4]} {ms:5.1f}" for name, ms in record.stage_ms.items())
    misses = sum(t.misses for t in runtime.telemetry.values())
    state = f" FAILSAFE: {record.failsafe}" if record.failsafe else ""
    return f"t {obs.t:6.2f}s  v {obs.ego.speed:5.2f} m/s  ms: {stages}  misses {misses}{state}"


def _outcome(sim, runtime, interrupted: bool, error: str | None) -> dict:
    kinds = [e.kind for e in sim.events]
    return {
        "completed": bool(sim.monitor.route_completed),
        "interrupted": interrupted,
        "error": error,
        "collisions": kinds.count("collision"),
        "contacts_at_standstill": kinds.count("contact_at_standstill"),  # moved into the standing ego: no infraction
        "red_lights": kinds.count("red_light"),
        "off_road": kinds.count("off_road"),
        "lane_departures": kinds.count("lane_departure"),
        "route_progress_m": round(float(sim.monitor.progress), 2),
        "route_length_m": round(float(sim.route.path.length), 2),
        "duration_s": round(float(sim.t), 3),
        "frames": len(runtime.records),
        "failsafe_frames": sum(1 for r in runtime.records if r.failsafe),
        "time_model": runtime.runtime.time_model,
        "pipelined": runtime.runtime.pipelined,
    }


def run_drive(config: StackConfig, scenario_name: str, scenario_overrides: list[str],
              out_dir: Path | None = None, sim_kind: str = "embedded", perception: str | None = None,
              show_progress: bool = True) -> DriveResult:
    """Drive one scenario with the stack; ``perception`` (learned | perfect) overrides
    ``config.perception.kind``."""
    if sim_kind != "embedded":
        raise ConfigError(f"--sim {sim_kind}: only the embedded simulator is available so far (CARLA arrives in a later issue)")
    if perception is not None and perception != config.perception.kind:
        config = config.model_copy(update={"perception": config.perception.model_copy(update={"kind": perception})})
    if config.perception.kind == "perfect" and not config.sim.ground_truth:
        raise ConfigError("sim.ground_truth: perfect perception needs ground truth; set sim.ground_truth: true")
    scenario = load_scenario(scenario_name, scenario_overrides)
    sim = EmbeddedSimulator(config, render=True)
    obs = sim.reset(scenario)
    runtime = StagedRuntime(config, sim.road_map)
    out_dir = out_dir or default_run_dir(Path("runs"), scenario.name)
    writer = RunWriter(out_dir, config, scenario, sim)
    bar = tqdm(total=int(round(scenario.duration_s / sim.dt)), desc=f"drive {scenario.name}", unit="frame",
               disable=not show_progress, file=sys.stderr, dynamic_ncols=True)

    def on_frame(obs, record):
        writer.add(obs, record)
        bar.update(1)
        bar.set_postfix_str(_progress_line(obs, record, runtime), refresh=False)

    interrupted, error = False, None
    try:
        runtime.run(sim, obs, on_frame=on_frame)
    except KeyboardInterrupt:
        interrupted = True
    except Exception as exc:  # the run folder must still be written, then the error surfaces
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        bar.close()
        outcome = _outcome(sim, runtime, interrupted, error)
        writer.close(outcome, runtime.latency_table(), runtime.trace)
    return DriveResult(out_dir=Path(out_dir), outcome=outcome, interrupted=interrupted)

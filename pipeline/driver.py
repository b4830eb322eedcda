"""The one closed-loop driver: a scenario through the staged runtime, into one `DriveResult`.

`stagepilot drive`, the tests, and whatever evaluates or replays drives all call `drive`.
Observers see the drive as it happens (the run folder writer is one); the figures they and
the tests read are computed once, here, from the drive's `DriveSeries`. Ctrl-C ends the drive
early and still gives a result (`interrupted`), and so do SIGTERM and SIGHUP when the caller asks
(`stop_on_signals`, as the CLI does); an exception in a stage still reaches every observer's
`end` before it propagates, so a run folder holds everything up to the fault. No signal cuts
the observers' `end` short (pipeline/interrupts.py).
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
from tqdm import tqdm

from stagepilot.core.config import ConfigError, StackConfig, config_hash
from stagepilot.core.messages import Observation
from stagepilot.pipeline.interrupts import STOP_SIGNALS, SignalHold, signal_name
from stagepilot.pipeline.provenance import cpu_shares, cpu_times
from stagepilot.pipeline.records import FrameRecord, frame_events
from stagepilot.pipeline.runtime import StagedRuntime
from stagepilot.pipeline.series import DriveSeries, drive_metrics, lateral_errors
from stagepilot.pipeline.trace import ChromeTrace
from stagepilot.sim.scenario import Scenario
from stagepilot.sim.world import EmbeddedSimulator


@dataclass
class DriveResult:
    """A finished (or interrupted) drive: its figures, per-frame series and runtime records."""

    scenario: Scenario
    config: StackConfig
    sim: Any  # the simulator, in its final state
    series: DriveSeries
    records: list[FrameRecord]  # the runtime's per-frame records (no images)
    route_points: np.ndarray  # (N, 2) [m] the route driven, world frame
    outcome: dict[str, Any]
    latency: dict[str, dict[str, Any]]  # per-stage telemetry table
    trace: ChromeTrace
    metrics: dict[str, Any]  # metrics.json
    interrupted: bool
    stop_signal: int | None = None  # the signal that stopped the drive or came while it wrote its outputs
    perception_path: dict | None = None  # what ran the network (backend, device, dtype) and how it was chosen
    between_ticks: dict | None = None  # the collector's work and operating point steps between ticks (pipeline/between_ticks.py)
    host_cpu: dict | None = None  # where the machine's CPU time went during the drive (provenance.cpu_shares)

    def kinds(self) -> list[str]:
        return self.series.kinds()

    def lateral_errors(self) -> np.ndarray:
        return lateral_errors(self.series, self.route_points)


class DriveObserver(Protocol):
    """Sees a drive as it happens: `start` after the reset, `frame` once per frame, `end` once.
    An observer with a `perception_path` attribute gets the stage's (what runs the network and
    at which operating point) before `start`."""

    def start(self, sim, obs: Observation) -> None: ...

    def frame(self, obs: Observation, record: FrameRecord) -> None: ...

    def end(self, result: DriveResult) -> None: ...


def _outcome(sim, runtime: StagedRuntime, stopped_by: int | None, error: str | None) -> dict[str, Any]:
    kinds = [e.kind for e in sim.events]
    return {
        "completed": bool(sim.monitor.route_completed),
        "interrupted": stopped_by is not None,
        **({"signal": signal_name(stopped_by)} if stopped_by is not None else {}),
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


def _progress_line(obs: Observation, record: FrameRecord, runtime: StagedRuntime) -> str:
    stages = " ".join(f"{name[:4]} {ms:5.1f}" for name, ms in record.stage_ms.items())
    misses = sum(t.misses for t in runtime.telemetry.values())
    state = f" FAILSAFE: {record.failsafe}" if record.failsafe else ""
    return f"t {obs.t:6.2f}s  v {obs.ego.speed:5.2f} m/s  ms: {stages}  misses {misses}{state}"


def drive(config: StackConfig, scenario: Scenario, *, observers: tuple[DriveObserver, ...] = (),
          on_frame: Callable[[Observation, FrameRecord], None] | None = None, sim=None, render: bool = True,
          max_time_s: float | None = None, show_progress: bool = False,
          stop_on_signals: bool = False) -> DriveResult:
    """Drive `scenario` closed loop under `config` (its time model, budgets and miss policies)
    until it ends, `max_time_s` passes, or Ctrl-C. `sim` defaults to the embedded simulator,
    rendering cameras unless `render` is False (perfect perception needs no images); a
    simulator made here (`make_simulator`: `sim.source` picks it) is closed at the end.
    With `stop_on_signals` (the CLI; main thread only) SIGINT, SIGTERM and SIGHUP are held for
    the whole drive and end it after the frame in progress; `stop_signal` says which came."""
    if config.perception.kind == "perfect" and not config.sim.ground_truth:
        raise ConfigError("sim.ground_truth: perfect perception needs ground truth; set sim.ground_truth: true")
    with SignalHold(STOP_SIGNALS if stop_on_signals else ()) as signals:
        own = sim is None
        sim = sim if sim is not None else make_simulator(config, render=render)
        try:
            return _drive(config, scenario, sim, observers, on_frame, max_time_s, show_progress, signals)
        finally:
            if own:
                with SignalHold(redeliver=True):  # a second Ctrl-C waits until the server is clean
                    sim.close()


def make_simulator(config: StackConfig, render: bool = True):
    """The world `sim.source` names: the embedded simulator, or a CARLA server (`carla.*`)."""
    if config.sim.source == "carla":
        from stagepilot.sim.carla.world import CarlaSimulator

        return CarlaSimulator(config, render=render)
    return EmbeddedSimulator(config, render=render)


def _drive(config, scenario, sim, observers, on_frame, max_time_s, show_progress, signals: SignalHold) -> DriveResult:
    obs = sim.reset(scenario)
    runtime = StagedRuntime(config, sim.road_map, signal_heads=getattr(sim, "signal_heads", None))
    series = DriveSeries()
    path = getattr(runtime.stack.perception, "path", None)
    for observer in observers:
        if hasattr(observer, "perception_path"):
            observer.perception_path = path
        observer.start(sim, obs)
    bar = tqdm(total=int(round(scenario.duration_s / sim.dt)), desc=f"drive {scenario.name}", unit="frame",
               disable=not show_progress, file=sys.stderr, dynamic_ncols=True)

    def frame(obs: Observation, record: FrameRecord) -> None:
        series.add(record, obs.route_progress, frame_events(obs, record))
        for observer in observers:
            observer.frame(obs, record)
        if on_frame is not None:
            on_frame(obs, record)
        if show_progress:  # the line is built only for a bar that shows it
            bar.update(1)
            bar.set_postfix_str(_progress_line(obs, record, runtime), refresh=False)
        signals.stop_if_received()  # between whole frames: the video, records and series agree

    stopped_by, error = None, None
    cpu_before = cpu_times()
    try:
        runtime.run(sim, obs, on_frame=frame, max_time_s=max_time_s)
    except KeyboardInterrupt as exc:  # Ctrl-C, or a held signal (Interrupted)
        stopped_by = getattr(exc, "signum", signal.SIGINT)
    except Exception as exc:  # observers still finish their outputs, then the error surfaces
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        bar.close()
        result = _result(config, scenario, sim, runtime, series, np.asarray(obs.route.points, float),
                         _outcome(sim, runtime, stopped_by, error), stopped_by is not None)
        result.perception_path = getattr(runtime.stack.perception, "path", None)
        result.host_cpu = cpu_shares(cpu_before, cpu_times())
        result.between_ticks = runtime.between_ticks.summary()
        with SignalHold(redeliver=True):  # a second Ctrl-C waits until every output is written
            failures = []
            for observer in observers:  # each finishes its outputs, whatever another one did
                try:
                    observer.end(result)
                except Exception as exc:
                    failures.append(exc)
            if failures and error is None:
                raise failures[0]
        result.stop_signal = stopped_by if stopped_by is not None else signals.first
    return result


def _result(config, scenario, sim, runtime, series, route_points, outcome, interrupted) -> DriveResult:
    latency = runtime.latency_table()
    metrics = drive_metrics(series, route_points, config.sim.dt_s, scenario=scenario.name,
                            config_hash=config_hash(config), outcome=outcome, latency=latency)
    return DriveResult(scenario=scenario, config=config, sim=sim, series=series, records=runtime.records,
                       route_points=route_points, outcome=outcome, latency=latency, trace=runtime.trace,
                       metrics=metrics, interrupted=interrupted)

"""Open-loop replay of a recording, stage by stage, through the real stage classes.

As openpilot's process replay does: each chosen stage is built from the recorded config (with
any overrides on top) and the recorded map, and is fed the recorded inputs of every frame it
ran in the drive, in order, so its state carries from frame to frame as it did then. Its
output is compared with the recorded one field by field (pipeline/replay_compare.py). The
controller is fed the recorded plans, the planner the recorded perception: a change in one
stage shows in that stage only.

`replay()` returns a `ReplayResult`: per stage the frames compared and matched, the first
divergence (frame, field, recorded vs now), per-frame series for the report, and the time
spent in the stages against the time spent reading, decoding and comparing.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from stagepilot.core.config import StackConfig
from stagepilot.perception.operating import STEP_EVENT, step_event_point
from stagepilot.pipeline.recording import Recording, RecordedFrame, RecordingError
from stagepilot.pipeline.replay_compare import Comparator, Difference, ReplayTolerances, load_tolerances

STAGES = ("perception", "planner", "controller")
WINDOW_FRAMES = 40  # frames kept before and after a stage's first divergence, for the report


@dataclass
class Divergence:
    stage: str
    frame: int
    t: float
    difference: Difference

    def line(self) -> str:
        return f"{self.stage}: first divergence at frame {self.frame} (t {self.t:.2f} s): {self.difference.line()}"


@dataclass
class StageReplay:
    """One stage's replay: counts, the first divergence, and per-frame series."""

    name: str
    frames: int = 0
    matched: int = 0
    first: Divergence | None = None
    stage_s: float = 0.0  # wall time inside the stage's step
    series: list[dict[str, Any]] = field(default_factory=list)  # per frame: frame, t, ok, recorded/now figures
    # (frame, recorded output, output now) around the first divergence: up to WINDOW_FRAMES
    # before it and WINDOW_FRAMES from it on (the last frames when there was none)
    window: deque = field(default_factory=lambda: deque(maxlen=WINDOW_FRAMES))

    @property
    def diverged(self) -> int:
        return self.frames - self.matched


@dataclass
class ReplayResult:
    path: Path
    stages: dict[str, StageReplay]
    frames: int  # whole frames read
    truncated: str | None  # why the recording ends early, when it does
    wall_s: float  # the whole replay loop: reading, decoding, stages, comparing
    config: StackConfig | None = None
    changes: list[str] = field(default_factory=list)  # --config files and key=value overrides on the recorded config
    outputs: dict[str, dict[int, Any]] = field(default_factory=dict)  # kept outputs now (update-golden)

    @property
    def ok(self) -> bool:
        return all(s.first is None for s in self.stages.values())

    @property
    def stage_s(self) -> float:
        return sum(s.stage_s for s in self.stages.values())

    @property
    def overhead_s(self) -> float:
        """Reading, decoding and comparing: the loop's time outside the stages."""
        return max(0.0, self.wall_s - self.stage_s)

    def exit_status(self) -> int:
        return 2 if self.truncated else (0 if self.ok else 1)

    def table(self) -> str:
        lines = [f"{'stage':11s} {'frames':>6s} {'match':>6s} {'differ':>6s} {'ms/frame':>8s} {'fps':>7s}  first divergence"]
        for s in self.stages.values():
            ms = s.stage_s / s.frames * 1e3 if s.frames else 0.0
            fps = s.frames / s.stage_s if s.stage_s > 0 else 0.0
            first = "-" if s.first is None else f"frame {s.first.frame} (t {s.first.t:.2f} s) {s.first.difference.line()}"
            lines.append(f"{s.name:11s} {s.frames:6d} {s.matched:6d} {s.diverged:6d} {ms:8.2f} {fps:7.1f}  {first}")
        share = self.overhead_s / self.stage_s * 100 if self.stage_s > 0 else 0.0
        lines.append(f"replay: {self.frames} frames in {self.wall_s:.2f} s ({self.frames / max(self.wall_s, 1e-9):.1f} fps); "
                     f"stages {self.stage_s:.2f} s, reading/decoding/comparing {self.overhead_s:.2f} s "
                     f"({share:.1f} % of the stages' time)")
        return "\n".join(lines)


def build_stage(name: str, config: StackConfig, road_map):
    from stagepilot.control import build_controller
    from stagepilot.pipeline.stack import build_perception, build_planner, vehicle_geometry

    if name == "perception":
        return build_perception(config, road_map)
    if name == "planner":
        return build_planner(config, road_map)
    return build_controller(config.controller, vehicle_geometry(config), config.sim.dt_s)


def _inputs(recording: Recording, frame: RecordedFrame, stage: str) -> tuple:
    if stage == "perception":
        return (recording.observation(frame),)
    if stage == "planner":
        return recording.planner_input(frame)
    return recording.controller_input(frame)


def _recorded(recording: Recording, frame: RecordedFrame, stage: str):
    if stage == "perception":
        return recording.perception(frame)
    if stage == "planner":
        return recording.plan(frame)
    return recording.control(frame)


def _figures(stage: str, output) -> dict[str, Any]:
    """A few plottable numbers of an output, for the report."""
    if stage == "perception":
        return {"detections": len(output.detections), "light": getattr(output.traffic_light, "state", None),
                "usable": output.usable}
    if stage == "planner":
        return {"decision": output.decision, "v0": float(output.v[0]) if len(output.v) else None,
                "v_end": float(output.v[-1]) if len(output.v) else None}
    return {"steer": output.steer, "throttle": output.throttle, "brake": output.brake}


def replay(path: str | Path, stages=STAGES, *, config_files=(), overrides=(), tolerances: ReplayTolerances | None = None,
           show_progress: bool = False, keep_outputs: bool = False,
           on_output: Callable[[str, RecordedFrame, Any, Any], None] | None = None,
           on_frame: Callable[[RecordedFrame], None] | None = None, recording: Recording | None = None) -> ReplayResult:
    """Replay `stages` of the recording at `path` (or the open `recording`); raises
    RecordingError on bad input. `on_output(stage, frame, recorded, now)` sees every output,
    `on_frame(frame)` every frame after its stages ran."""
    stages = tuple(s for s in STAGES if s in stages)
    tolerances = tolerances or load_tolerances()
    owned = recording is None
    recording = recording or Recording(path)
    try:
        return _replay(recording, stages, config_files, overrides, tolerances, show_progress, keep_outputs,
                       on_output, on_frame)
    finally:
        if owned:
            recording.close()


def _follow_steps(stage, frame: RecordedFrame) -> None:
    """A measured drive's learned stage may step down its operating point (perception/operating.py);
    the frame that first ran at the lower point carries the event, and the replay steps with it."""
    for event in frame.runtime.get("events", ()):
        point = step_event_point(event.get("detail", "")) if event.get("kind") == STEP_EVENT else None
        if point is not None and hasattr(stage, "use_point"):
            stage.use_point(point)


def _replay(recording: Recording, stages, config_files, overrides, tolerances, show_progress, keep_outputs,
            on_output, on_frame):
    recording.require(stages)
    config = recording.stage_config(config_files, overrides)
    road_map = recording.road_map()
    if road_map is None and stages != ("controller",):
        raise RecordingError(f"{recording.path}: carries no map, which the {stages[0]} needs")
    built = {name: build_stage(name, config, road_map) for name in stages}
    compare = {name: Comparator(name, tolerances) for name in stages}
    result = ReplayResult(recording.path, {name: StageReplay(name) for name in stages}, 0, None, 0.0, config,
                          [*(str(f) for f in config_files), *overrides])
    result.outputs = {name: {} for name in stages} if keep_outputs else {}
    expected = recording.meta.get("outcome", {}).get("frames")
    bar = tqdm(total=int(expected) if expected else None, desc=f"replay {recording.path.name}", unit="frame",
               disable=not show_progress, file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    for frame in recording.frames():
        result.frames += 1
        if "perception" in built:
            _follow_steps(built["perception"], frame)
        for name in stages:
            if name not in frame.ran:
                continue
            args = _inputs(recording, frame, name)
            if name == "controller" and hasattr(built[name], "expect_delay"):  # as the runtime told it
                built[name].expect_delay(recording.controller_delay(frame, config))
            t0 = time.perf_counter()
            now = built[name].step(*args)
            report = result.stages[name]
            report.stage_s += time.perf_counter() - t0
            recorded = _recorded(recording, frame, name)
            difference = compare[name].first(recorded, now)
            report.frames += 1
            report.matched += difference is None
            if difference is not None and report.first is None:
                report.first = Divergence(name, frame.frame, frame.t, difference)
                report.window = deque(report.window, maxlen=2 * WINDOW_FRAMES)
            if report.first is None or len(report.window) < report.window.maxlen:
                report.window.append((frame.frame, recorded, now))
            report.series.append({"frame": frame.frame, "t": frame.t, "ok": difference is None,
                                  "recorded": _figures(name, recorded), "now": _figures(name, now)})
            if keep_outputs:
                result.outputs[name][frame.frame] = now
            if on_output is not None:
                on_output(name, frame, recorded, now)
        if on_frame is not None:
            on_frame(frame)
        bar.update(1)
    result.wall_s = time.perf_counter() - start
    bar.close()
    if recording.truncated and not recording.complete:
        result.truncated = (f"{recording.truncated}; replayed the {result.frames} whole frames before the cut"
                            + (f" ({recording.partial_frames} partial frame dropped)" if recording.partial_frames else ""))
    return result

"""The run folder every drive writes (DESIGN.md, Runs and outputs).

    config.yaml   the resolved config            run.json      hash, seeds, versions, commit
    video.mp4     camera + overlays, streamed    metrics.json  outcome, events, comfort, latency
    summary.png   path, speed, stage latencies   trace.json    stage timings for Perfetto

`RunWriter` writes config.yaml and run.json when it is made, one video frame per `add`, and
the rest in `close`, which is idempotent and safe after an exception or Ctrl-C: the mp4 is
finalised and everything recorded so far is written. Use it as a context manager so a crash
still closes it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from stagepilot.perception.geometry import project_to_image, world_to_ego
from stagepilot.core.config import StackConfig, config_hash
from stagepilot.core.messages import Control, EgoState, Event, Observation, Perception, Plan
from stagepilot.pipeline.metrics import comfort, tracking_error
from stagepilot.core.paths import Polyline
from stagepilot.pipeline.trace import ChromeTrace, _plain
from stagepilot.sim.bev import BevDrawer
from stagepilot.sim.render.palette import colorize
from stagepilot.sim.traffic import Agent
from stagepilot.sim.video import BOX_BGR, VideoWriter

VIDEO_SIZE = (1280, 720)  # [px] width, height
INSET_SIZE = (420, 300)  # [px] bird's-eye inset
INSET_M_PER_PX = 0.2  # [m/px]: 41 m ahead of the ego, 84 m across
SEGMENTATION_ALPHA = 0.35
PLAN_BGR = (255, 255, 0)
LANE_BGR = (0, 215, 255)  # lane boundaries found by perception (amber)
MISS_BGR = (60, 60, 255)
EVENT_BGR = (0, 220, 255)
TEXT_BGR = (240, 240, 240)
FONT = cv2.FONT_HERSHEY_SIMPLEX
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class FrameRecord:
    """What the runtime knows about one frame, beyond the observation."""

    t: float  # [s] sim time
    frame: int
    ego: EgoState
    control: Control
    plan: Plan | None
    perception: Perception | None
    events: tuple[Event, ...]  # sim and runtime events this frame (duplicates of obs.events are dropped)
    stage_ms: dict[str, float]  # measured latency of each stage this frame [ms]
    charged_delay_s: float  # sensor-to-actuator latency the time model charged [s]
    misses: tuple[str, ...] = ()  # e.g. "planner: 23.1 ms > 15 ms budget (hold)"
    failsafe: str | None = None  # why the fail-safe was active, None when it was not


# ---------------------------------------------------------------- provenance


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def run_info(config: StackConfig, scenario, started: datetime.datetime) -> dict[str, Any]:
    """Everything needed to reproduce the run: config hash, seeds, code and library versions."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    return {
        "config_hash": config_hash(config),
        "scenario": {"name": scenario.name, "source": scenario.source, "seed": scenario.seed,
                     "map": scenario.map_path or scenario.map, "duration_s": scenario.duration_s},
        "perception_seed": config.perception.perfect.seed,
        "versions": {
            "python": platform.python_version(),
            "stagepilot": _version("stagepilot"),
            "numpy": _version("numpy"),
            "torch": _version("torch"),
            "opencv": _version("opencv-python", "opencv-python-headless", "opencv-contrib-python") or cv2.__version__,
            "carla": _version("carla"),
        },
        "git": {"commit": commit, "dirty": None if status is None else bool(status)},
        "started": started.isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "argv": sys.argv,
    }


def write_json(path: Path, data: Any) -> None:
    """Atomic write; NaN and infinities become null."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_plain(data), indent=2, allow_nan=False, default=str))
    os.replace(tmp, path)


# ---------------------------------------------------------------- geometry


def footprint_ego(position: tuple[float, float], yaw: float, length: float, width: float) -> np.ndarray:
    """(4, 3) ground corners of a box in the ego frame [m]."""
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[length, width], [length, -width], [-length, -width], [-length, width]]) / 2
    xy = local @ np.array([[c, s], [-s, c]]) + position
    return np.hstack([xy, np.zeros((4, 1))])


def _world_objects(obs: Observation, record: FrameRecord) -> tuple[list[Agent], list[tuple]]:
    """Road users as world-frame Agents and (xy, state) lights at the frame's time: ground
    truth when the observation has it, else the perceived detections."""
    truth = obs.ground_truth
    if truth is not None:
        agents = [Agent(o.id, o.kind, o.center_world[0], o.center_world[1], o.yaw_world, 0.0, o.extent, (0, 0, 0))
                  for o in truth.objects if o.kind != "traffic_light"]
        lights = [(light.position[:2], light.state) for light in truth.traffic_lights]
        return agents, lights
    if record.perception is None:
        return [], []
    ego = record.ego
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    agents = [Agent(d.track_id, d.kind, ego.x + c * d.position[0] - s * d.position[1],
                    ego.y + s * d.position[0] + c * d.position[1], ego.yaw + d.yaw, 0.0, d.extent, (0, 0, 0))
              for d in record.perception.detections if d.kind != "traffic_light"]
    return agents, []


# ---------------------------------------------------------------- video frame


def _text(img: np.ndarray, line: str, org: tuple[int, int], color=TEXT_BGR, scale: float = 0.55) -> None:
    # A shadow one pixel off, not a thick outline: OpenCV 5 draws thick text wider, not bolder.
    cv2.putText(img, line, (org[0] + 1, org[1] + 1), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, line, org, FONT, scale, color, 1, cv2.LINE_AA)


class FrameDrawer:
    """One video frame: the camera with segmentation, planned path and detections overlaid,
    a bird's-eye inset (top right) and the frame's state as text (top left)."""

    def __init__(self, sim, camera: str | None, vehicle):
        self.camera = camera
        self.vehicle = vehicle  # VehicleConfig: length_m, width_m, rear_overhang_m
        ground = getattr(getattr(sim, "sensors", None), "ground", None)
        self.bev = BevDrawer(ground, sim.route.path.points, size=INSET_SIZE) if ground is not None else None
        self.recent_events: list[Event] = []

    def draw(self, obs: Observation, record: FrameRecord, events: list[Event]) -> np.ndarray:
        frame = np.zeros((VIDEO_SIZE[1], VIDEO_SIZE[0], 3), np.uint8)
        image = obs.cameras.get(self.camera) if self.camera else None
        seg_source = ""
        if image is not None:
            scale, offset, seg_source = self._camera(frame, image, obs, record.perception)
            if record.plan is not None:
                self._plan(frame, record.plan, record.ego, image, scale, offset)
            if record.perception is not None:
                self._road(frame, record.perception, image, scale, offset)
                self._detections(frame, record.perception, image, scale, offset)
        if self.bev is not None:
            self._inset(frame, obs, record)
        self.recent_events = [e for e in self.recent_events + events if record.t - e.t < 3.0][-3:]
        self._state(frame, obs, record, seg_source)
        return frame

    def _camera(self, frame, image, obs, perception) -> tuple[float, np.ndarray, str]:
        h, w = image.rgb.shape[:2]
        scale = min(VIDEO_SIZE[0] / w, VIDEO_SIZE[1] / h)
        size = (round(w * scale), round(h * scale))
        offset = np.array([(VIDEO_SIZE[0] - size[0]) // 2, (VIDEO_SIZE[1] - size[1]) // 2])
        bgr = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR)
        semantic, source = perception.semantic if perception is not None else None, "perception"
        if semantic is None and obs.ground_truth is not None:
            semantic, source = obs.ground_truth.semantic.get(self.camera), "ground truth"
        if semantic is not None:
            seg_bgr = cv2.cvtColor(colorize(semantic), cv2.COLOR_RGB2BGR)
            bgr = cv2.addWeighted(bgr, 1 - SEGMENTATION_ALPHA, seg_bgr, SEGMENTATION_ALPHA, 0)
        else:
            source = ""
        frame[offset[1]:offset[1] + size[1], offset[0]:offset[0] + size[0]] = cv2.resize(
            bgr, size, interpolation=cv2.INTER_LINEAR)
        return scale, offset, source

    def _plan(self, frame, plan: Plan, ego: EgoState, image, scale: float, offset: np.ndarray) -> None:
        """The planned path as a ribbon of the car's width on the ground."""
        centre = world_to_ego(np.stack([plan.x, plan.y], 1), ego)
        yaw = np.asarray(plan.yaw, float) - ego.yaw
        normal = np.stack([-np.sin(yaw), np.cos(yaw)], 1) * self.vehicle.width_m / 2
        edges = []
        for side in (1.0, -1.0):
            points = np.hstack([centre + side * normal, np.zeros((len(centre), 1))])
            edges.append(project_to_image(points, image.K, image.T_ego_cam))
        keep = edges[0][1] & edges[1][1]
        if keep.sum() < 2:
            return
        left, right = (np.rint(e[0][keep] * scale + offset).astype(np.int32) for e in edges)
        overlay = frame.copy()
        cv2.fillPoly(overlay, [np.vstack([left, right[::-1]])], PLAN_BGR, cv2.LINE_AA)
        cv2.addWeighted(overlay, 0.3, frame, 0.7, 0, dst=frame)
        cv2.polylines(frame, [left, right], False, PLAN_BGR, 2, cv2.LINE_AA)

    def _road(self, frame, perception: Perception, image, scale: float, offset: np.ndarray) -> None:
        """The lane boundaries perception found, drawn back on the ground in the image."""
        road = perception.road
        if road is None:
            return
        for boundary in (road.left_boundary, road.right_boundary):
            if boundary is None or len(boundary) < 2:
                continue
            points = np.hstack([boundary, np.zeros((len(boundary), 1))])
            uv, in_front = project_to_image(points, image.K, image.T_ego_cam)
            if in_front.sum() < 2:
                continue
            px = np.rint(uv[in_front] * scale + offset).astype(np.int32)
            cv2.polylines(frame, [px], False, LANE_BGR, 3, cv2.LINE_AA)

    def _detections(self, frame, perception: Perception, image, scale: float, offset: np.ndarray) -> None:
        for det in perception.detections:
            color = BOX_BGR.get(det.kind, (255, 255, 255))
            label = f"{det.kind} {det.track_id}"
            if det.box_2d is not None:
                x0, y0, x1, y1 = (np.array(det.box_2d).reshape(2, 2) * scale + offset).ravel()
                cv2.rectangle(frame, (int(x0), int(y0)), (int(x1), int(y1)), color, 2, cv2.LINE_AA)
                anchor = (int(x0), int(y0) - 4)
            else:
                corners = footprint_ego(det.position, det.yaw, det.extent[0], det.extent[1])
                uv, in_front = project_to_image(corners, image.K, image.T_ego_cam)
                if not in_front.all():
                    continue
                px = np.rint(uv * scale + offset).astype(np.int32)
                cv2.polylines(frame, [px], True, color, 2, cv2.LINE_AA)
                anchor = (int(px[:, 0].min()), int(px[:, 1].min()) - 4)
            _text(frame, label, anchor, color, 0.45)

    def _inset(self, frame, obs: Observation, record: FrameRecord) -> None:
        """Drawn from the frame's own ground truth (or detections), not the simulator's live
        state, which a pipelined runtime has already stepped past this frame."""
        ego = record.ego
        c, s = math.cos(ego.yaw), math.sin(ego.yaw)
        ahead = self.vehicle.length_m / 2 - self.vehicle.rear_overhang_m  # rear axle -> body centre
        ego_agent = Agent(0, "vehicle", ego.x + ahead * c, ego.y + ahead * s, ego.yaw, ego.speed,
                          (self.vehicle.length_m, self.vehicle.width_m, 1.5), (0, 0, 0))
        agents, lights = _world_objects(obs, record)
        view = self.bev.local_view(ego_agent, agents, lights, meters_per_px=INSET_M_PER_PX, plan=record.plan)
        x0, y0 = VIDEO_SIZE[0] - INSET_SIZE[0] - 10, 10
        frame[y0:y0 + INSET_SIZE[1], x0:x0 + INSET_SIZE[0]] = view
        cv2.rectangle(frame, (x0 - 1, y0 - 1), (x0 + INSET_SIZE[0], y0 + INSET_SIZE[1]), (255, 255, 255), 1)

    def _state(self, frame, obs: Observation, record: FrameRecord, seg_source: str) -> None:
        plan = record.plan
        stages = "  ".join(f"{name} {ms:.1f}" for name, ms in record.stage_ms.items())
        lines = [
            (f"t {record.t:6.2f} s   frame {record.frame}   speed {record.ego.speed:5.2f} m/s   "
             + f"limit {obs.route.speed_limit:.1f} m/s", TEXT_BGR),
            (f"plan: {plan.reason}" if plan is not None else "plan: none", TEXT_BGR),
            (f"ms: {stages}   charged delay {record.charged_delay_s * 1e3:.0f}", TEXT_BGR),
            *[(f"MISS {line}", MISS_BGR) for line in record.misses[:3]],
            *([(f"FAIL-SAFE: {record.failsafe}", MISS_BGR)] if record.failsafe else []),
            *[(f"{e.t:6.2f} s {e.kind}: {e.detail}", EVENT_BGR) for e in self.recent_events],
            *([(f"segmentation: {seg_source}", (200, 200, 200))] if seg_source else []),
            *([(f"light ahead: {record.perception.traffic_light.state}", (200, 200, 200))]
              if record.perception is not None and record.perception.traffic_light is not None else []),
        ]
        width = VIDEO_SIZE[0] - INSET_SIZE[0] - 40
        shade = frame[8:16 + 22 * len(lines), 8:8 + width]
        shade[:] = (shade * 0.45).astype(np.uint8)
        for i, (line, color) in enumerate(lines):
            _text(frame, line[:95], (16, 28 + 22 * i), color)


# ---------------------------------------------------------------- per-frame numbers


@dataclass
class _Series:
    """The light-weight numbers of every frame, for metrics.json and summary.png."""

    t: list[float] = field(default_factory=list)
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    yaw_rate: list[float] = field(default_factory=list)
    planned_speed: list[float] = field(default_factory=list)  # plan's speed at its start, NaN without
    delay_s: list[float] = field(default_factory=list)
    stage_ms: list[dict[str, float]] = field(default_factory=list)
    events: list[tuple[Event, float, float]] = field(default_factory=list)  # with the ego's x, y
    misses: list[dict[str, Any]] = field(default_factory=list)
    failsafes: list[dict[str, Any]] = field(default_factory=list)

    def add(self, record: FrameRecord, events: list[Event]) -> None:
        ego, plan = record.ego, record.plan
        self.t.append(record.t)
        self.x.append(ego.x)
        self.y.append(ego.y)
        self.speed.append(ego.speed)
        self.yaw_rate.append(ego.yaw_rate)
        self.planned_speed.append(float(plan.v[0]) if plan is not None and len(plan.v) else math.nan)
        self.delay_s.append(record.charged_delay_s)
        self.stage_ms.append(dict(record.stage_ms))
        self.events += [(e, ego.x, ego.y) for e in events]
        self.misses += [{"t": record.t, "frame": record.frame, "stage": line.split(":", 1)[0], "line": line}
                        for line in record.misses]
        self._add_failsafe(record)

    def _add_failsafe(self, record: FrameRecord) -> None:
        """One entry per stretch of frames with the same fail-safe reason."""
        last = self.failsafes[-1] if self.failsafes else None
        if record.failsafe is None:
            return
        if last is not None and last["reason"] == record.failsafe and last["last_frame"] == record.frame - 1:
            last.update(t_end=record.t, last_frame=record.frame, frames=last["frames"] + 1)
        else:
            self.failsafes.append({"t": record.t, "t_end": record.t, "reason": record.failsafe,
                                   "frame": record.frame, "last_frame": record.frame, "frames": 1})

    def stages(self) -> list[str]:
        return list(dict.fromkeys(name for row in self.stage_ms for name in row))

    def stage_series(self, name: str) -> np.ndarray:
        return np.array([row.get(name, math.nan) for row in self.stage_ms], float)


def _percentiles(values: np.ndarray, *qs: int) -> dict[str, float | None]:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values):
        return {**{f"p{q}_ms": None for q in qs}, "max_ms": None}
    return {**{f"p{q}_ms": float(np.percentile(values, q)) for q in qs}, "max_ms": float(values.max())}


def budget_ms(config: StackConfig, stage: str) -> float | None:
    """The stage's latency budget [ms] from runtime.stages, None for a stage it does not name."""
    stage_config = getattr(config.runtime.stages, stage, None)
    return None if stage_config is None else stage_config.budget_ms


def latency_table(series: _Series, config: StackConfig) -> dict[str, dict[str, Any]]:
    """Per stage: count, p50/p95/p99/max [ms], budget and misses, from the recorded frames
    (the fallback when the runtime passes no table of its own)."""
    table = {}
    for name in series.stages():
        values = series.stage_series(name)
        table[name] = {"count": int(np.isfinite(values).sum()), **_percentiles(values, 50, 95, 99),
                       "budget_ms": budget_ms(config, name),
                       "misses": sum(m["stage"] == name for m in series.misses)}
    return table


def _tracking(series: _Series, route_points: np.ndarray) -> dict[str, float] | None:
    """Rear-axle offset from the route, over the frames that project inside it."""
    route, hint, errors = Polyline(route_points), None, []
    for x, y in zip(series.x, series.y):
        s, d = route.project(x, y, s_hint=hint)
        hint = s
        if 0.0 < s < route.length:
            errors.append(d)
    return tracking_error(np.array(errors)) if errors else None


def _comfort(series: _Series, dt: float) -> dict[str, float] | None:
    try:
        return comfort(np.array(series.speed), np.array(series.yaw_rate), dt)
    except ValueError:  # too short a drive
        return None


# ---------------------------------------------------------------- summary plot


def plot_summary(path: Path, series: _Series, route_points: np.ndarray, budgets: dict[str, float | None],
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
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def _plot_path(ax, series: _Series, route_points: np.ndarray) -> None:
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


def _shade_failsafes(ax, series: _Series) -> None:
    for i, stretch in enumerate(series.failsafes):
        ax.axvspan(stretch["t"], stretch["t_end"] + 1e-3, color="r", alpha=0.15,
                   label="fail-safe" if i == 0 else None)


def _plot_speed(ax, series: _Series) -> None:
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


def _plot_latency(ax, series: _Series, budgets: dict[str, float | None]) -> None:
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


# ---------------------------------------------------------------- the writer


def default_run_dir(root: Path, scenario_name: str, now: datetime.datetime | None = None) -> Path:
    """runs/<YYYYmmdd-HHMMSS>-<scenario>/, with a suffix if that folder exists already."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    path, n = Path(root) / f"{stamp}-{scenario_name}", 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{scenario_name}-{n}"
    return path


class RunWriter:
    """Writes one run folder: `add` once per frame, then `close`. The simulator gives the
    ground raster and route for the bird's-eye inset (none when it has no sensors)."""

    def __init__(self, out_dir: Path, config: StackConfig, scenario, sim, camera: str | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config, self.scenario, self.sim = config, scenario, sim
        self.info = run_info(config, scenario, datetime.datetime.now(datetime.timezone.utc))
        (self.out_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        write_json(self.out_dir / "run.json", self.info)
        self.route_points = np.asarray(sim.route.path.points, float)
        self.series = _Series()
        self.video = VideoWriter(self.out_dir / "video.mp4", fps=1.0 / config.sim.dt_s)
        self.camera = camera
        self._drawer: FrameDrawer | None = None
        self._done: set[str] = set()

    @property
    def closed(self) -> bool:
        return len(self._done) == 4

    def add(self, obs: Observation, record: FrameRecord) -> None:
        """Record one frame and append its video frame (nothing image-sized is kept)."""
        if self._done:
            raise RuntimeError(f"{self.out_dir}: add() after close()")
        events = list(dict.fromkeys((*obs.events, *record.events)))
        self.series.add(record, events)
        if self._drawer is None:
            camera = self.camera or next(iter(obs.cameras), None)
            self._drawer = FrameDrawer(self.sim, camera, self.config.vehicle)
        self.video.write(self._drawer.draw(obs, record, events))

    def close(self, outcome: dict | None = None, latency_table: dict | None = None,
              trace: ChromeTrace | None = None) -> None:
        """Finalise the video and write metrics.json, trace.json and summary.png. Idempotent:
        what a previous call finished is not redone. Raises after all parts are tried if one failed."""
        parts = [("video.mp4", self.video.close),
                 ("metrics.json", lambda: write_json(self.out_dir / "metrics.json",
                                                     self.metrics(outcome, latency_table))),
                 ("trace.json", lambda: (trace or ChromeTrace()).write(self.out_dir / "trace.json")),
                 ("summary.png", lambda: self._summary(latency_table))]
        errors = []
        for name, write in parts:
            if name in self._done:
                continue
            try:
                write()
                self._done.add(name)
            except Exception as exc:  # the other parts are still worth writing
                errors.append(f"{name}: {exc!r}")
        if errors:
            raise OSError(f"{self.out_dir}: could not write " + "; ".join(errors))

    def metrics(self, outcome: dict | None, table: dict | None) -> dict[str, Any]:
        series = self.series
        delay_ms = np.array(series.delay_s, float) * 1e3
        return {
            "scenario": self.scenario.name,
            "config_hash": self.info["config_hash"],
            "outcome": outcome or {},
            "frames": len(series.t),
            "events": [{"t": e.t, "kind": e.kind, "detail": e.detail, "other_id": e.other_id}
                       for e, _, _ in series.events],
            "comfort": _comfort(series, self.config.sim.dt_s),
            "tracking": _tracking(series, self.route_points),
            "latency": table if table is not None else latency_table(series, self.config),
            "sensor_to_actuator_ms": {k: v for k, v in _percentiles(delay_ms, 50, 99).items()},
            "misses": [{"t": m["t"], "frame": m["frame"], "line": m["line"]} for m in series.misses],
            "failsafes": [{k: f[k] for k in ("t", "t_end", "reason", "frames")} for f in series.failsafes],
        }

    def _summary(self, table: dict | None) -> None:
        stages = self.series.stages()
        budgets = {name: (table or {}).get(name, {}).get("budget_ms", budget_ms(self.config, name)) for name in stages}
        title = f"{self.scenario.name}   seed {self.scenario.seed}   config {self.info['config_hash']}"
        plot_summary(self.out_dir / "summary.png", self.series, self.route_points, budgets, title)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.closed:
            outcome = None if exc is None else {"completed": False, "interrupted": exc_type is KeyboardInterrupt,
                                                "error": repr(exc)}
            self.close(outcome)

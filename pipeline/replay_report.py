"""The diff report of a replay (pipeline/replay.py): report.md, differences.png, side_by_side.mp4.

report.md: the recording, recorded and replayed config hashes, the summary table, per stage the
first divergence (frame, t, field, recorded vs now) or that it matches. differences.png: per
stage a strip of matching (green) and diverging (red) frames over t, and the recorded (solid)
against the replayed (dashed) figures, the first divergence a red line. side_by_side.mp4: the
window around the first divergence of the stage that diverged first (earliest frame, then
pipeline order), recorded left and now right over each frame's camera (or a blank canvas).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from stagepilot.core.camera import camera_pose, pinhole_intrinsics
from stagepilot.core.config import CameraConfig, config_hash
from stagepilot.core.messages import Control, EgoState, Perception, Plan
from stagepilot.perception.geometry import project_to_image, world_to_ego
from stagepilot.pipeline.overlay import PLAN_BGR, SEGMENTATION_ALPHA, TEXT_BGR, footprint_ego
from stagepilot.pipeline.recording import RecordedFrame, Recording, RecordingError
from stagepilot.pipeline.replay import ReplayResult, StageReplay
from stagepilot.sim.render.palette import colorize
from stagepilot.sim.video import BOX_BGR, VideoWriter

REPORT, PLOT, VIDEO = "report.md", "differences.png", "side_by_side.mp4"
FIGURES = {"perception": ("count", ("detections",)), "planner": ("speed [m/s]", ("v0", "v_end")),
           "controller": ("command", ("steer", "throttle", "brake"))}  # per stage: y label, figures
PANEL = (640, 360)  # [px] width, height of each half of a video frame
BANNER_PX = 52  # [px] the text band above both halves
FIRST_BGR, DIFFERS_BGR, MATCHES_BGR = (40, 40, 255), (0, 165, 255), (80, 200, 80)
CANVAS_GREY = 48
FONT = cv2.FONT_HERSHEY_SIMPLEX


def write_report(out_dir: Path, result: ReplayResult) -> Path:
    """Write report.md, differences.png and (when a stage diverged) side_by_side.mp4 into
    `out_dir`, created if missing; returns the path of report.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_differences(out_dir / PLOT, result)
    video = out_dir / VIDEO
    video.unlink(missing_ok=True)  # never leave an earlier report's video beside this page
    stage = first_diverged(result)
    video_note = "No video: every stage matches the recording."
    if stage is not None:
        try:
            frames = write_side_by_side(video, result, stage)
            video_note = _video_note(result.stages[stage], frames)
        except RecordingError as exc:
            video.unlink(missing_ok=True)
            video_note = f"No video: the recording could not be read back ({exc})."
    page = out_dir / REPORT
    page.write_text(markdown(result, video_note))
    return page


def first_diverged(result: ReplayResult) -> str | None:
    """The stage whose first divergence comes first (pipeline order breaks a tie), or None."""
    diverged = [s for s in result.stages.values() if s.first is not None]
    return min(diverged, key=lambda s: s.first.frame).name if diverged else None


# ------------------------------------------------------------------ report.md

def markdown(result: ReplayResult, video_note: str) -> str:
    recorded_hash, scenario = _recording_info(result.path)
    now_hash = config_hash(result.config) if result.config is not None else "unknown"
    changes = ", ".join(f"`{c}`" for c in result.changes)
    same = "the same" if now_hash == recorded_hash else f"differs: the replay ran with {changes or 'another config'}"
    diverged = [s.name for s in result.stages.values() if s.first is not None]
    verdict = (f"**Diverges: {', '.join(diverged)}.**" if diverged
               else f"**Every stage matches the recording** ({result.frames} frames).")
    lines = [f"# Replay report: {result.path.name}", "",
             f"- recording: `{result.path}`" + (f" (scenario {scenario})" if scenario else ""),
             f"- config hash: recorded `{recorded_hash}`, replayed `{now_hash}` ({same})",
             f"- frames replayed: {result.frames}", ""]
    if result.truncated:
        lines += [f"> **Truncated:** {result.truncated}", ""]
    lines += [verdict, "", "## Summary", "", "```", result.table(), "```", "", "## Stages", ""]
    for stage in result.stages.values():
        lines += _stage_lines(stage) + [""]
    lines += ["## Figures", "", f"![recorded against now, per stage]({PLOT})", "", "## Side by side", "", video_note, ""]
    return "\n".join(lines)


def _stage_lines(stage: StageReplay) -> list[str]:
    if stage.frames == 0:
        return [f"### {stage.name}: no frames", "", "The stage ran in no frame of the recording."]
    if stage.first is None:
        return [f"### {stage.name}: matches", "", f"All {stage.frames} frames match."]
    first, diff = stage.first, stage.first.difference
    lines = [f"### {stage.name}: diverges at frame {first.frame}", "",
             f"- first divergence: frame **{first.frame}**, t {first.t:.2f} s",
             f"- field: `{diff.field}`",
             f"- recorded: `{_code(diff.recorded)}`",
             f"- now: `{_code(diff.now)}`"]
    if diff.detail:
        lines.append(f"- detail: {diff.detail}")
    lines.append(f"- frames that differ: {stage.diverged} of {stage.frames}")
    return lines


def _code(value) -> str:
    text = repr(value).replace("`", "'").replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


def _recording_info(path: Path) -> tuple[str, str]:
    """(config hash, scenario) from the recording's metadata; 'unknown' when unreadable."""
    try:
        with Recording(path) as recording:
            return recording.info("config_hash", "unknown"), recording.info("scenario")
    except RecordingError:
        return "unknown", ""


def _video_note(stage: StageReplay, frames: int) -> str:
    if frames == 0:
        return f"No video: none of the {stage.name}'s window frames could be read back from the recording."
    first = stage.first
    span = f"frames {stage.window[0][0]} to {stage.window[-1][0]}"
    return (f"[{VIDEO}]({VIDEO}): the {stage.name}, {span} ({frames} frames), recorded output left, "
            f"output now right. The first divergence (frame {first.frame}, `{first.difference.field}`) is framed "
            f"in red, other frames that differ in orange, matching frames in green.")


# ------------------------------------------------------------------ differences.png

def plot_differences(path: Path, result: ReplayResult) -> None:
    """Per stage: match/diverge strip over t, recorded vs now figures; 1400 px wide PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state
    from matplotlib.figure import Figure

    stages = list(result.stages.values())
    fig = Figure(figsize=(14, 1.0 + 3.2 * max(len(stages), 1)), dpi=100)
    FigureCanvasAgg(fig)
    if not stages:
        fig.text(0.5, 0.5, "no stage replayed", ha="center")
    grid = fig.add_gridspec(max(len(stages), 1), 1, hspace=0.45)
    for i, stage in enumerate(stages):
        strip_ax, values_ax = (fig.add_subplot(g) for g in grid[i].subgridspec(2, 1, height_ratios=(1, 5), hspace=0.05))
        values_ax.sharex(strip_ax)
        _plot_stage(strip_ax, values_ax, stage)
    fig.subplots_adjust(left=0.06, right=0.85, top=1.0 - 0.9 / fig.get_figheight(), bottom=0.5 / fig.get_figheight())
    fig.suptitle(f"replay of {result.path.name}: recorded (solid) against now (dashed)"
                 + ("  [truncated]" if result.truncated else ""))
    tmp = path.with_name(path.stem + ".tmp.png")  # atomic: a reader never sees half a PNG
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _plot_stage(strip_ax, values_ax, stage: StageReplay) -> None:
    t = np.array([row["t"] for row in stage.series], float)
    ok = np.array([row["ok"] for row in stage.series], bool)
    title = f"{stage.name}: {stage.matched} of {stage.frames} frames match"
    if stage.first is not None:
        title += f"; first divergence frame {stage.first.frame} (t {stage.first.t:.2f} s) {stage.first.difference.field}"
    strip_ax.set_title(title, fontsize=10, loc="left")
    for start, end, good in _runs(t, ok):
        strip_ax.axvspan(start, end, color="tab:green" if good else "tab:red", lw=0)
    strip_ax.set_yticks([])
    strip_ax.tick_params(labelbottom=False)
    strip_ax.set_ylim(0, 1)
    unit, names = FIGURES.get(stage.name, ("", ()))
    for j, name in enumerate(names):
        color = f"C{j}"
        for side, style, width in (("recorded", "-", 2.2), ("now", "--", 1.2)):
            values = np.array([_number(row[side].get(name)) for row in stage.series], float)
            values_ax.plot(t, values, color=color, ls=style, lw=width, alpha=0.7 if side == "recorded" else 1.0,
                           label=f"{name} {side}", drawstyle="steps-post" if name == "detections" else "default")
    if stage.first is not None:
        for ax in (strip_ax, values_ax):
            ax.axvline(stage.first.t, color="r", lw=1.2, label="first divergence" if ax is values_ax else None)
    values_ax.set(xlabel="t [s]", ylabel=unit)
    values_ax.grid(alpha=0.3)
    if values_ax.get_legend_handles_labels()[0]:
        values_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def _runs(t: np.ndarray, ok: np.ndarray) -> list[tuple[float, float, bool]]:
    """(t start, t end, ok) of each run of frames with the same state; a frame spans half
    the step to each neighbour."""
    if len(t) == 0:
        return []
    step = float(np.median(np.diff(t))) if len(t) > 1 else 0.05
    edges = np.concatenate([[t[0] - step / 2], (t[1:] + t[:-1]) / 2, [t[-1] + step / 2]])
    change = np.flatnonzero(np.diff(ok.astype(np.int8))) + 1
    starts, ends = np.concatenate([[0], change]), np.concatenate([change, [len(t)]])
    return [(float(edges[a]), float(edges[b]), bool(ok[a])) for a, b in zip(starts, ends)]


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


# ------------------------------------------------------------------ side_by_side.mp4

def write_side_by_side(path: Path, result: ReplayResult, stage: str) -> int:
    """The window of `stage`, recorded left and now right, over each frame's camera image;
    returns the number of frames written."""
    report = result.stages[stage]
    window = {frame: (recorded, now) for frame, recorded, now in report.window}
    if not window:
        return 0
    ok = {row["frame"]: row["ok"] for row in report.series}
    last = max(window)
    fps = 1.0 / result.config.sim.dt_s if result.config is not None else 20.0
    width_m = result.config.vehicle.width_m if result.config is not None else 1.8
    with Recording(result.path) as recording, VideoWriter(path, fps) as video:
        camera = recording.info("camera")
        spec = result.config.sim.cameras.get(camera) if result.config is not None else None
        for frame in recording.frames():
            if frame.frame > last:
                break
            if frame.frame not in window:
                continue
            base = _Canvas.of(recording, frame, camera, spec or CameraConfig())
            recorded, now = window[frame.frame]
            halves = [_half(base, stage, recorded, now, "recorded", width_m), _half(base, stage, now, recorded, "now", width_m)]
            video.write(_compose(halves, report, frame, ok.get(frame.frame, True)))
        return video.frames


class _Canvas:
    """One half's background: the camera image (or a blank canvas) fitted into PANEL, with the
    projection of ego-frame points and image pixels into it."""

    def __init__(self, rgb: np.ndarray | None, size: tuple[int, int], K: np.ndarray, T_ego_cam: np.ndarray,  # noqa: N803
                 ego: EgoState | None):
        self.K, self.T_ego_cam, self.ego = K, T_ego_cam, ego
        self.scale = min(PANEL[0] / size[0], PANEL[1] / size[1])
        self.fitted = (round(size[0] * self.scale), round(size[1] * self.scale))
        self.offset = np.array([(PANEL[0] - self.fitted[0]) // 2, (PANEL[1] - self.fitted[1]) // 2])
        self.image = np.full((PANEL[1], PANEL[0], 3), CANVAS_GREY, np.uint8)
        if rgb is not None:
            x0, y0 = self.offset
            self.image[y0:y0 + self.fitted[1], x0:x0 + self.fitted[0]] = cv2.resize(
                cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), self.fitted, interpolation=cv2.INTER_AREA)

    @classmethod
    def of(cls, recording: Recording, frame: RecordedFrame, camera: str, spec: CameraConfig) -> _Canvas:
        """The frame's camera image and calibration; the configured camera over a blank canvas
        when the recording holds no image, the ego from the stage inputs when no observation."""
        try:
            obs = recording.observation(frame)
        except RecordingError:
            obs = None
        image = obs.cameras.get(camera) if obs is not None else None
        ego = obs.ego if obs is not None else _recorded_ego(recording, frame)
        if image is not None and image.rgb is not None:
            return cls(image.rgb, image.rgb.shape[1::-1], image.K, image.T_ego_cam, ego)  # size (w, h)
        K = pinhole_intrinsics(spec.width, spec.height, spec.fov_deg)  # noqa: N806
        pose = camera_pose(spec.x, spec.y, spec.z, spec.roll_deg, spec.pitch_deg, spec.yaw_deg)
        return cls(None, (spec.width, spec.height), K, pose, ego)

    def project(self, points_ego: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        uv, in_front = project_to_image(points_ego, self.K, self.T_ego_cam)
        return np.nan_to_num(uv * self.scale + self.offset), in_front


def _recorded_ego(recording: Recording, frame: RecordedFrame) -> EgoState | None:
    for read in (recording.planner_input, recording.controller_input):
        try:
            return read(frame)[0]
        except (RecordingError, KeyError):
            continue
    return None


def _half(base: _Canvas, stage: str, output, other, label: str, width_m: float) -> np.ndarray:
    img = base.image.copy()
    if isinstance(output, Perception):
        _draw_perception(img, base, output)
    elif isinstance(output, Plan):
        _draw_plan(img, base, output, other, width_m)
    elif isinstance(output, Control):
        _draw_control(img, output, other)
    else:
        _text(img, f"no {stage} output", (16, PANEL[1] // 2), DIFFERS_BGR)
    _text(img, label, (12, 26), (255, 255, 255), 0.8)
    return img


def _draw_perception(img: np.ndarray, base: _Canvas, perception: Perception) -> None:
    if perception.semantic is not None:
        seg = cv2.resize(cv2.cvtColor(colorize(perception.semantic), cv2.COLOR_RGB2BGR), base.fitted,
                         interpolation=cv2.INTER_NEAREST)
        x0, y0 = base.offset
        region = img[y0:y0 + base.fitted[1], x0:x0 + base.fitted[0]]
        region[:] = cv2.addWeighted(region, 1 - SEGMENTATION_ALPHA, seg, SEGMENTATION_ALPHA, 0)
    for det in perception.detections:
        color = BOX_BGR.get(det.kind, (255, 255, 255))
        if det.box_2d is not None:
            (x0, y0), (x1, y1) = np.rint(np.reshape(det.box_2d, (2, 2)) * base.scale + base.offset).astype(int)
            cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), color, 2, cv2.LINE_AA)
            anchor = (int(x0), int(y0) - 4)
        else:
            px, in_front = base.project(footprint_ego(det.position, det.yaw, det.extent[0], det.extent[1]))
            if not in_front.all():
                continue
            cv2.polylines(img, [np.rint(px).astype(np.int32)], True, color, 2, cv2.LINE_AA)
            anchor = (int(px[:, 0].min()), int(px[:, 1].min()) - 4)
        _text(img, f"{det.kind} {det.track_id} {det.score:.2f}", anchor, color, 0.45)
    light = perception.traffic_light.state if perception.traffic_light is not None else "none"
    usable = "usable" if perception.usable else f"NOT usable: {perception.reason}"
    _panel_lines(img, [f"detections {len(perception.detections)}   light {light}", usable])


def _draw_plan(img: np.ndarray, base: _Canvas, plan: Plan, other, width_m: float) -> None:
    """The plan's path as a ribbon of the car's width on the ground, as the run video draws it,
    dots at its whole seconds, and the other side's path as a thin white line."""
    if isinstance(other, Plan):
        line, in_front = _ground_px(base, other, 0.0)
        cv2.polylines(img, [line[in_front]], False, (255, 255, 255), 1, cv2.LINE_AA)
    (left, in_left), (right, in_right), (centre, in_centre) = (_ground_px(base, plan, side * width_m / 2)
                                                               for side in (1.0, -1.0, 0.0))
    keep = in_left & in_right
    if keep.sum() >= 2:
        overlay = img.copy()
        cv2.fillPoly(overlay, [np.vstack([left[keep], right[keep][::-1]])], PLAN_BGR, cv2.LINE_AA)
        cv2.addWeighted(overlay, 0.3, img, 0.7, 0, dst=img)
        cv2.polylines(img, [left[keep], right[keep]], False, PLAN_BGR, 2, cv2.LINE_AA)
    times = np.asarray(plan.times, float)
    for x, y in centre[in_centre & (times > 0) & np.isclose(times, np.round(times), atol=1e-6)]:
        cv2.circle(img, (int(x), int(y)), 4, PLAN_BGR, -1, cv2.LINE_AA)
    v0, v_end = (f"{plan.v[i]:.2f}" if len(plan.v) else "-" for i in (0, -1))
    _panel_lines(img, [f"decision: {plan.decision}   v0 {v0}  v_end {v_end} m/s", f"reason: {plan.reason}"])


def _ground_px(base: _Canvas, plan: Plan, lateral_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) int32 panel pixels of the plan's path shifted `lateral_m` to its left on the
    ground, and (N,) which lie in front of the camera (none without an ego pose)."""
    if base.ego is None or len(plan.x) == 0:
        return np.zeros((len(plan.x), 2), np.int32), np.zeros(len(plan.x), bool)
    centre = world_to_ego(np.stack([plan.x, plan.y], 1), base.ego)
    yaw = np.asarray(plan.yaw, float) - base.ego.yaw
    ground = centre + np.stack([-np.sin(yaw), np.cos(yaw)], 1) * lateral_m
    px, in_front = base.project(np.hstack([ground, np.zeros((len(ground), 1))]))
    return np.rint(px).astype(np.int32), in_front


def _draw_control(img: np.ndarray, control: Control, other) -> None:
    """Steer (-1..1, + right) and throttle, brake (0..1) as bars with their numbers; a white
    tick marks the other side's value."""
    bars = (("steer (+ right)", control.steer, -1.0, (255, 200, 0)), ("throttle", control.throttle, 0.0, (80, 200, 80)),
            ("brake", control.brake, 0.0, (60, 60, 255)))
    x_bar, bar_w, row_h = 200, 400, 34
    y_top = PANEL[1] - row_h * len(bars) - 14
    shade = img[y_top - 8:PANEL[1] - 6, 8:PANEL[0] - 8]
    shade[:] = (shade * 0.35).astype(np.uint8)
    for i, (name, value, low, color) in enumerate(bars):
        y = y_top + row_h * i
        at = lambda v, low=low: x_bar + round(bar_w * (float(np.clip(v, low, 1.0)) - low) / (1.0 - low))  # noqa: E731
        zero, end = at(0.0), at(value)
        cv2.rectangle(img, (x_bar, y), (x_bar + bar_w, y + 20), (120, 120, 120), 1)
        cv2.rectangle(img, (min(zero, end), y + 1), (max(zero, end), y + 19), color, -1)
        cv2.line(img, (zero, y - 2), (zero, y + 22), (150, 150, 150), 1)
        if isinstance(other, Control):
            tick = at(getattr(other, name.split()[0]))
            cv2.line(img, (tick, y - 4), (tick, y + 24), (255, 255, 255), 2)
        _text(img, f"{name} {value:+.3f}", (16, y + 15), TEXT_BGR, 0.5)


def _panel_lines(img: np.ndarray, lines: list[str]) -> None:
    """Text lines on a shaded band at the bottom of a half."""
    top = PANEL[1] - 24 * len(lines) - 10
    shade = img[top:PANEL[1], :]
    shade[:] = (shade * 0.45).astype(np.uint8)
    for i, line in enumerate(lines):
        _text(img, line[:68], (12, top + 20 + 24 * i), TEXT_BGR, 0.5)


def _compose(halves: list[np.ndarray], stage: StageReplay, frame: RecordedFrame, ok: bool) -> np.ndarray:
    """Banner (stage, frame, t, state) over the two halves, framed by the frame's state."""
    first = stage.first
    is_first = first is not None and frame.frame == first.frame
    color, state = ((FIRST_BGR, "FIRST DIVERGENCE") if is_first else (MATCHES_BGR, "matches") if ok
                    else (DIFFERS_BGR, "differs"))
    out = np.zeros((BANNER_PX + PANEL[1], 2 * PANEL[0], 3), np.uint8)
    out[BANNER_PX:, :PANEL[0]], out[BANNER_PX:, PANEL[0]:] = halves
    cv2.rectangle(out, (0, BANNER_PX), (2 * PANEL[0] - 1, BANNER_PX + PANEL[1] - 1), color, 6 if is_first else 3)
    cv2.line(out, (PANEL[0], BANNER_PX), (PANEL[0], BANNER_PX + PANEL[1]), (0, 0, 0), 2)
    _text(out, f"{stage.name}   frame {frame.frame}   t {frame.t:6.2f} s", (12, 22), TEXT_BGR, 0.6)
    _text(out, state, (2 * PANEL[0] - 12 - 12 * len(state), 22), color, 0.6)
    if first is not None:
        lead = "" if is_first else f"first divergence at frame {first.frame}: "
        _text(out, (lead + first.difference.line())[:150], (12, 44), color if is_first else (200, 200, 200), 0.45)
    return out


def _text(img: np.ndarray, line: str, org: tuple[int, int], color=TEXT_BGR, scale: float = 0.55) -> None:
    cv2.putText(img, line, (org[0] + 1, org[1] + 1), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, line, org, FONT, scale, color, 1, cv2.LINE_AA)

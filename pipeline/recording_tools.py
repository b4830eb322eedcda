"""`stagepilot recording info` and `stagepilot recording export`: what a `drive.mcap` holds,
and chosen frames of it as files a person or a labelling tool opens.

`recording_info` streams the file once through `Recording` (frames, duration, whether it is
whole) and once more through the MCAP records alone to count every message per channel, those
of frames the file does not hold whole included. Neither pass decodes an image.

`export_frames` writes, per frame, the camera image the stack saw (PNG), perception's
segmentation in CARLA's palette (PNG, when perception made one) and a JSON of what each stage
decided; then `annotations.json`, the exported frames' 2D boxes in COCO's format.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zstandard
from mcap.exceptions import McapError
from mcap.records import Message
from mcap.stream_reader import StreamReader

from stagepilot.core.camera import decode_frame
from stagepilot.pipeline.recording import RUNTIME, RecordedFrame, Recording
from stagepilot.sim.render.palette import colorize

OBSERVATION = "/stagepilot/observation"
ROUTE = "/stagepilot/route"
PERCEPTION = "/stagepilot/perception"
PLAN = "/stagepilot/plan"
DETECTION_KINDS = ("vehicle", "pedestrian", "static", "traffic_light")  # COCO ids 1.. in this order
ANNOTATIONS = "annotations.json"


class FrameRangeError(ValueError):
    """A frame range that is malformed or outside the recording; the message is one line."""


# ------------------------------------------------------------------ info


def recording_info(path: str | Path) -> dict[str, Any]:
    """What the recording at `path` holds: file, completeness, frames and duration [s],
    channels with message counts, provenance and outcome. Raises RecordingError."""
    path = Path(path)
    with Recording(path) as rec:
        frames, first, last = 0, None, None
        for frame in rec.frames():
            frames += 1
            first = frame if first is None else first
            last = frame
        counts, outside = _count_messages(path)
        meta = rec.meta.get("stagepilot", {})
        outcome = rec.meta.get("outcome")
        return {
            "file": str(path), "size_bytes": path.stat().st_size,
            "complete": rec.complete, "truncated": rec.truncated, "partial_frames": rec.partial_frames,
            "frames": frames,
            "first_frame": first.frame if first else None, "last_frame": last.frame if last else None,
            "first_t": first.t if first else None, "last_t": last.t if last else None,
            "duration_s": (last.t - first.t) if first else 0.0,
            "channels": _channels(rec, counts),
            "messages": sum(counts.values()), "messages_outside_frames": outside,
            "attachments": sorted(rec.attachments),
            "scenario": meta.get("scenario", ""), "scenario_seed": meta.get("scenario_seed", ""),
            "perception": meta.get("perception", ""), "perception_seed": meta.get("perception_seed", ""),
            "faults_seed": meta.get("faults_seed", ""), "camera": meta.get("camera", ""),
            "dt_s": meta.get("dt_s", ""), "time_model": meta.get("time_model", ""),
            "config_hash": meta.get("config_hash", ""),
            "git_commit": meta.get("git_commit", ""), "git_dirty": meta.get("git_dirty", "") == "True",
            "versions": _json_or_text(meta.get("versions", "")), "started": meta.get("started", ""),
            "checkpoint_sha256": meta.get("checkpoint_sha256", ""),
            "message_version": meta.get("message_version", ""),
            "outcome": _json_or_text(outcome["outcome"]) if outcome and "outcome" in outcome else None,
            "simulator": dict(rec.meta.get("simulator", {"simulator": "embedded"})),
        }


def _channels(rec: Recording, counts: Counter) -> list[dict[str, Any]]:
    """Per channel, by topic: topic, schema name, message encoding and message count."""
    return [{"topic": c.topic, "schema": rec.schemas[c.schema_id].name if c.schema_id in rec.schemas else "",
             "encoding": c.message_encoding, "messages": counts.get(c.id, 0)}
            for c in sorted(rec.channels.values(), key=lambda c: c.topic)]


def _count_messages(path: Path) -> tuple[Counter, int]:
    """Messages per channel id over the whole readable file, and how many of them belong to
    no whole frame (no runtime record with their sequence). Stops quietly at a cut."""
    counts: Counter = Counter()
    per_sequence: Counter = Counter()
    whole: set[int] = set()
    runtime_ids: set[int] = set()
    with open(path, "rb") as f:
        try:
            for record in StreamReader(f, validate_crcs=True).records:
                if isinstance(record, Message):
                    counts[record.channel_id] += 1
                    per_sequence[record.sequence] += 1
                    if record.channel_id in runtime_ids:
                        whole.add(record.sequence)
                elif getattr(record, "topic", None) == RUNTIME:
                    runtime_ids.add(record.id)
        except (McapError, struct.error, EOFError, ValueError, zstandard.ZstdError, OSError):
            pass  # the file is cut short: Recording has said where
    return counts, sum(n for sequence, n in per_sequence.items() if sequence not in whole)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _simulator(sim: dict[str, str]) -> str:
    if sim.get("simulator") != "carla":
        return sim.get("simulator", "embedded")
    line = (f"CARLA {sim.get('server_version', '?')} at {sim.get('server', '?')}, map {sim.get('map', '?')}, "
            f"client {sim.get('client_version', '?')}")
    return line + (f"; CARLA recorder file {sim['carla_recorder_file']}" if sim.get("carla_recorder_file") else "")


def format_info(info: dict[str, Any]) -> str:
    """`recording_info`'s dict as the text `stagepilot recording info` prints."""
    size = info["size_bytes"]
    if info["complete"]:
        status = "complete"
    else:
        status = f"incomplete: {info['truncated'] or 'the file ends early'}"
        if info["partial_frames"]:
            status += f" ({info['partial_frames']} frame(s) not whole)"
    frames = f"{info['frames']}"
    if info["frames"]:
        frames += (f" (frames {info['first_frame']} to {info['last_frame']}, "
                   f"t {info['first_t']:.3f} to {info['last_t']:.3f} s)")
    versions = info["versions"]
    if isinstance(versions, dict):
        versions = ", ".join(f"{name} {version}" for name, version in versions.items())
    lines = [
        f"file         {info['file']}  ({_size(size)}, {size} bytes)",
        f"status       {status}",
        f"duration     {info['duration_s']:.3f} s",
        f"frames       {frames}",
        f"scenario     {info['scenario']} (seed {info['scenario_seed']})",
        f"perception   {info['perception']} (seed {info['perception_seed']}); faults seed {info['faults_seed']}",
        f"simulator    {_simulator(info['simulator'])}",
        f"camera       {info['camera']}, dt {info['dt_s']} s, time model {info['time_model']}",
        f"config hash  {info['config_hash']}",
        f"git commit   {info['git_commit'] or '(unknown)'}{' (dirty)' if info['git_dirty'] else ''}",
        f"versions     {versions}",
        f"checkpoint   {info['checkpoint_sha256'] or '(none)'}",
        f"messages     version {info['message_version']}; {info['messages']} in all, "
        f"{info['messages_outside_frames']} outside whole frames",
        f"started      {info['started']}",
    ]
    if info["attachments"]:
        lines.append(f"attachments  {', '.join(info['attachments'])}")
    lines.append(f"outcome      {_outcome_line(info['outcome'])}")
    lines.append("channels")
    width_topic = max((len(c["topic"]) for c in info["channels"]), default=5)
    width_schema = max((len(c["schema"]) for c in info["channels"]), default=6)
    lines.append(f"  {'topic':<{width_topic}}  {'schema':<{width_schema}}  {'encoding':<8}  messages")
    for c in info["channels"]:
        lines.append(f"  {c['topic']:<{width_topic}}  {c['schema']:<{width_schema}}  "
                     f"{c['encoding']:<8}  {c['messages']:>8}")
    return "\n".join(lines)


def _outcome_line(outcome: Any) -> str:
    if outcome is None:
        return "(none: the drive did not end normally)"
    if isinstance(outcome, dict):
        return ", ".join(f"{key} {value}" for key, value in outcome.items())
    return str(outcome)


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return ""


# ------------------------------------------------------------------ export


def parse_range(text: str) -> tuple[int, int]:
    """"A:B" (frames A to B inclusive) or "A" (frame A alone) -> (A, B). Raises
    FrameRangeError (a ValueError) for anything else, a negative frame, or A > B."""
    parts = str(text).strip().split(":")
    try:
        if len(parts) not in (1, 2):
            raise ValueError
        first, last = int(parts[0]), int(parts[-1])
    except ValueError:
        raise FrameRangeError(f"frame range {text!r}: expected A:B or A (frame numbers, e.g. 5:9)") from None
    _check_range(first, last)
    return first, last


def _check_range(first: int, last: int) -> None:
    if first < 0:
        raise FrameRangeError(f"frame range {first}:{last}: frame numbers start at 0")
    if first > last:
        raise FrameRangeError(f"frame range {first}:{last}: the first frame is after the last")


def export_frames(path: str | Path, first: int, last: int, out_dir: Path) -> dict[str, Any]:
    """Write frames `first` to `last` (inclusive, by frame number) of the recording at `path`
    into `out_dir`, and `annotations.json` (COCO) for them. Returns {"frames", "files", ...}.
    Raises FrameRangeError when the frames are not all in the recording (nothing is left
    written then), RecordingError for a file that cannot be read."""
    _check_range(first, last)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    exported: list[dict[str, Any]] = []
    seen = (None, None)
    with Recording(path) as rec:
        camera = rec.info("camera") or "front"
        for frame in rec.frames():
            seen = (seen[0] if seen[0] is not None else frame.frame, frame.frame)
            if frame.frame > last:
                break
            if ROUTE in frame.messages:
                rec.route(frame)  # observations refer to the route the first frame carries
            if frame.frame >= first:
                exported.append(_export_frame(rec, frame, camera, out_dir, written))
        if len(exported) != last - first + 1:
            for file in written:
                file.unlink(missing_ok=True)
            raise FrameRangeError(_range_message(rec, first, last, seen, {e["frame"] for e in exported}))
        annotations = out_dir / ANNOTATIONS
        annotations.write_text(json.dumps(coco_annotations(exported, rec), indent=1, allow_nan=False))
    written.append(annotations)
    return {"frames": len(exported), "first": first, "last": last, "out_dir": str(out_dir),
            "detections": sum(len(e["json"]["detections"] or ()) for e in exported),
            "files": [str(file) for file in written]}


def _range_message(rec: Recording, first: int, last: int, seen: tuple, done: set[int]) -> str:
    """Why frames first:last are not all in the recording, whose frames streamed were seen[0]:seen[1]."""
    if seen[0] is None:
        held = "it holds no whole frames"
    elif seen[0] <= first and last <= seen[1]:  # inside the span: a gap
        missing = [n for n in range(first, last + 1) if n not in done]
        held = f"it lacks frame(s) {', '.join(map(str, missing[:5]))}"
    else:
        held = f"it holds frames {seen[0]}:{seen[1]}"
    if rec.truncated:
        held += f" ({rec.truncated})"
    return f"frames {first}:{last} are not all in {rec.path}: {held}"


def _export_frame(rec: Recording, frame: RecordedFrame, camera: str, out_dir: Path,
                  written: list[Path]) -> dict[str, Any]:
    """Write one frame's files; returns what COCO needs: frame, t, image size, JSON."""
    stem = f"frame_{frame.frame:06d}"
    rgb = _camera_rgb(rec, frame, camera)
    perception = rec.perception(frame) if PERCEPTION in frame.messages else None
    plan = rec.plan(frame) if PLAN in frame.messages else None
    files = {}
    if rgb is not None:
        files["camera"] = _write_png(out_dir / f"{stem}_camera.png", rgb, written)
    if perception is not None and perception.semantic is not None:
        files["segmentation"] = _write_png(out_dir / f"{stem}_segmentation.png", colorize(perception.semantic), written)
    data = _frame_json(frame, perception, plan, files)
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(data, indent=1, allow_nan=False))
    written.append(path)
    return {"frame": frame.frame, "t": frame.t, "json": data, "camera_file": files.get("camera"),
            "size": None if rgb is None else rgb.shape[:2]}


def _camera_rgb(rec: Recording, frame: RecordedFrame, camera: str) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB: what perception was given this frame; the camera stream's frame
    when perception did not run; None when the frame has neither."""
    if OBSERVATION in frame.messages:
        image = (rec.observation(frame).cameras or {}).get(camera)
        if image is not None and image.rgb is not None:
            return image.rgb
    topic = f"/camera/{camera}"
    return decode_frame(rec.image(frame, topic)) if topic in frame.messages else None


def _write_png(path: Path, rgb: np.ndarray, written: list[Path]) -> str:
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):  # OpenCV writes BGR
        raise OSError(f"{path}: could not write the PNG")
    written.append(path)
    return path.name


def _frame_json(frame: RecordedFrame, perception, plan, files: dict[str, str]) -> dict[str, Any]:
    """One frame as JSON-able data (NaN and infinities as None). `detections` and
    `traffic_light` are None when perception did not run this frame; `reason` when the
    planner did not."""
    runtime = frame.runtime
    return _jsonable({
        "frame": frame.frame, "t": frame.t, "ran": runtime.get("ran", []),
        "ego": runtime.get("ego"), "route_progress": runtime.get("route_progress"),
        "perception_usable": None if perception is None else perception.usable,
        "perception_reason": None if perception is None else perception.reason,
        "detections": None if perception is None else list(perception.detections),
        "traffic_light": None if perception is None else perception.traffic_light,
        "decision": plan.decision if plan is not None else runtime.get("decision"),
        "reason": plan.reason if plan is not None else None,
        "control": runtime.get("control"), "stage_ms": runtime.get("stage_ms"),
        "misses": runtime.get("misses"), "failsafe": runtime.get("failsafe"), "events": runtime.get("events"),
        "files": files,
    })


def _jsonable(value: Any) -> Any:
    """Plain JSON data: dataclasses as dicts, numpy as Python, non-finite floats as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def coco_annotations(exported: list[dict[str, Any]], rec: Recording) -> dict[str, Any]:
    """COCO detection data of exported frames: one image per camera PNG, one annotation per
    detection with a finite 2D box (bbox [x, y, w, h] px), categories from detection kinds."""
    kinds = list(DETECTION_KINDS)
    for entry in exported:
        for det in entry["json"]["detections"] or ():
            if det["kind"] not in kinds:
                kinds.append(det["kind"])
    category = {kind: i + 1 for i, kind in enumerate(kinds)}
    images, annotations = [], []
    for entry in exported:
        if entry["camera_file"] is None:
            continue
        height, width = entry["size"]
        images.append({"id": entry["frame"], "file_name": entry["camera_file"], "width": width, "height": height,
                       "frame": entry["frame"], "t": entry["t"]})
        for det in entry["json"]["detections"] or ():
            box = det.get("box_2d")
            if box is None or any(v is None for v in box):
                continue
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": entry["frame"],
                                "category_id": category[det["kind"]], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                                "track_id": det["track_id"], "score": det["score"]})
    return {
        "info": {"description": f"stagepilot recording {rec.path}", "scenario": rec.info("scenario"),
                 "config_hash": rec.info("config_hash"), "perception": rec.info("perception")},
        "images": images, "annotations": annotations,
        "categories": [{"id": i, "name": kind} for kind, i in category.items()],
    }

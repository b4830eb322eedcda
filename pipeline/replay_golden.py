"""`stagepilot replay --update-golden`: accept what the stages give now as the new reference.

Only on purpose, never as a side effect of a replay. Each stage of the recording is replayed
on its recorded inputs; every output that is not bitwise equal to the recorded one replaces it
in a copy of the file, which then replaces the recording atomically. Inputs stay as recorded
(they are the drive's data): a controller input that referred to the recorded plan keeps that
plan inline when the plan changes. The viewer channels keep showing the drive as it was.
A `golden_update` metadata record says when, by which commit, and what changed.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mcap.writer import CompressionType, Writer

from stagepilot.pipeline import codec
from stagepilot.pipeline.provenance import git_state
from stagepilot.pipeline.recorder import CHUNK_BYTES, PROFILE, SEMANTIC_OUT, plain_perception
from stagepilot.pipeline.recording import RUNTIME, STAGE_INPUTS, Recording, RecordedFrame, RecordingError
from stagepilot.pipeline.replay import STAGES, replay
from stagepilot.pipeline.replay_compare import Comparator, load_tolerances
from stagepilot.pipeline.viewer import image_message, semantic_png

OUTPUT_TOPIC = {"perception": "/stagepilot/perception", "planner": "/stagepilot/plan",
                "controller": "/stagepilot/control"}


@dataclass
class GoldenUpdate:
    path: Path
    frames: int = 0
    changed: dict[str, int] = field(default_factory=dict)  # stage -> frames whose output changed
    compared: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)  # stage -> first change, one line

    def summary(self) -> str:
        lines = [f"{self.path}: {self.frames} frames"]
        for stage, n in self.compared.items():
            what = f"{self.changed.get(stage, 0)} of {n} outputs changed"
            if stage in self.first:
                what += f"; first: {self.first[stage]}"
            lines.append(f"  {stage:11s} {what}")
        lines.append("  updated" if any(self.changed.values()) else "  unchanged (the file is left as it was)")
        return "\n".join(lines)


def update_golden(path: str | Path, show_progress: bool = False) -> GoldenUpdate:
    path = Path(path)
    recording = Recording(path)
    try:
        topics = recording.topics()
        stages = tuple(s for s in STAGES if all(t in topics for t in STAGE_INPUTS[s]))
        if not stages:
            raise RecordingError(f"{path}: holds no stage channels to update")
        tmp = path.with_name(path.name + ".golden.tmp")
        update = GoldenUpdate(path, compared={s: 0 for s in stages})
        try:
            with open(tmp, "wb") as out:
                _rewrite(recording, stages, update, out, show_progress)
            if any(update.changed.values()):
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return update
    finally:
        recording.close()


def _rewrite(recording: Recording, stages, update: GoldenUpdate, out, show_progress: bool) -> None:
    writer = Writer(out, chunk_size=CHUNK_BYTES, compression=CompressionType.ZSTD)
    writer.start(profile=PROFILE, library="stagepilot replay --update-golden")
    for name, data in recording.meta.items():
        if name not in ("outcome", "golden_update"):
            writer.add_metadata(name, data)
    for name, data in recording.attachments.items():
        writer.add_attachment(0, 0, name, "application/zstd", data)
    schema_ids = {sid: writer.register_schema(s.name, s.encoding, s.data) for sid, s in recording.schemas.items()}
    channel_ids = {c.topic: writer.register_channel(c.topic, c.message_encoding, schema_ids.get(c.schema_id, 0), c.metadata)
                   for c in recording.channels.values()}
    exact = {stage: Comparator(stage, load_tolerances(exact=True)) for stage in stages}
    replaced: dict[str, bytes] = {}

    def on_output(stage: str, frame: RecordedFrame, recorded, now) -> None:
        update.compared[stage] += 1
        if codec.same(recorded, now):
            return
        update.changed[stage] = update.changed.get(stage, 0) + 1
        if stage not in update.first:
            difference = exact[stage].first(recorded, now)
            update.first[stage] = f"frame {frame.frame}: " + (difference.line() if difference else "bit-level change")
        if stage == "perception":
            replaced[OUTPUT_TOPIC[stage]] = codec.dumps(plain_perception(now, ref=now.semantic is not None))
            if now.semantic is not None:
                replaced[SEMANTIC_OUT] = image_message(semantic_png(now.semantic), "png", frame.t)
        else:
            replaced[OUTPUT_TOPIC[stage]] = codec.dumps(now)
        if stage == "planner" and "/stagepilot/controller/input" in frame.messages:
            controller_in = json.loads(frame.messages["/stagepilot/controller/input"])
            if controller_in.get("plan") == "$plan":  # the controller's input stays the recorded plan
                controller_in["plan"] = codec.to_plain(recorded)
                replaced["/stagepilot/controller/input"] = json.dumps(controller_in, separators=(",", ":")).encode()

    def on_frame(frame: RecordedFrame) -> None:
        update.frames += 1
        extra = [t for t in replaced if t not in frame.messages]  # e.g. a mask the drive had none of
        for topic, log_time, data in frame.records:
            if topic == RUNTIME:  # the runtime record closes the frame: everything else goes before it
                for new_topic in extra:
                    writer.add_message(channel_ids[new_topic], log_time=log_time, data=replaced[new_topic],
                                       publish_time=log_time, sequence=frame.frame)
            writer.add_message(channel_ids[topic], log_time=log_time, data=replaced.get(topic, data),
                               publish_time=log_time, sequence=frame.frame)
        replaced.clear()

    result = replay(recording.path, stages, tolerances=load_tolerances(exact=True), show_progress=show_progress,
                    on_output=on_output, on_frame=on_frame, recording=recording)
    if result.truncated:
        raise RecordingError(f"{recording.path}: {result.truncated}; a cut recording cannot become a reference")
    if "outcome" in recording.meta:
        writer.add_metadata("outcome", recording.meta["outcome"])
    writer.add_metadata("golden_update", {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": str((git_state() or {}).get("commit") or ""),
        "changed": json.dumps(update.changed), "first": json.dumps(update.first)})
    writer.finish()

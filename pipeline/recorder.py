"""`drive.mcap`: every drive recorded, stage by stage, for replay and for Foxglove.

An observer of the driver (pipeline/driver.py). One MCAP file (the `mcap` library) holds:

- **stage channels** (JSON through pipeline/codec.py, exact to the bit): what each stage was
  given and what it returned, every frame it ran (RECORDING.md in docs/ lists them);
- **viewer channels** in Foxglove's schemas (pipeline/viewer.py): the camera, detections,
  segmentation, transforms, scene, decision and latencies;
- **metadata**: the resolved config and its hash, the scenario, seeds, versions, the git
  commit, the model checkpoint's hash and the message version; the outcome at the end;
- **the map** as an attachment, so a recording replays where the map is not installed.

Camera frames are recorded as the camera sent them (JPEG by default, core/camera.py), which is
also what the stack decoded and saw: replay decodes the same bytes into the same pixels. Every
message of a frame carries the frame number as its MCAP sequence and the sim time as its log
time. Chunks are small and the file is flushed after every frame, so a drive killed part-way
leaves a file that reads up to its last whole chunk (pipeline/recording.py reads such a file).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

import yaml
import zstandard
from mcap.writer import CompressionType, Writer

from stagepilot.core.config import StackConfig, config_hash
from stagepilot.core.messages import Observation
from stagepilot.pipeline import codec
from stagepilot.pipeline.provenance import run_info
from stagepilot.pipeline.records import FrameRecord
from stagepilot.pipeline.viewer import ViewerFrames, image_message, semantic_png
from stagepilot.sim.scenario import Scenario

PROFILE = "stagepilot"
CHUNK_BYTES = 256 * 1024  # about 3 frames of the default drive: what a kill can lose

# Stage channels: topic -> schema name. Each stage's input and output on its own channel.
STAGE_TOPICS = {
    "/stagepilot/route": "stagepilot.Route",
    "/stagepilot/observation": "stagepilot.Observation",  # perception's input (images by reference)
    "/stagepilot/perception": "stagepilot.Perception",  # perception's output
    "/stagepilot/planner/input": "stagepilot.PlannerInput",
    "/stagepilot/plan": "stagepilot.Plan",  # the planner's output
    "/stagepilot/controller/input": "stagepilot.ControllerInput",
    "/stagepilot/control": "stagepilot.Control",  # the controller's output
    "/stagepilot/runtime": "stagepilot.RuntimeRecord",  # written last: the frame is whole
}
TRUTH_SEMANTIC = "/stagepilot/truth/{camera}/semantic"  # ground-truth tags, paletted PNG (exact)
SEMANTIC_OUT = "/stagepilot/perception/semantic"  # the perception output's tags, paletted PNG (exact)
CAMERA = "/camera/{camera}"


def _json_schema(name: str) -> bytes:
    return json.dumps({"title": name, "type": "object"}).encode()


class Recorder:
    """Writes `path` (drive.mcap) as the drive runs; pass it to `driver.drive(observers=...)`."""

    def __init__(self, path: Path, config: StackConfig, scenario: Scenario):
        self.path = Path(path)
        self.config, self.scenario = config, scenario
        self.camera = next(iter(config.sim.cameras), "front")
        self.viewer = ViewerFrames(self.camera, config.vehicle.length_m, config.vehicle.width_m,
                                   config.vehicle.rear_overhang_m)
        self._file = None
        self._writer: Writer | None = None
        self._channels: dict[str, int] = {}
        self._pngs: list[tuple] = []  # this frame's (mask, PNG) pairs
        self.frames = 0
        self.bytes_written = 0
        self.perception_path: dict | None = None  # set by the driver before `start`

    # ------------------------------------------------------------ observer

    def start(self, sim, obs: Observation) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = run_info(self.config, self.scenario, datetime.datetime.now(datetime.timezone.utc))
        self._file = open(self.path, "wb")
        self._writer = Writer(self._file, chunk_size=CHUNK_BYTES, compression=CompressionType.ZSTD)
        self._writer.start(profile=PROFILE, library=f"stagepilot {info['versions']['stagepilot'] or ''}".strip())
        for name, data in self._metadata(info).items():
            self._writer.add_metadata(name, data)
        if self.perception_path:  # the network's path and operating point: a replay runs that point
            self._writer.add_metadata("perception_path", {"json": json.dumps(self.perception_path, default=str)})
        describe = getattr(sim, "metadata", None)
        if describe is not None:  # the server behind a CARLA drive, and CARLA's own recording
            self._writer.add_metadata("simulator", {k: str(v) for k, v in describe().items()})
        self._attach_map(sim)
        self._register()
        t_ns = _ns(obs.t)
        self._log("/stagepilot/route", obs.frame, t_ns, codec.dumps(obs.route))
        for topic, log_time, payload in self.viewer.start(obs):
            self._log(topic, obs.frame, log_time, payload)
        self._file.flush()

    def frame(self, obs: Observation, record: FrameRecord) -> None:
        if self._writer is None:
            return
        t_ns, frame = _ns(obs.t), obs.frame
        for topic, log_time, payload in self.viewer.frame(obs, record):
            self._log(topic, frame, log_time, payload)
        shown = getattr(record.perception, "semantic", None)
        self._pngs = [(shown, self.viewer.segmentation_png)] if self.viewer.segmentation_png else []
        for name, image in (obs.cameras or {}).items():
            if name != self.camera and image is not None and image.encoded is not None:
                self._log(CAMERA.format(camera=name), frame, t_ns,
                          image_message(image.encoded, image.encoding, obs.t, f"camera_{name}"))
        for topic, payload in self._stage_messages(obs, record):
            self._log(topic, frame, t_ns, payload)
        self.frames += 1
        self._file.flush()

    def end(self, result) -> None:
        if self._writer is None:
            return
        try:
            self._writer.add_metadata("outcome", {"outcome": json.dumps(result.outcome, default=str),
                                                  "frames": str(self.frames)})

            self._writer.finish()
        finally:
            self._file.close()
            self._writer = None
            self.bytes_written = self.path.stat().st_size

    # ------------------------------------------------------------ contents

    def _metadata(self, info: dict) -> dict[str, dict[str, str]]:
        git = info.get("git") or {}
        meta = {
            "message_version": str(codec.MESSAGE_VERSION),
            "message_fingerprint": codec.message_fingerprint(),
            "config_hash": config_hash(self.config),
            "scenario": self.scenario.name,
            "scenario_seed": str(self.scenario.seed),
            "perception": self.config.perception.kind,
            "perception_seed": str(self.config.perception.perfect.seed),
            "faults_seed": str(self.config.faults.seed),
            "camera": self.camera,
            "dt_s": repr(self.config.sim.dt_s),
            "time_model": self.config.runtime.time_model,
            "git_commit": str(git.get("commit") or ""),
            "git_dirty": str(git.get("dirty")),
            "versions": json.dumps(info["versions"]),
            "started": info["started"],
            "checkpoint_sha256": self._checkpoint_sha(),
        }
        return {
            "stagepilot": meta,
            "config": {"yaml": yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False)},
            "scenario": {"yaml": yaml.safe_dump(self.scenario.model_dump(mode="json"), sort_keys=False)},
        }

    def _checkpoint_sha(self) -> str:
        if self.config.perception.kind != "learned":
            return ""
        from stagepilot.perception.checkpoint import file_sha256
        from stagepilot.perception.learned import resolve_checkpoint

        return file_sha256(resolve_checkpoint(self.config.perception.learned.checkpoint))

    def _attach_map(self, sim) -> None:
        road_map = getattr(sim, "road_map", None)
        text = getattr(road_map, "xodr_text", None)
        if not text:
            return
        data = text.encode() if isinstance(text, str) else bytes(text)
        self._writer.add_attachment(0, 0, f"map/{road_map.name}.xodr.zst", "application/zstd",
                                    zstandard.ZstdCompressor(level=9).compress(data))

    def _register(self) -> None:
        for topic, schema in STAGE_TOPICS.items():
            schema_id = self._writer.register_schema(schema, "jsonschema", _json_schema(schema))
            self._channels[topic] = self._writer.register_channel(topic, "json", schema_id)
        image_topics = [SEMANTIC_OUT]
        if self.config.sim.ground_truth:
            image_topics += [TRUTH_SEMANTIC.format(camera=camera) for camera in self.config.sim.cameras]
        # The viewer shows the main camera; the others are recorded here, as their cameras sent them.
        image_topics += [CAMERA.format(camera=camera) for camera in self.config.sim.cameras if camera != self.camera]
        image_schema = self._writer.register_schema("foxglove.CompressedImage", "protobuf", _image_schema())
        for topic in image_topics:
            self._channels[topic] = self._writer.register_channel(topic, "protobuf", image_schema)
        for channel in self.viewer.channels():
            schema_id = self._writer.register_schema(channel.schema_name, channel.schema_encoding, channel.schema_data)
            self._channels[channel.topic] = self._writer.register_channel(channel.topic, channel.message_encoding, schema_id)

    def _log(self, topic: str, frame: int, log_time: int, payload: bytes) -> None:
        self._writer.add_message(self._channels[topic], log_time=log_time, data=payload, publish_time=log_time,
                                 sequence=frame)

    def _stage_messages(self, obs: Observation, record: FrameRecord):
        calls = record.calls
        if "perception" in calls:
            (seen,), output = calls["perception"]
            yield from self._truth_images(seen)
            yield "/stagepilot/observation", encode_observation(seen, obs)
            if output.semantic is not None:
                yield SEMANTIC_OUT, image_message(self._png(output.semantic), "png", obs.t)
            yield "/stagepilot/perception", codec.dumps(plain_perception(output, ref=output.semantic is not None))
        if "planner" in calls:
            (ego, _route, perception, t), plan = calls["planner"]
            yield "/stagepilot/planner/input", codec.dumps(
                {"ego": ego, "t": t, "perception": dataclasses.replace(perception, semantic=None)})
            yield "/stagepilot/plan", codec.dumps(plan)
        if "controller" in calls:
            (ego, plan_in, t), control = calls["controller"]
            planned = calls.get("planner", (None, None))[1]
            yield "/stagepilot/controller/input", codec.dumps(
                {"ego": ego, "t": t, "plan": "$plan" if plan_in is planned else plan_in,
                 "command_delay_s": record.controller_delay_s})
            yield "/stagepilot/control", codec.dumps(control)
        yield "/stagepilot/runtime", codec.dumps({
            "t": record.t, "frame": record.frame, "ran": list(calls), "control": record.control,
            "stage_ms": record.stage_ms, "charged_delay_s": record.charged_delay_s,
            "sensor_to_actuator_s": record.sensor_to_actuator_s, "misses": record.misses,
            "failsafe": record.failsafe, "events": record.events, "ego": record.ego,
            "route_progress": obs.route_progress,
            "decision": record.plan.decision if record.plan is not None else None})

    def _png(self, mask) -> bytes:
        """The mask's paletted PNG, encoded once a frame: the viewer's segmentation, the
        perception output and (with the ground-truth stand-in) the truth are often one array."""
        for array, png in self._pngs:
            if array is mask:
                return png
        png = semantic_png(mask)
        self._pngs.append((mask, png))
        return png

    def _truth_images(self, seen: Observation):
        truth = seen.ground_truth
        if truth is None:
            return
        for camera, mask in truth.semantic.items():
            topic = TRUTH_SEMANTIC.format(camera=camera)
            if topic in self._channels:
                yield topic, image_message(self._png(mask), "png", seen.t, f"camera_{camera}")


def encode_observation(seen: Observation, obs: Observation) -> bytes:
    """Perception's input: the observation as the (possibly faulty) sensors delivered it. A
    camera frame the camera stream carries is a reference to its channel; one that a fault
    changed travels inline; ground-truth tags are references; depth is not recorded."""
    cameras = {}
    for name, image in (seen.cameras or {}).items():
        if image is None:
            cameras[name] = None
            continue
        plain = codec.to_plain(dataclasses.replace(image, rgb=None, encoded=None))
        streamed = image.encoded is not None and image is (obs.cameras or {}).get(name)
        plain["rgb"] = {"$topic": CAMERA.format(camera=name)} if streamed else codec.to_plain(image.rgb)
        cameras[name] = plain
    plain = codec.to_plain(dataclasses.replace(seen, cameras={}, route=None, ground_truth=None))
    plain["cameras"], plain["route"] = cameras, {"$topic": "/stagepilot/route"}
    truth = seen.ground_truth
    if truth is not None:
        gt = codec.to_plain(dataclasses.replace(truth, semantic={}, depth={}))
        gt["semantic"] = {camera: {"$topic": TRUTH_SEMANTIC.format(camera=camera)} for camera in truth.semantic}
        plain["ground_truth"] = gt
    return json.dumps(plain, separators=(",", ":")).encode()


def plain_perception(perception, ref: bool) -> dict[str, Any]:
    """The perception output as plain data, its tags mask a reference to SEMANTIC_OUT (`ref`)."""
    plain = codec.to_plain(dataclasses.replace(perception, semantic=None))
    if ref:
        plain["semantic"] = {"$topic": SEMANTIC_OUT}
    return plain


def _ns(t: float) -> int:
    return max(0, int(round(t * 1e9)))


def _image_schema() -> bytes:
    from foxglove.messages import CompressedImage

    return CompressedImage.get_schema().data



"""Reading `drive.mcap` back (pipeline/recorder.py writes it), frame by frame.

The file is streamed from the start, so a recording cut short (a drive killed part-way, a
copy that stopped) reads up to its last whole chunk: `frames()` yields every whole frame, then
`truncated` says that the file ends early and where. Everything that makes a file unusable is
a `RecordingError` with one line that names the file and the problem: not MCAP, not a
stagepilot recording, an incompatible message version, a channel a stage needs that the file
lacks, a message that does not decode.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml
import zstandard
from mcap.exceptions import McapError
from mcap.records import Attachment, Channel, DataEnd, Footer, Header, Message, Metadata, Schema
from mcap.stream_reader import StreamReader

from stagepilot.core.camera import decode_frame
from stagepilot.core.config import StackConfig, load_stack
from stagepilot.core.messages import CameraImage, Control, EgoState, GroundTruth, Observation, Perception, Plan, Route
from stagepilot.core.roadmap import RoadMap
from stagepilot.pipeline import codec
from stagepilot.pipeline.codec import RecordingError
from stagepilot.pipeline.recorder import PROFILE, SEMANTIC_OUT
from stagepilot.pipeline.viewer import semantic_from_png

# What replaying each stage reads, besides /stagepilot/runtime.
STAGE_INPUTS = {
    "perception": ("/stagepilot/route", "/stagepilot/observation", "/stagepilot/perception"),
    "planner": ("/stagepilot/route", "/stagepilot/planner/input", "/stagepilot/plan"),
    "controller": ("/stagepilot/controller/input", "/stagepilot/plan", "/stagepilot/control"),
}
RUNTIME = "/stagepilot/runtime"
MCAP_MAGIC = b"\x89MCAP0\r\n"


def migrate_config(data: dict) -> dict:
    """A recorded config in today's schema. `controller.mpc.input_delay_s` (the whole delay
    the MPC compensated, set by hand) became `actuator_lag_s` (what it compensates beyond the
    delay the runtime charges): the same compensation is the old value less the tick the
    recorded time model charged (none under `ideal`). A learned stage recorded before
    `perception.learned.horizon_zoom` existed read no zoom: it replays with the zoom off."""
    mpc = data.get("controller", {}).get("mpc", {})
    if "input_delay_s" in mpc:
        runtime, dt = data.get("runtime", {}), float(data.get("sim", {}).get("dt_s", 0.05))
        charged = 0.0
        if runtime.get("time_model", "budget") != "ideal":
            stages = runtime.get("stages", {})
            budget_s = sum(float(stages.get(name, {}).get("budget_ms", 0.0))
                           for name in ("perception", "planner", "controller")) / 1e3
            ticks = math.floor(budget_s / dt + 0.5)
            charged = (max(ticks, 1) if runtime.get("pipelined") else ticks) * dt
        mpc["actuator_lag_s"] = round(max(0.0, float(mpc.pop("input_delay_s")) - charged), 9)
    learned = data.get("perception", {}).get("learned")
    if isinstance(learned, dict) and "horizon_zoom" not in learned:
        learned["horizon_zoom"] = 1.0  # recorded before the stage had a horizon zoom: it read none
    return data


@dataclass
class RecordedFrame:
    """One whole frame of a recording: its messages by topic (still encoded) and its runtime
    record (decoded)."""

    frame: int
    t: float
    messages: dict[str, bytes]  # topic -> payload (the first on that topic; stage topics have one a frame)
    runtime: dict[str, Any] = field(default_factory=dict)
    records: list[tuple[str, int, bytes]] = field(default_factory=list)  # every message: topic, log time [ns], payload
    decoded: dict[str, Any] = field(default_factory=dict, repr=False)  # messages decoded once

    @property
    def ran(self) -> tuple[str, ...]:
        return tuple(self.runtime.get("ran", ()))


class Recording:
    """An open recording. `meta` holds its metadata; iterate `frames()` once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot open ({exc.strerror or exc})") from None
        magic = self._file.read(len(MCAP_MAGIC))
        if magic != MCAP_MAGIC:
            self._file.close()
            what = "an empty file" if not magic else "its first bytes are not MCAP's magic"
            raise RecordingError(f"{self.path}: not an MCAP file ({what})")
        self._file.seek(0)
        self._stream = StreamReader(self._file, validate_crcs=True).records
        self.meta: dict[str, dict[str, str]] = {}
        self.attachments: dict[str, bytes] = {}
        self.schemas: dict[int, Schema] = {}
        self.channels: dict[int, Channel] = {}
        self._by_topic: dict[str, Channel] = {}
        self.truncated: str | None = None  # why the file ends early, when it does
        self.partial_frames = 0  # messages of a frame whose end the file does not hold
        self.complete = False  # the file ends with its summary (the drive ended normally)
        self._first: Message | None = None
        self._route: Route | None = None
        self._decoders: dict[int, Any] = {}
        self._read_head()

    # ------------------------------------------------------------ the head of the file

    def _next(self):
        """The next record, or None at the end (or at a cut, which sets `truncated`)."""
        try:
            return next(self._stream)
        except StopIteration:
            if not self.complete and self.truncated is None:
                self.truncated = "the file ends without its summary"
            return None
        except (McapError, struct.error, EOFError, ValueError, zstandard.ZstdError, OSError) as exc:
            if self._first is None and "stagepilot" not in self.meta:
                raise RecordingError(f"{self.path}: cut short before its metadata ({_line(exc)})") from None
            self.truncated = f"the file is cut short ({_line(exc)})"
            return None

    def _take(self, record) -> bool:
        """Keep a non-message record; False for a message."""
        if isinstance(record, Header):
            if record.profile != PROFILE:
                raise RecordingError(f"{self.path}: not a stagepilot recording (MCAP profile {record.profile!r})")
        elif isinstance(record, Schema):
            self.schemas[record.id] = record
        elif isinstance(record, Channel):
            self.channels[record.id] = record
            self._by_topic.setdefault(record.topic, record)
        elif isinstance(record, Metadata):
            self.meta[record.name] = dict(record.metadata)
        elif isinstance(record, Attachment):
            self.attachments[record.name] = record.data
        elif isinstance(record, (DataEnd, Footer)):
            self.complete = True
        return not isinstance(record, Message)

    def _read_head(self) -> None:
        while True:
            record = self._next()
            if record is None:
                break
            if not self._take(record):
                self._first = record
                break
        info = self.meta.get("stagepilot")
        if info is None:
            raise RecordingError(f"{self.path}: not a stagepilot recording (no 'stagepilot' metadata"
                                 f"{'; ' + self.truncated if self.truncated else ''})")
        version = info.get("message_version")
        if version != str(codec.MESSAGE_VERSION):
            raise RecordingError(f"{self.path}: recorded with message version {version}; this stagepilot reads "
                                 f"version {codec.MESSAGE_VERSION} (record the drive again)")

    # ------------------------------------------------------------ what it holds

    def topics(self) -> set[str]:
        return set(self._by_topic)

    def require(self, stages) -> None:
        """Raise unless the file has every channel that replaying `stages` reads."""
        topics = self.topics()
        for stage in stages:
            missing = [t for t in (*STAGE_INPUTS[stage], RUNTIME) if t not in topics]
            if missing:
                raise RecordingError(f"{self.path}: lacks channel {missing[0]}, which replaying the {stage} needs")

    def info(self, key: str, default: str = "") -> str:
        return self.meta.get("stagepilot", {}).get(key, default)

    def config(self, files=(), overrides=()) -> StackConfig:
        """The recorded resolved config, then `files` and `overrides` on top."""
        text = self.meta.get("config", {}).get("yaml")
        if not text:
            raise RecordingError(f"{self.path}: holds no config")
        with tempfile.TemporaryDirectory() as tmp:
            recorded = Path(tmp) / "recorded-config.yaml"
            recorded.write_text(yaml.safe_dump(migrate_config(yaml.safe_load(text)), sort_keys=False))
            return load_stack([recorded, *files], list(overrides))

    def stage_config(self, files=(), overrides=()) -> StackConfig:
        """`config`, with the learned stage's `operating_point: auto` replaced by the point the
        drive ran (perception/operating.py): the config a replay builds its stages from, so that
        it reads what the drive read, not what this machine would pick. An operating point given
        in `overrides` stays."""
        config = self.config(files, overrides)
        learned = config.perception.learned
        if learned.operating_point != "auto" or any(o.startswith("perception.learned.operating_point=")
                                                    for o in overrides):
            return config
        pinned = learned.model_copy(update={"operating_point": self.operating_point()})
        return config.model_copy(update={"perception": config.perception.model_copy(update={"learned": pinned})})

    def operating_point(self) -> str:
        """The learned stage's operating point in the drive, from the metadata written at its start;
        `full` for a recording without it (made before the stage had points)."""
        try:
            return json.loads(self.meta["perception_path"]["json"])["operating_point"]["name"]
        except (KeyError, TypeError, ValueError):
            return "full"

    def scenario_data(self) -> dict[str, Any]:
        text = self.meta.get("scenario", {}).get("yaml")
        if not text:
            raise RecordingError(f"{self.path}: holds no scenario")
        return yaml.safe_load(text)

    def map_text(self) -> tuple[str, str] | None:
        """(name, OpenDRIVE text) of the map the recording carries, or None."""
        for name, data in self.attachments.items():
            if name.startswith("map/") and name.endswith(".xodr.zst"):
                return name[4:-9], zstandard.ZstdDecompressor().decompress(data).decode()
        return None

    def road_map(self) -> RoadMap | None:
        found = self.map_text()
        return None if found is None else RoadMap(found[0], found[1], f"{self.path}:{found[0]}")

    # ------------------------------------------------------------ frames

    def frames(self) -> Iterator[RecordedFrame]:
        """Every whole frame in order. A frame is whole once its runtime record is read."""
        pending: dict[int, RecordedFrame] = {}
        record = self._first
        self._first = None
        while record is not None:
            if isinstance(record, Message):
                channel = self.channels.get(record.channel_id)
                if channel is None:
                    raise RecordingError(f"{self.path}: a message on unknown channel {record.channel_id}")
                frame = pending.setdefault(record.sequence, RecordedFrame(record.sequence, record.log_time / 1e9, {}))
                frame.messages.setdefault(channel.topic, record.data)
                frame.records.append((channel.topic, record.log_time, record.data))
                if channel.topic == "/stagepilot/route" and self._route is None:
                    self.route(frame)  # kept for every later frame
                if channel.topic == RUNTIME:
                    frame.runtime = self._json(frame, RUNTIME)
                    frame.t = float(frame.runtime["t"])
                    del pending[record.sequence]
                    yield frame
            else:
                self._take(record)
            record = self._next()
        self.partial_frames = len(pending)

    # ------------------------------------------------------------ decoding one frame's messages

    def _json(self, frame: RecordedFrame, topic: str) -> Any:
        raw = frame.messages.get(topic)
        if raw is None:
            raise RecordingError(f"{self.path}: frame {frame.frame} has no {topic} message")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RecordingError(f"{self.path}: frame {frame.frame} {topic}: not JSON ({exc})") from None

    def _decode(self, frame: RecordedFrame, data: Any, hint: Any, topic: str) -> Any:
        try:
            return codec.from_plain(data, hint, topic)
        except (codec.IncompatibleMessage, TypeError, ValueError, KeyError) as exc:
            raise RecordingError(f"{self.path}: frame {frame.frame}: {_line(exc)}") from None

    def route(self, frame: RecordedFrame) -> Route:
        if self._route is None:
            if "/stagepilot/route" not in frame.messages:
                raise RecordingError(f"{self.path}: the route message is missing before frame {frame.frame}")
            self._route = self._decode(frame, self._json(frame, "/stagepilot/route"), Route, "route")
        return self._route

    def image(self, frame: RecordedFrame, topic: str) -> bytes:
        """The image bytes of a foxglove.CompressedImage message of this frame."""
        raw = frame.messages.get(topic)
        if raw is None:
            raise RecordingError(f"{self.path}: frame {frame.frame} has no {topic} message")
        channel = self._by_topic[topic]
        decoder = self._decoders.get(channel.id)
        if decoder is None:
            from mcap_protobuf.decoder import DecoderFactory

            decoder = DecoderFactory().decoder_for(channel.message_encoding, self.schemas[channel.schema_id])
            self._decoders[channel.id] = decoder
        try:
            return decoder(raw).data
        except Exception as exc:  # a protobuf parse error has no common base class
            raise RecordingError(f"{self.path}: frame {frame.frame} {topic}: {_line(exc)}") from None

    def observation(self, frame: RecordedFrame) -> Observation:
        """Perception's input, images decoded as the stack decoded them in the drive."""
        data = self._json(frame, "/stagepilot/observation")
        cameras = {}
        for name, cam in (data.get("cameras") or {}).items():
            if cam is None:
                cameras[name] = None
                continue
            rgb_ref, cam["rgb"] = cam.get("rgb"), None
            image = self._decode(frame, cam, CameraImage, f"observation.cameras.{name}")
            if isinstance(rgb_ref, dict) and "$topic" in rgb_ref:
                encoded = self.image(frame, rgb_ref["$topic"])
                image = dataclasses.replace(image, rgb=decode_frame(encoded), encoded=encoded)
            else:
                image = dataclasses.replace(image, rgb=codec.from_plain(rgb_ref, Any))
            cameras[name] = image
        truth_plain = data.pop("ground_truth", None)
        data["cameras"], data["route"], data["ground_truth"] = {}, None, None
        obs = self._decode(frame, data, Observation, "observation")
        truth = None
        if truth_plain is not None:
            refs = truth_plain.pop("semantic", {}) or {}
            truth_plain["semantic"] = {}
            truth = self._decode(frame, truth_plain, GroundTruth, "observation.ground_truth")
            semantic = {camera: semantic_from_png(self.image(frame, ref["$topic"])) for camera, ref in refs.items()}
            truth = dataclasses.replace(truth, semantic=semantic)
        return dataclasses.replace(obs, cameras=cameras, route=self.route(frame), ground_truth=truth)

    def perception(self, frame: RecordedFrame) -> Perception:
        data = self._json(frame, "/stagepilot/perception")
        ref = data.pop("semantic", None)
        data["semantic"] = None
        perception = self._decode(frame, data, Perception, "perception")
        if isinstance(ref, dict) and "$topic" in ref:
            perception = dataclasses.replace(perception, semantic=semantic_from_png(self.image(frame, SEMANTIC_OUT)))
        return perception

    def planner_input(self, frame: RecordedFrame) -> tuple[EgoState, Route, Perception, float]:
        data = self._json(frame, "/stagepilot/planner/input")
        return (self._decode(frame, data["ego"], EgoState, "planner input ego"), self.route(frame),
                self._decode(frame, data["perception"], Perception, "planner input perception"),
                self._decode(frame, data["t"], float, "planner input t"))

    def plan(self, frame: RecordedFrame) -> Plan:
        if "plan" not in frame.decoded:  # the controller's input is often the same plan
            frame.decoded["plan"] = self._decode(frame, self._json(frame, "/stagepilot/plan"), Plan, "plan")
        return frame.decoded["plan"]

    def controller_input(self, frame: RecordedFrame) -> tuple[EgoState, Plan, float]:
        data = self._json(frame, "/stagepilot/controller/input")
        plan = self.plan(frame) if data["plan"] == "$plan" else self._decode(frame, data["plan"], Plan, "controller input plan")
        return (self._decode(frame, data["ego"], EgoState, "controller input ego"), plan,
                self._decode(frame, data["t"], float, "controller input t"))

    def controller_delay(self, frame: RecordedFrame, config: StackConfig) -> float:
        """[s] the command delay the runtime told the controller on this frame. Recordings made
        before it was recorded: the tick the recorded charged delay reached (which is what the
        runtime tells), from the frame's runtime record."""
        data = self._json(frame, "/stagepilot/controller/input")
        if "command_delay_s" in data:
            return self._decode(frame, data["command_delay_s"], float, "controller input command delay")
        if config.runtime.time_model == "ideal":
            return 0.0
        charged = float(frame.runtime.get("charged_delay_s", 0.0))
        ticks = math.floor(charged / config.sim.dt_s + 0.5)
        return (max(ticks, 1) if config.runtime.pipelined else ticks) * config.sim.dt_s

    def control(self, frame: RecordedFrame) -> Control:
        return self._decode(frame, self._json(frame, "/stagepilot/control"), Control, "control")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _line(exc: BaseException) -> str:
    name = "truncated record" if isinstance(exc, struct.error) else type(exc).__name__
    text = str(exc).strip().splitlines()
    return f"{name}: {text[0]}" if text else name

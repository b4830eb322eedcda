"""A drive's viewer messages in Foxglove's well-known schemas: what the MCAP recording and the
live view (pipeline/live.py) publish, built once per frame here.

    /camera/<camera>              foxglove.CompressedImage   the frame as the camera sent it
    /camera/<camera>/calibration  foxglove.CameraCalibration
    /perception/detections        foxglove.ImageAnnotations  2D boxes with "kind id score"
    /perception/segmentation      foxglove.CompressedImage   paletted PNG of the CARLA tags
    /tf                           foxglove.FrameTransform    world -> ego -> camera_<camera>
    /scene/objects                foxglove.SceneUpdate       detection cubes and the ego, frame ego
    /scene/plan                   foxglove.SceneUpdate       the plan's path, frame world
    /scene/route                  foxglove.SceneUpdate       the route, frame world (start only)
    /stagepilot/decision          JSON  behaviour decision, reason, speed, fail-safe
    /stagepilot/latency           JSON  stage latencies, charged delay, budget misses

Every message carries the sim time: log time [ns] = round(obs.t * 1e9).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Container
from dataclasses import dataclass

import numpy as np
from foxglove.messages import (
    CameraCalibration, Color, CompressedImage, CubePrimitive, Duration, FrameTransform, ImageAnnotations,
    LinePrimitive, LinePrimitiveLineType, Point2, Point3, PointsAnnotation, PointsAnnotationType, Pose,
    Quaternion, SceneEntity, SceneUpdate, TextAnnotation, Timestamp, Vector3,
)
from PIL import Image

from stagepilot.core.camera import encode_frame
from stagepilot.core.messages import CameraImage, Detection, EgoState, Observation, Plan
from stagepilot.pipeline.records import FrameRecord
from stagepilot.sim.render.palette import CARLA_PALETTE

Payload = tuple[str, int, bytes]  # (topic, log time [ns], message bytes)

EGO_HEIGHT_M = 1.5  # [m] height of the ego's box in the 3D view (display only)
_RGB_BY_KIND = {
    "vehicle": (0.25, 0.55, 1.0), "pedestrian": (1.0, 0.3, 0.25), "static": (1.0, 0.8, 0.1),
    "static_obstacle": (1.0, 0.8, 0.1), "traffic_light": (0.3, 0.9, 0.4),
}  # fmt: skip
_OTHER_RGB = (0.8, 0.8, 0.8)
_PALETTE_BYTES = CARLA_PALETTE.tobytes()  # 256 RGB entries: every uint8 id keeps its index


def semantic_png(mask: np.ndarray) -> bytes:
    """(H, W) uint8 CARLA tag ids -> a paletted PNG whose pixel indices are the ids and whose
    palette is CARLA's, so a viewer shows the colours and `semantic_from_png` the ids."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"semantic mask: expected (H, W) uint8, got {mask.shape} {mask.dtype}")
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
    image.putpalette(_PALETTE_BYTES)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def semantic_from_png(data: bytes) -> np.ndarray:
    """The (H, W) uint8 tag ids of a PNG from `semantic_png`, exactly."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode != "P":
            raise ValueError(f"semantic PNG: expected a paletted image, got mode {image.mode}")
        return np.array(image, np.uint8)


@dataclass(frozen=True)
class ViewerChannel:
    """One topic the viewer messages go on, with its schema as MCAP and Foxglove take it."""

    topic: str
    schema_name: str
    schema_encoding: str
    schema_data: bytes
    message_encoding: str


def _json_schema(title: str, properties: dict[str, str | list[str]]) -> bytes:
    schema = {"title": title, "type": "object", "properties": {k: {"type": v} for k, v in properties.items()}}
    return json.dumps(schema).encode()


_NUMBER_OR_NULL = ["number", "null"]
DECISION_SCHEMA = _json_schema("stagepilot.Decision", {
    "t": "number", "frame": "integer", "decision": "string", "reason": "string", "speed_mps": "number",
    "failsafe": "string"})  # fmt: skip
LATENCY_SCHEMA = _json_schema("stagepilot.Latency", {
    "t": "number", "frame": "integer", "perception_ms": _NUMBER_OR_NULL, "planner_ms": _NUMBER_OR_NULL,
    "controller_ms": _NUMBER_OR_NULL, "charged_delay_ms": _NUMBER_OR_NULL, "misses": "integer"})  # fmt: skip


def _protobuf_channel(topic: str, message_class) -> ViewerChannel:
    schema = message_class.get_schema()
    return ViewerChannel(topic, schema.name, schema.encoding, bytes(schema.data), "protobuf")


class ViewerFrames:
    """Builds the viewer messages of one drive: `start` once, then `frame` per frame. `camera`
    names the camera shown (its detections' 2D boxes are in it); the vehicle figures size the
    ego's box, whose origin is the rear axle."""

    def __init__(self, camera: str, vehicle_length_m: float, vehicle_width_m: float, rear_overhang_m: float):
        self.camera = camera
        self.camera_frame = f"camera_{camera}"
        self.image_topic, self.calibration_topic = f"/camera/{camera}", f"/camera/{camera}/calibration"
        self.segmentation_png: bytes | None = None  # the last frame's, for a recorder to reuse
        self._camera_pose: tuple[Vector3, Quaternion] | None = None  # last seen T_ego_cam
        self._ego_box = CubePrimitive(
            pose=Pose(position=Vector3(x=vehicle_length_m / 2 - rear_overhang_m, y=0.0, z=EGO_HEIGHT_M / 2),
                      orientation=Quaternion(w=1.0)),
            size=Vector3(x=vehicle_length_m, y=vehicle_width_m, z=EGO_HEIGHT_M),
            color=Color(r=0.9, g=0.9, b=0.9, a=0.5))
        self._channels = [
            _protobuf_channel(self.image_topic, CompressedImage),
            _protobuf_channel(self.calibration_topic, CameraCalibration),
            _protobuf_channel("/perception/detections", ImageAnnotations),
            _protobuf_channel("/perception/segmentation", CompressedImage),
            _protobuf_channel("/tf", FrameTransform),
            _protobuf_channel("/scene/objects", SceneUpdate),
            _protobuf_channel("/scene/plan", SceneUpdate),
            _protobuf_channel("/scene/route", SceneUpdate),
            ViewerChannel("/stagepilot/decision", "stagepilot.Decision", "jsonschema", DECISION_SCHEMA, "json"),
            ViewerChannel("/stagepilot/latency", "stagepilot.Latency", "jsonschema", LATENCY_SCHEMA, "json"),
        ]

    def channels(self) -> list[ViewerChannel]:
        """Every topic `start` and `frame` will ever emit on."""
        return list(self._channels)

    def start(self, obs: Observation) -> list[Payload]:
        """The route (lifetime 0: forever) and the camera calibration, once at the start."""
        t_ns, stamp = _times(obs.t)
        out = [("/scene/route", t_ns, _route(obs.route.points, stamp))]
        image = obs.cameras.get(self.camera)
        if image is not None:
            out += self._camera(image, t_ns, stamp, wanted={self.calibration_topic}.__contains__)
        return out

    def frame(self, obs: Observation, record: FrameRecord, topics: Container[str] | None = None) -> list[Payload]:
        """One frame's messages. `topics` limits them to those topics (a live view builds only what
        a client watches); `segmentation_png` is then set only if its topic is among them."""
        t_ns, stamp = _times(obs.t)
        wanted = (lambda topic: True) if topics is None else topics.__contains__
        perception = record.perception
        self.segmentation_png = None
        out = self._camera(obs.cameras.get(self.camera), t_ns, stamp, wanted)
        if perception is not None and wanted("/perception/detections"):
            out.append(("/perception/detections", t_ns, _annotations(perception.detections, stamp)))
        if perception is not None and perception.semantic is not None and wanted("/perception/segmentation"):
            self.segmentation_png = semantic_png(perception.semantic)
            segmentation = CompressedImage(timestamp=stamp, frame_id=self.camera_frame,
                                           data=self.segmentation_png, format="png")
            out.append(("/perception/segmentation", t_ns, segmentation.encode()))
        if wanted("/tf"):
            out += [("/tf", t_ns, data) for data in self._transforms(obs.ego, stamp)]
        if wanted("/scene/objects"):
            detections = perception.detections if perception is not None else ()
            out.append(("/scene/objects", t_ns, self._objects(detections, stamp)))
        if record.plan is not None and wanted("/scene/plan"):
            out.append(("/scene/plan", t_ns, _plan_line(record.plan, stamp)))
        if wanted("/stagepilot/decision"):
            out.append(("/stagepilot/decision", t_ns, _decision(obs, record)))
        if wanted("/stagepilot/latency"):
            out.append(("/stagepilot/latency", t_ns, _latency(obs, record)))
        return out

    def _camera(self, image: CameraImage | None, t_ns: int, stamp: Timestamp, wanted) -> list[Payload]:
        """The image and its calibration; notes the camera's pose for /tf (a dropped frame keeps
        the last one)."""
        if image is None:
            return []
        self._camera_pose = (_vector(image.T_ego_cam[:3, 3]), _rotation_quaternion(image.T_ego_cam[:3, :3]))
        out = []
        data = _image_bytes(image) if wanted(self.image_topic) else None
        if data is not None:
            format_ = image.encoding if image.encoded is not None else "jpeg"
            message = CompressedImage(timestamp=stamp, frame_id=self.camera_frame, data=data, format=format_)
            out.append((self.image_topic, t_ns, message.encode()))
        if wanted(self.calibration_topic):
            out.append((self.calibration_topic, t_ns, _calibration(image, self.camera_frame, stamp)))
        return out

    def _transforms(self, ego: EgoState, stamp: Timestamp) -> list[bytes]:
        """world -> ego (the rear axle on the ground), and ego -> the camera's optical frame."""
        ego_tf = FrameTransform(timestamp=stamp, parent_frame_id="world", child_frame_id="ego",
                                translation=Vector3(x=float(ego.x), y=float(ego.y), z=0.0),
                                rotation=_yaw_quaternion(ego.yaw))
        out = [ego_tf.encode()]
        if self._camera_pose is not None:
            translation, rotation = self._camera_pose
            out.append(FrameTransform(timestamp=stamp, parent_frame_id="ego", child_frame_id=self.camera_frame,
                                      translation=translation, rotation=rotation).encode())
        return out

    def _objects(self, detections: tuple[Detection, ...], stamp: Timestamp) -> bytes:
        cubes = [CubePrimitive(pose=Pose(position=Vector3(x=float(d.position[0]), y=float(d.position[1]),
                                                          z=float(d.extent[2]) / 2),
                                         orientation=_yaw_quaternion(d.yaw)),
                               size=Vector3(x=float(d.extent[0]), y=float(d.extent[1]), z=float(d.extent[2])),
                               color=_color(d.kind, 0.6))
                 for d in detections]
        return SceneUpdate(entities=[
            SceneEntity(timestamp=stamp, frame_id="ego", id="detections", frame_locked=True, cubes=cubes),
            SceneEntity(timestamp=stamp, frame_id="ego", id="ego", frame_locked=True, cubes=[self._ego_box]),
        ]).encode()


def _times(t_s: float) -> tuple[int, Timestamp]:
    t_ns = int(round(t_s * 1e9))
    sec, nsec = divmod(t_ns, 1_000_000_000)
    return t_ns, Timestamp(sec, nsec)


def image_message(data: bytes, fmt: str, t: float, frame_id: str = "") -> bytes:
    """A foxglove.CompressedImage holding `data` (jpeg or png), stamped with sim time `t`."""
    return CompressedImage(timestamp=_times(t)[1], frame_id=frame_id, data=data, format=fmt).encode()


def _image_bytes(image: CameraImage) -> bytes | None:
    """The frame as sent, or a JPEG of a uint8 frame a fault replaced; None for one that has no
    image to show (NaN)."""
    if image.encoded is not None:
        return image.encoded
    rgb = image.rgb
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        return None
    return encode_frame(rgb, "jpeg")


def _calibration(image: CameraImage, frame_id: str, stamp: Timestamp) -> bytes:
    height, width = image.rgb.shape[:2]
    K = [float(v) for v in np.asarray(image.K, float).reshape(9)]
    P = K[0:3] + [0.0] + K[3:6] + [0.0] + K[6:9] + [0.0]
    return CameraCalibration(timestamp=stamp, frame_id=frame_id, width=int(width), height=int(height),
                             distortion_model="plumb_bob", D=[0.0] * 5, K=K,
                             R=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], P=P).encode()


def _annotations(detections: tuple[Detection, ...], stamp: Timestamp) -> bytes:
    """A rectangle and a "kind id score" label per detection with a 2D box (pixel edges, as
    Foxglove counts them)."""
    boxes, labels = [], []
    for d in detections:
        if d.box_2d is None:
            continue
        x0, y0, x1, y1 = (float(v) for v in d.box_2d)
        colour = _color(d.kind, 1.0)
        boxes.append(PointsAnnotation(
            timestamp=stamp, type=PointsAnnotationType.LineLoop, outline_color=colour, thickness=2.0,
            points=[Point2(x=x0, y=y0), Point2(x=x1, y=y0), Point2(x=x1, y=y1), Point2(x=x0, y=y1)]))
        labels.append(TextAnnotation(
            timestamp=stamp, position=Point2(x=x0, y=max(y0 - 4.0, 12.0)), text=f"{d.kind} {d.track_id} {d.score:.2f}",
            font_size=12.0, text_color=Color(r=1.0, g=1.0, b=1.0, a=1.0), background_color=_color(d.kind, 0.7)))
    return ImageAnnotations(points=boxes, texts=labels).encode()


def _plan_line(plan: Plan, stamp: Timestamp) -> bytes:
    line = _polyline(plan.x, plan.y, z=0.1, thickness=0.25, color=Color(r=0.1, g=1.0, b=0.4, a=0.9))
    return SceneUpdate(entities=[SceneEntity(timestamp=stamp, frame_id="world", id="plan", lines=[line])]).encode()


def _route(points: np.ndarray, stamp: Timestamp) -> bytes:
    points = np.asarray(points, float)
    line = _polyline(points[:, 0], points[:, 1], z=0.05, thickness=0.4, color=Color(r=0.3, g=0.6, b=1.0, a=0.5))
    return SceneUpdate(entities=[SceneEntity(timestamp=stamp, frame_id="world", id="route",
                                             lifetime=Duration(0, 0), lines=[line])]).encode()


def _polyline(x: np.ndarray, y: np.ndarray, z: float, thickness: float, color: Color) -> LinePrimitive:
    """A line strip through the finite (x, y) points [m], `thickness` in metres."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    finite = np.isfinite(x) & np.isfinite(y)
    points = [Point3(x=px, y=py, z=z) for px, py in zip(x[finite].tolist(), y[finite].tolist())]
    return LinePrimitive(type=LinePrimitiveLineType.LineStrip, pose=Pose(orientation=Quaternion(w=1.0)),
                         thickness=thickness, points=points, color=color)


def _decision(obs: Observation, record: FrameRecord) -> bytes:
    plan = record.plan
    return json.dumps({
        "t": obs.t, "frame": obs.frame, "decision": plan.decision if plan is not None else "",
        "reason": plan.reason if plan is not None else "", "speed_mps": _finite(obs.ego.speed),
        "failsafe": record.failsafe or "",
    }).encode()


def _latency(obs: Observation, record: FrameRecord) -> bytes:
    ms = record.stage_ms
    return json.dumps({
        "t": obs.t, "frame": obs.frame, "perception_ms": _finite(ms.get("perception")),
        "planner_ms": _finite(ms.get("planner")), "controller_ms": _finite(ms.get("controller")),
        "charged_delay_ms": _finite(record.charged_delay_s * 1e3), "misses": len(record.misses),
    }).encode()


def _finite(value: float | None) -> float | None:
    """A float, or None (JSON null) for a missing or non-finite one (JSON has no NaN)."""
    return float(value) if value is not None and math.isfinite(value) else None


def _color(kind: str, alpha: float) -> Color:
    r, g, b = _RGB_BY_KIND.get(kind, _OTHER_RGB)
    return Color(r=r, g=g, b=b, a=alpha)


def _vector(v: np.ndarray) -> Vector3:
    return Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _yaw_quaternion(yaw: float) -> Quaternion:
    return Quaternion(x=0.0, y=0.0, z=math.sin(float(yaw) / 2), w=math.cos(float(yaw) / 2))


def _rotation_quaternion(R: np.ndarray) -> Quaternion:
    """The unit quaternion of a (3, 3) rotation matrix (Shepperd's method: the largest of the
    four candidates as pivot keeps it well conditioned)."""
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = np.asarray(R, float).tolist()
    trace = m00 + m11 + m22
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        w, x, y, z = 0.25 * s, (m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s
    elif m00 > m11 and m00 > m22:
        s = 2.0 * math.sqrt(1.0 + m00 - m11 - m22)
        w, x, y, z = (m21 - m12) / s, 0.25 * s, (m01 + m10) / s, (m02 + m20) / s
    elif m11 > m22:
        s = 2.0 * math.sqrt(1.0 + m11 - m00 - m22)
        w, x, y, z = (m02 - m20) / s, (m01 + m10) / s, 0.25 * s, (m12 + m21) / s
    else:
        s = 2.0 * math.sqrt(1.0 + m22 - m00 - m11)
        w, x, y, z = (m10 - m01) / s, (m02 + m20) / s, (m12 + m21) / s, 0.25 * s
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    return Quaternion(x=x / norm, y=y / norm, z=z / norm, w=w / norm)

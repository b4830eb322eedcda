"""The viewer messages of a drive: every payload decodes with its channel's schema, the
transforms form one tree, the boxes match the detections, and segmentation PNGs are exact."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest
from mcap.decoder import DecoderFactory as McapDecoderFactory
from mcap.reader import make_reader
from mcap.writer import Writer
from mcap_protobuf.decoder import DecoderFactory
from PIL import Image

from stagepilot.core.camera import decode_frame
from stagepilot.core.config import load_stack
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.viewer import ViewerFrames, semantic_from_png, semantic_png
from stagepilot.sim.render.palette import CARLA_PALETTE
from stagepilot.sim.scenario import load_scenario

from conftest import PERFECT

CAMERA = "front"


class Collect:
    """Builds the viewer messages of every frame and keeps them, with what they came from."""

    def __init__(self, config):
        v = config.vehicle
        self.viewer = ViewerFrames(CAMERA, v.length_m, v.width_m, v.rear_overhang_m)
        self.start_payloads, self.frames = [], []

    def start(self, sim, obs):
        self.start_payloads = self.viewer.start(obs)

    def frame(self, obs, record):
        payloads = self.viewer.frame(obs, record)
        self.frames.append((obs, record, payloads, self.viewer.segmentation_png))

    def end(self, result):
        pass


@pytest.fixture(scope="module")
def drive_views():
    """A pedestrian walks into view after about 2.5 s: frames with and without detections."""
    config = load_stack([], [*PERFECT])
    collect = Collect(config)
    drive(config, load_scenario("pedestrian_crossing", [], ()), observers=(collect,), max_time_s=3.5)
    return collect


class JsonDecoderFactory(McapDecoderFactory):
    def decoder_for(self, message_encoding, schema):
        return json.loads if message_encoding == "json" and schema.encoding == "jsonschema" else None


def _decoded(collect, tmp_path) -> list[tuple[str, int, object]]:
    """Every payload written to an MCAP with the viewer's channels and read back decoded."""
    path = tmp_path / "viewer.mcap"
    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start()
        ids = {}
        for c in collect.viewer.channels():
            schema_id = writer.register_schema(c.schema_name, c.schema_encoding, c.schema_data)
            ids[c.topic] = writer.register_channel(c.topic, c.message_encoding, schema_id)
        payloads = [*collect.start_payloads, *(p for _, _, frame, _ in collect.frames for p in frame)]
        for topic, t_ns, data in payloads:
            writer.add_message(ids[topic], log_time=t_ns, data=data, publish_time=t_ns)
        writer.finish()
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory(), JsonDecoderFactory()])
        out = []
        for schema, channel, message, decoded in reader.iter_decoded_messages(log_time_order=False):
            out.append((channel.topic, message.log_time, decoded))
    assert len(out) == len(payloads)
    return out


@pytest.mark.parametrize("shape, high", [((360, 640), 28), ((7, 5), 28), ((64, 48), 255)])
def test_semantic_png_is_paletted_and_round_trips_exactly(shape, high):
    mask = np.random.default_rng(0).integers(0, high + 1, shape, dtype=np.uint8)
    data = semantic_png(mask)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "P"
        palette = np.frombuffer(bytes(image.getpalette()), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette[:29], CARLA_PALETTE[:29])  # the viewer shows CARLA's colours
    decoded = semantic_from_png(data)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, mask)


def test_semantic_png_rejects_what_is_not_a_tag_mask():
    with pytest.raises(ValueError, match="uint8"):
        semantic_png(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="paletted"):
        semantic_from_png(_grey_png())


def _grey_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_message_decodes_with_its_channel_schema(drive_views, tmp_path):
    decoded = _decoded(drive_views, tmp_path)
    topics = {c.topic: c for c in drive_views.viewer.channels()}
    assert {topic for topic, _, _ in decoded} == set(topics)  # every channel is used
    for topic, t_ns, message in decoded:
        channel = topics[topic]
        if channel.message_encoding == "json":  # the fields the schema names, with their types
            properties = json.loads(channel.schema_data)["properties"]
            assert set(message) == set(properties)
            for key, value in message.items():
                assert _json_type(value) in np.atleast_1d(properties[key]["type"]), (topic, key, value)
        else:
            assert type(message).DESCRIPTOR.full_name == channel.schema_name
    assert [t for topic, t, _ in decoded if topic == "/scene/route"] == [0]  # once, at the start


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[type(value)]


def test_images_and_json_carry_the_frame(drive_views, tmp_path):
    decoded = _decoded(drive_views, tmp_path)
    by_topic: dict[str, list] = {}
    for topic, t_ns, message in decoded:
        by_topic.setdefault(topic, []).append((t_ns, message))
    frames = drive_views.frames
    obs, record, payloads, png = frames[-1]
    t_ns, image = by_topic["/camera/front"][-1]
    assert t_ns == round(obs.t * 1e9) and image.format == "jpeg" and image.frame_id == "camera_front"
    np.testing.assert_array_equal(decode_frame(image.data), obs.cameras[CAMERA].rgb)
    _, segmentation = by_topic["/perception/segmentation"][-1]
    assert segmentation.format == "png" and segmentation.data == png
    np.testing.assert_array_equal(semantic_from_png(png), record.perception.semantic)
    _, calibration = by_topic["/camera/front/calibration"][-1]
    assert (calibration.width, calibration.height) == (640, 360)
    np.testing.assert_allclose(np.reshape(calibration.K, (3, 3)), obs.cameras[CAMERA].K)
    decision = json.loads(dict((t, d) for t, _, d in payloads)["/stagepilot/decision"])
    assert decision == {"t": obs.t, "frame": obs.frame, "decision": record.plan.decision, "reason": record.plan.reason,
                        "speed_mps": obs.ego.speed, "failsafe": ""}
    latency = json.loads(dict((t, d) for t, _, d in payloads)["/stagepilot/latency"])
    assert latency["planner_ms"] == pytest.approx(record.stage_ms["planner"])
    assert latency["misses"] == len(record.misses)


def _rotation(q) -> np.ndarray:
    x, y, z, w = q.x, q.y, q.z, q.w
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def test_transforms_form_a_tree_rooted_at_world_with_the_camera_pose(drive_views, tmp_path):
    transforms: dict[int, list] = {}
    for topic, t_ns, message in _decoded(drive_views, tmp_path):
        if topic == "/tf":
            transforms.setdefault(t_ns, []).append(message)
    assert len(transforms) == len(drive_views.frames)
    obs, _, _, _ = drive_views.frames[-1]
    for t_ns, frame in transforms.items():
        parent = {tf.child_frame_id: tf.parent_frame_id for tf in frame}
        assert len(parent) == len(frame)  # each frame has one parent
        assert set(parent) == {"ego", "camera_front"}
        for child in parent:
            seen = {child}
            while child != "world":
                child = parent[child]
                assert child not in seen
                seen.add(child)
    tf = {m.child_frame_id: m for m in transforms[round(obs.t * 1e9)]}
    T = obs.cameras[CAMERA].T_ego_cam
    np.testing.assert_allclose(_rotation(tf["camera_front"].rotation), T[:3, :3], atol=1e-9)
    t = tf["camera_front"].translation
    np.testing.assert_allclose([t.x, t.y, t.z], T[:3, 3])
    ego = tf["ego"]
    assert (ego.translation.x, ego.translation.y) == (obs.ego.x, obs.ego.y)
    assert 2 * math.atan2(ego.rotation.z, ego.rotation.w) == pytest.approx(obs.ego.yaw)


def test_annotations_and_cubes_follow_the_detections(drive_views, tmp_path):
    decoded = _decoded(drive_views, tmp_path)
    annotations = [m for topic, _, m in decoded if topic == "/perception/detections"]
    objects = [m for topic, _, m in decoded if topic == "/scene/objects"]
    assert len(annotations) == len(objects) == len(drive_views.frames)
    boxed_frames = 0
    for (obs, record, _, _), image, scene in zip(drive_views.frames, annotations, objects):
        detections = record.perception.detections
        boxed = [d for d in detections if d.box_2d is not None]
        boxed_frames += bool(boxed)
        assert len(image.points) == len(image.texts) == len(boxed)
        for d, box, text in zip(boxed, image.points, image.texts):
            x0, y0, x1, y1 = d.box_2d
            np.testing.assert_allclose([(p.x, p.y) for p in box.points], [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
            assert text.text.startswith(f"{d.kind} {d.track_id} ")
        entities = {e.id: e for e in scene.entities}
        assert entities["detections"].frame_id == "ego" and len(entities["detections"].cubes) == len(detections)
        for d, cube in zip(detections, entities["detections"].cubes):
            assert (cube.pose.position.x, cube.pose.position.y) == pytest.approx(d.position)
            assert (cube.size.x, cube.size.y, cube.size.z) == pytest.approx(d.extent)
        assert len(entities["ego"].cubes) == 1
    assert boxed_frames >= 5  # the pedestrian was in view


@pytest.mark.parametrize("fault", ["dropped", "nan", "blank"])
def test_a_faulted_camera_frame_is_shown_when_it_can_be(drive_views, fault):
    obs, record, _, _ = drive_views.frames[-1]
    image = obs.cameras[CAMERA]
    camera = {"dropped": None,
              "nan": dataclasses.replace(image, rgb=np.full(image.rgb.shape, np.nan, np.float32), encoded=None),
              "blank": dataclasses.replace(image, rgb=np.zeros_like(image.rgb), encoded=None)}[fault]
    payloads = drive_views.viewer.frame(dataclasses.replace(obs, cameras={CAMERA: camera}), record)
    topics = [topic for topic, _, _ in payloads]
    assert ("/camera/front" in topics) == (fault == "blank")
    assert topics.count("/tf") == 2  # the camera keeps its last known pose
    if fault == "blank":
        data = dict((t, d) for t, _, d in payloads)["/camera/front"]
        assert b"\xff\xd8" in data  # a JPEG the viewer encoded itself


def test_topics_limit_what_a_frame_builds(drive_views):
    obs, record, _, _ = drive_views.frames[-1]
    payloads = drive_views.viewer.frame(obs, record, topics={"/tf", "/stagepilot/latency"})
    assert sorted({topic for topic, _, _ in payloads}) == ["/stagepilot/latency", "/tf"]
    assert drive_views.viewer.segmentation_png is None

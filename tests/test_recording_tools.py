"""`recording info` and `recording export` on a short recorded drive: the info names every
channel with its schema and count, and the provenance; the export writes the pixels the stack
saw, the detections and COCO boxes, and refuses ranges the recording does not hold."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from stagepilot.core.config import config_hash, load_stack
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.recorder import STAGE_TOPICS, Recorder
from stagepilot.pipeline.recording import Recording
from stagepilot.pipeline.recording_tools import (FrameRangeError, export_frames, format_info, parse_range,
                                                 recording_info)
from stagepilot.sim.scenario import load_scenario

from conftest import PERFECT

FIRST, LAST = 5, 9  # the lead vehicle is in view, with a 2D box, from the first frame


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(path, config, drive result) of 2 s of lead_vehicle_braking, recorded."""
    config = load_stack([], [*PERFECT])
    scenario = load_scenario("lead_vehicle_braking", [], ())
    path = tmp_path_factory.mktemp("recording") / "drive.mcap"
    result = drive(config, scenario, observers=(Recorder(path, config, scenario),), max_time_s=2.0)
    return path, config, result


def test_info_lists_channels_frames_and_provenance(recorded):
    path, config, result = recorded
    info = recording_info(path)
    channels = {c["topic"]: c for c in info["channels"]}
    camera = channels["/camera/front"]
    assert (camera["schema"], camera["encoding"]) == ("foxglove.CompressedImage", "protobuf")
    for topic, schema in STAGE_TOPICS.items():
        assert channels[topic]["schema"] == schema and channels[topic]["encoding"] == "json"
    frames = len(result.records)
    assert info["frames"] == frames == result.outcome["frames"]
    assert camera["messages"] == channels["/stagepilot/runtime"]["messages"] == frames
    assert channels["/stagepilot/route"]["messages"] == 1
    assert channels["/tf"]["messages"] == 2 * frames  # two transforms a frame: counted, not per frame
    assert info["complete"] and info["truncated"] is None and info["messages_outside_frames"] == 0
    assert info["duration_s"] == pytest.approx((frames - 1) * config.sim.dt_s)
    assert info["config_hash"] == config_hash(config)
    assert (info["scenario"], info["perception"]) == ("lead_vehicle_braking", "perfect")
    assert info["scenario_seed"] == str(result.scenario.seed)
    assert info["outcome"]["frames"] == frames
    text = format_info(info)
    assert "complete" in text and config_hash(config) in text and "/camera/front" in text


def test_info_of_a_cut_file_says_so(recorded, tmp_path):
    path, _config, result = recorded
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    info = recording_info(cut)
    assert not info["complete"] and info["truncated"] and info["outcome"] is None
    assert 0 < info["frames"] < len(result.records)
    assert "incomplete" in format_info(info)


def test_export_writes_what_the_stack_saw(recorded, tmp_path):
    path, _config, _result = recorded
    summary = export_frames(path, FIRST, LAST, tmp_path)
    assert summary["frames"] == LAST - FIRST + 1
    with Recording(path) as rec:
        for frame in rec.frames():
            if frame.frame == 0:
                rec.route(frame)  # observations refer to the route that frame 0 carries
            if frame.frame > LAST:
                break
            if frame.frame < FIRST:
                continue
            stem = tmp_path / f"frame_{frame.frame:06d}"
            written = cv2.imread(f"{stem}_camera.png", cv2.IMREAD_UNCHANGED)[:, :, ::-1]
            seen = rec.observation(frame).cameras["front"].rgb
            assert written.dtype == seen.dtype and np.array_equal(written, seen)
            perception = rec.perception(frame)
            data = json.loads(Path(f"{stem}.json").read_text())
            assert data["frame"] == frame.frame and data["t"] == frame.t
            assert [d["track_id"] for d in data["detections"]] == [d.track_id for d in perception.detections]
            assert [d["box_2d"] for d in data["detections"]] == [list(d.box_2d) for d in perception.detections]
            assert data["decision"] == rec.plan(frame).decision and data["control"] == frame.runtime["control"]
            if perception.semantic is not None:
                assert Path(f"{stem}_segmentation.png").is_file()
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert [image["id"] for image in coco["images"]] == list(range(FIRST, LAST + 1))
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert coco["annotations"] and all(names[a["category_id"]] == "vehicle" for a in coco["annotations"])
    x, y, w, h = coco["annotations"][0]["bbox"]
    first_json = json.loads((tmp_path / f"frame_{FIRST:06d}.json").read_text())
    assert [x, y, x + w, y + h] == first_json["detections"][0]["box_2d"]


@pytest.mark.parametrize("text, expected", [("5:9", (5, 9)), ("7", (7, 7)), (" 3 : 4 ", (3, 4))])
def test_parse_range(text, expected):
    assert parse_range(text) == expected


@pytest.mark.parametrize("text, says", [("9:5", "after the last"), ("a:b", "expected A:B"), ("1:2:3", "expected A:B"),
                                        ("", "expected A:B"), ("-2:3", "start at 0")])
def test_bad_range_text_is_a_one_line_value_error(text, says):
    with pytest.raises(ValueError, match=says) as caught:
        parse_range(text)
    assert "\n" not in str(caught.value)


def test_range_outside_the_recording_names_both_and_writes_nothing(recorded, tmp_path):
    path, _config, result = recorded
    last_frame = len(result.records) - 1
    with pytest.raises(FrameRangeError) as caught:
        export_frames(path, last_frame - 2, last_frame + 5, tmp_path)
    assert f"{last_frame - 2}:{last_frame + 5}" in str(caught.value) and f"0:{last_frame}" in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="after the last"):
        export_frames(path, 9, 5, tmp_path)


def test_the_commands_print_info_export_frames_and_refuse_a_bad_range(recorded, tmp_path, capsys):
    from stagepilot.pipeline.cli import main

    path, config, result = recorded
    assert main(["recording", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "/stagepilot/plan" in out and config_hash(config) in out
    assert main(["recording", "export", str(path), "--frames", "2:4", "--out", str(tmp_path / "x")]) == 0
    assert "wrote 3 frames" in capsys.readouterr().out
    assert len(list((tmp_path / "x").glob("*_camera.png"))) == 3
    assert main(["recording", "export", str(path), "--frames", "9:5", "--out", str(tmp_path / "y")]) == 2
    assert "9:5" in capsys.readouterr().err

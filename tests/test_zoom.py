"""The horizon zoom (perception/zoom.py): where its band lies, and how its boxes join the frame's."""

import math

import numpy as np
import pytest
import torch

from stagepilot.core.camera import camera_pose, pinhole_intrinsics
from stagepilot.perception import zoom
from stagepilot.perception.geometry import elevation_row

K = pinhole_intrinsics(640, 360, 90.0)  # f = 320 px, principal point (320, 180)


def test_the_band_sits_about_the_horizon_and_follows_the_camera():
    level = camera_pose(1.5, 0.0, 1.6, 0.0, 3.0, 0.0)            # the default front camera: 3 deg down
    horizon = 180 - 320 * math.tan(math.radians(3.0))             # row 163.2
    assert elevation_row(K, level, 0.0) == pytest.approx(horizon, abs=1e-6)
    band = zoom.zoom_view(360, 640, K, level, (360, 640), rows=80, scale=2.0)
    assert band == zoom.Band(131, 211, 0, 640, (160, 1280))       # 32 rows above the horizon, 48 below
    # the middle two thirds of the width: 432 columns about the centre
    assert zoom.zoom_view(360, 640, K, level, (360, 640), 80, 2.0, width_share=0.675) == zoom.Band(
        131, 211, 104, 536, (160, 864))
    # a camera pitched further down sees the horizon higher up: the band moves with it
    down = camera_pose(1.5, 0.0, 1.6, 0.0, 10.0, 0.0)
    band = zoom.zoom_view(360, 640, K, down, (360, 640), rows=80, scale=2.0)
    assert band.top == round(180 - 320 * math.tan(math.radians(10.0)) - 32) and band.bottom - band.top == 80
    # a side camera turned 60 deg: its own heading's horizon, the same row when it is level
    side = camera_pose(1.5, 0.5, 1.6, 0.0, 3.0, 60.0)
    assert zoom.zoom_view(360, 640, K, side, (360, 640), rows=80, scale=2.0) == zoom.Band(131, 211, 0, 640, (160, 1280))
    # a network input at half the camera's size: the band's rows count at the input scale
    assert zoom.zoom_view(360, 640, K, level, (180, 320), rows=40, scale=2.0) == zoom.Band(131, 211, 0, 640, (80, 640))
    # off, or a horizon the camera cannot see: no band
    assert zoom.zoom_view(360, 640, K, level, (360, 640), rows=80, scale=1.0) is None
    assert zoom.zoom_view(360, 640, K, level, (360, 640), rows=0, scale=2.0) is None
    sky = camera_pose(1.5, 0.0, 1.6, 0.0, -40.0, 0.0)             # looking 40 deg up: the horizon is below the image
    assert zoom.zoom_view(360, 640, K, sky, (360, 640), rows=80, scale=2.0) is None


def _dets(*rows):
    boxes = torch.tensor([r[:4] for r in rows], dtype=torch.float32).reshape(-1, 4)
    scores = torch.tensor([r[4] for r in rows], dtype=torch.float32)
    labels = torch.tensor([r[5] for r in rows], dtype=torch.long)
    return boxes, scores, labels


def test_the_band_places_a_far_car_and_leaves_the_rest_to_the_whole_frame():
    band = zoom.Band(131, 211, 0, 640, (160, 1280))
    whole = _dets((300, 160, 309, 168, 0.45, 0),    # a far car, placed a pixel off by the whole frame
                  (100, 100, 220, 200, 0.90, 0))    # a near car
    zoomed = _dets((300.5, 160.5, 308.5, 167.5, 0.80, 0),  # the same far car, placed better, more sure
                   (101, 132, 140, 160, 0.95, 0),          # a box on the band's top edge: cut by the band
                   (400, 150, 440, 190, 0.70, 0),          # 40 px tall: larger objects are the whole frame's
                   (302, 150, 306, 160, 0.60, 2),          # another class on the same pixels stays
                   (500, 170, 508, 176, 0.50, 1))          # something only the band sees
    boxes, scores, labels = zoom.merge(whole, zoomed, band, nms_iou=0.5)
    got = {(tuple(round(v, 2) for v in b), round(float(s), 2), int(c))
           for b, s, c in zip(boxes.tolist(), scores, labels)}
    # the far car seen twice is one box between the two, nearer the surer, and surer than either
    # (1 - 0.2 * 0.55): (300.5 * 0.8 + 300 * 0.45) / 1.25 = 300.32
    assert got == {((300.32, 160.32, 308.68, 167.68), 0.89, 0), ((100.0, 100.0, 220.0, 200.0), 0.9, 0),
                   ((302.0, 150.0, 306.0, 160.0), 0.6, 2), ((500.0, 170.0, 508.0, 176.0), 0.5, 1)}
    assert scores.tolist() == sorted(scores.tolist(), reverse=True)
    # the stage's form: numpy boxes and class names give the same
    b, s, names = zoom.merge_arrays(whole[0].numpy(), whole[1].numpy(), ["vehicle", "vehicle"],
                                    zoomed[0].numpy() - [0, 131, 0, 131], zoomed[1].numpy(),  # in the band's crop
                                    ["vehicle", "vehicle", "vehicle", "static_obstacle", "static_obstacle"], band, 0.5)
    assert np.allclose(b, boxes.numpy()) and names == ["vehicle", "vehicle", "static_obstacle", "static_obstacle"]
    # the band's boxes count for vehicles and obstacles, not for traffic lights or walkers
    for name in ("traffic_light_red", "pedestrian"):
        _, _, names = zoom.merge_arrays(np.zeros((0, 4)), np.zeros(0), [], np.array([[300, 30, 306, 44]]),
                                        np.array([0.9]), [name], band, 0.5)
        assert names == [], name
    # a band narrower than the frame: a box on its side edge is cut too
    narrow = zoom.Band(131, 211, 104, 536, (160, 864))
    side = _dets((530, 170, 537, 176, 0.9, 0))
    assert len(zoom.merge(_dets(), side, narrow, nms_iou=0.5)[0]) == 0
    assert len(zoom.merge(_dets(), side, band, nms_iou=0.5)[0]) == 1
    # twins pair one to one, and only within a class and by TWIN_IOU: a second band box on the
    # car pairs with nothing and NMS drops it; a band box overlapping a frame box by less stays
    whole = _dets((300, 160, 309, 168, 0.45, 0), (320, 160, 328, 168, 0.5, 0))
    zoomed = _dets((300, 160, 309, 168, 0.40, 0), (300, 161, 309, 168, 0.30, 0), (325, 160, 333, 168, 0.6, 0))
    boxes, scores, labels = zoom.merge(whole, zoomed, band, nms_iou=0.5)
    assert torch.allclose(scores, torch.tensor([0.67, 0.6, 0.5])), scores  # 1 - 0.55 * 0.6; the rest alone
    assert torch.allclose(boxes[0], torch.tensor([300.0, 160, 309, 168]))
    assert zoom.box_iou(torch.tensor([[320.0, 160, 328, 168]]), torch.tensor([[325.0, 160, 333, 168]])) < zoom.TWIN_IOU
    # nothing from the band: the whole frame's boxes, as they were
    empty = _dets()
    boxes, scores, labels = zoom.merge(whole, empty, band, nms_iou=0.5)
    assert torch.equal(boxes, whole[0][[1, 0]]) and labels.tolist() == [0, 0]


def test_the_stage_reads_the_band_where_its_point_does_and_boxes_more_far_cars():
    """town_traffic's cars ahead, the same frames through the stage at main_only (the frame and
    its horizon band) and at main_unzoomed (the frame alone): the band goes through the network
    as its own call at 864x160, its merge is a part of the stage's own, and the boxes the stage
    goes on to place (score 0.4 and up) box more of the cars under 14 px tall that the
    renderer's ground truth shows (IoU >= 0.5)."""
    from stagepilot.core.config import load_stack
    from stagepilot.pipeline.stack import build_perception
    from stagepilot.sim.follower import make_follower
    from stagepilot.sim.scenario import load_scenario
    from stagepilot.sim.world import EmbeddedSimulator
    from torchvision.ops import box_iou

    learned = ["perception.kind=learned", "perception.learned.backend=torch", "perception.learned.precision=fp32"]
    sim = EmbeddedSimulator(load_stack([], learned))
    obs = sim.reset(load_scenario("town_traffic"))
    follower = make_follower(sim)
    frames = []
    for _ in range(60):
        frames.append(obs)
        obs = sim.step(follower(obs))
    truth = build_perception(load_stack([], ["perception.kind=perfect"]), sim.road_map, sim.signal_heads)
    small = [[d.box_2d for d in truth.step(f).detections if d.kind == "vehicle" and d.camera == "front"
              and d.box_2d is not None and d.box_2d[3] - d.box_2d[1] < 14] for f in frames]
    assert sum(map(len, small)) >= 30  # far cars to find
    found, sizes, parts = {}, {}, {}
    for point in ("main_only", "main_unzoomed"):
        stage = build_perception(load_stack([], [*learned, f"perception.learned.operating_point={point}"]),
                                 sim.road_map, sim.signal_heads)
        run, seen, measure, placed = stage.runner.run, [], stage._measurements, []

        def spy_run(images, spans=None, sizes_=None, run=run, seen=seen):
            seen.append(tuple(sizes_ or ()))
            return run(images, spans, sizes_)

        def spy_measurements(out, image, top=0, measure=measure, placed=placed):
            placed.append([b for b, s, c in zip(out.boxes, out.scores, out.labels) if c == "vehicle" and s >= 0.4])
            return measure(out, image, top)
        stage.runner.run, stage._measurements = spy_run, spy_measurements
        found[point], parts[point] = 0, set()
        for frame, boxes in zip(frames, small):
            placed.clear()
            stage.step(frame)
            parts[point] |= {name for name, _, _ in stage.spans.parts}
            if boxes and placed[0]:
                iou = box_iou(torch.tensor(boxes), torch.tensor(np.array(placed[0]), dtype=torch.float32))
                found[point] += int((iou.max(1).values >= 0.5).sum())
        sizes[point] = set(seen)
    assert sizes["main_only"] == {((360, 640), (160, 864))} and sizes["main_unzoomed"] == {((360, 640),)}
    assert "zoom" in parts["main_only"] and "zoom" not in parts["main_unzoomed"]
    assert found["main_only"] >= found["main_unzoomed"] + 5, (found, sum(map(len, small)))


def test_a_recording_made_before_the_zoom_replays_without_it():
    """A recording holds its whole config; one without `horizon_zoom` was made by a stage that
    read no zoom, so it replays with the zoom off (pipeline/recording.py migrate_config), and
    a recording that has the key keeps its value."""
    from stagepilot.pipeline.recording import migrate_config

    old = {"perception": {"kind": "learned", "learned": {"operating_point": "main_only", "nms_iou": 0.5}}}
    assert migrate_config(old)["perception"]["learned"]["horizon_zoom"] == 1.0
    new = {"perception": {"learned": {"horizon_zoom": 2.0}}}
    assert migrate_config(new)["perception"]["learned"]["horizon_zoom"] == 2.0
    assert migrate_config({"perception": {"kind": "perfect"}}) == {"perception": {"kind": "perfect"}}

"""The box refiner (perception/refine.py): its geometry, that training teaches it to find a box's
edges, that the shipped one brings the stage's small vehicle boxes closer to their labels on
frames no training saw, how a file is chosen for a detector, and that a bad file is named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from stagepilot.core.config import load_stack
from stagepilot.perception import refine
from stagepilot.perception.checkpoint import CheckpointError, file_sha256, save_checkpoint
from stagepilot.perception.network import build_model
from stagepilot.perception.refine import (BoxRefiner, Refinement, crops, frame_crops, load_refiner, moved,
                                          moves_towards, resolve_refiner, save_refiner)
from stagepilot.perception.runner import SHIPPED_CHECKPOINT
from stagepilot.perception.train_refiner import fit
from stagepilot.pipeline.cli import main
from stagepilot.pipeline.collect import collect_dataset
from stagepilot.pipeline.fresh_sets import front_config

from conftest import shared_map


def test_moves_towards_a_box_take_it_there():
    boxes = torch.tensor([[10.0, 20.0, 18.0, 26.0], [100.0, 50.0, 103.0, 52.0]])
    targets = torch.tensor([[8.5, 19.0, 20.0, 26.5], [99.0, 49.5, 105.0, 53.0]])
    assert torch.allclose(moved(boxes, moves_towards(boxes, targets)), targets, atol=1e-4)


def test_the_stage_crops_the_same_pixels_as_evaluation():
    rgb = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    boxes = torch.tensor([[3.0, 2.0, 11.0, 8.0], [70.2, 40.7, 79.9, 47.1], [150.0, 80.0, 159.0, 89.0]])
    whole = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    assert torch.allclose(frame_crops(rgb, boxes), crops(whole, boxes), atol=1e-6)


def test_an_untrained_refiner_leaves_boxes_and_it_touches_only_small_surely_scored_vehicles():
    rgb = np.full((90, 160, 3), 128, np.uint8)
    boxes = np.array([[10, 10, 20, 18], [30, 10, 60, 50], [70, 10, 80, 18], [90, 10, 100, 18]], float)
    scores = np.array([0.9, 0.9, 0.9, 0.1])
    labels = ["vehicle", "vehicle", "pedestrian", "vehicle"]
    untrained = Refinement(BoxRefiner().eval())
    assert np.allclose(untrained.apply_frame(rgb, boxes, scores, labels), boxes)
    model = BoxRefiner().eval()
    torch.nn.init.constant_(model.head[-1].bias, 0.05)  # every edge moves right / down
    out = Refinement(model).apply_frame(rgb, boxes, scores, labels)
    assert (out[0] > boxes[0]).all()                    # small, sure vehicle: refined
    assert np.allclose(out[1:], boxes[1:])              # 40 px tall, a pedestrian, a low score: not


def _blocks(n: int, seed: int):
    """Synthetic frames: a dark block (a far car) on a noisy road, and a box up to 2.5 px off each edge."""
    g = torch.Generator().manual_seed(seed)
    images, truth, guesses = [], [], []
    for _ in range(n):
        image = 0.55 + 0.05 * torch.randn(3, 48, 80, generator=g)
        w, h = float(torch.randint(6, 17, (1,), generator=g)), float(torch.randint(4, 11, (1,), generator=g))
        x0, y0 = float(torch.randint(10, 80 - 10 - int(w), (1,), generator=g)), float(torch.randint(8, 30, (1,), generator=g))
        image[:, int(y0):int(y0 + h), int(x0):int(x0 + w)] = 0.15
        box = torch.tensor([x0, y0, x0 + w, y0 + h])
        images.append(image.clamp(0, 1))
        truth.append(box)
        guesses.append(box + (torch.rand(4, generator=g) * 5.0 - 2.5))
    return images, torch.stack(truth), torch.stack(guesses)


def test_training_teaches_the_refiner_to_find_a_blocks_edges():
    images, truth, guesses = _blocks(1200, 0)
    pixels = torch.cat([crops(im, b[None]) for im, b in zip(images, guesses)]).mul(255).round().to(torch.uint8)
    sizes = torch.stack([guesses[:, 2] - guesses[:, 0], guesses[:, 3] - guesses[:, 1]], 1)
    model, losses = fit(pixels, sizes, moves_towards(guesses, truth), epochs=8, batch=64, show_progress=False)
    assert losses[-1] < 0.5 * losses[0]
    images, truth, guesses = _blocks(200, 1)  # new frames
    refinement = Refinement(model, max_height_px=50.0, min_score=0.0)
    after = torch.cat([refinement.apply(im, b[None], torch.ones(1), torch.zeros(1), [0]) for im, b in zip(images, guesses)])
    before_iou = box_iou(guesses, truth).diagonal().mean()
    after_iou = box_iou(after, truth).diagonal().mean()
    assert after_iou > before_iou + 0.1, (float(before_iou), float(after_iou))


@pytest.fixture(scope="module")
def town02(tmp_path_factory) -> Path:
    shared_map("Town02")  # the validation split's town
    out = tmp_path_factory.mktemp("refine") / "ds"
    collect_dataset(front_config(), out, 40, frames_per_scene=10, split="val", seed=7, show_progress=False)
    return out


def test_the_shipped_refiner_moves_small_vehicle_boxes_closer_to_their_labels(town02):
    from stagepilot.perception.checkpoint import load_checkpoint
    from stagepilot.perception.data import PerceptionDataset, collate
    from stagepilot.perception import evaluate as ev
    from stagepilot.perception.zoom import zoom_of

    refinement, why = resolve_refiner("auto", SHIPPED_CHECKPOINT)
    assert refinement is not None, why
    config = front_config()
    model, _ = load_checkpoint(SHIPPED_CHECKPOINT, map_location="cpu")
    model.eval()
    data = PerceptionDataset(town02, "val", input_size=tuple(model.input_size))
    images, targets = collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        dets = ev.stage_detections(model, images, model(images), targets, ev._cameras(data, config),
                                   zoom_of(config.perception.learned), False, None, config.perception.learned.nms_iou)
    before, after = [], []
    for image, det, tgt in zip(images, dets, targets):
        labels = tgt["boxes"][tgt["labels"] == 0]
        pick = refinement.chosen(det["boxes"], det["scores"], det["labels"] == 0)
        if not len(pick) or not len(labels):
            continue
        boxes = det["boxes"][pick]
        best, j = box_iou(boxes, labels).max(1)
        keep = best >= 0.25
        new = refinement.apply(image, det["boxes"], det["scores"], det["labels"], [0])[pick]
        before += best[keep].tolist()
        after += box_iou(new[keep], labels[j[keep]]).diagonal().tolist()
    # 66 boxes when written: mean IoU 0.67 -> 0.84, at IoU 0.5 or more 62 % -> 95 %
    assert len(before) >= 20
    assert np.mean(after) > np.mean(before) + 0.08, (np.mean(before), np.mean(after), len(before))
    assert np.mean(np.array(after) >= 0.5) > np.mean(np.array(before) >= 0.5) + 0.15


def test_auto_takes_the_shipped_refiner_only_for_the_detector_it_was_trained_on(tmp_path):
    shipped, why = resolve_refiner("auto", SHIPPED_CHECKPOINT)
    assert shipped is not None and "trained on this detector" in why
    other = save_checkpoint(tmp_path / "other.pt", build_model("mtl_mbv3small_fpn96_s48_seg4_cs"))
    none, why = resolve_refiner("auto", other)
    assert none is None and "another detector" in why
    assert resolve_refiner("off", SHIPPED_CHECKPOINT) == (None, "off")
    chosen, why = resolve_refiner(str(refine.WEIGHTS), other)  # a named file is used, and said to be foreign
    assert chosen is not None and "another detector" in why
    assert resolve_refiner("auto", None) == (None, "auto: the detector has no checkpoint file")  # a model handed in
    assert resolve_refiner(str(refine.WEIGHTS), None)[1] == "configured"


def test_a_bad_refiner_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_refiner(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pt: cannot be read"):
        load_refiner(tmp_path / "junk.pt")
    torch.save({"state_dict": {}, "meta": {"architecture": "something_else"}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="architecture 'something_else'"):
        load_refiner(tmp_path / "foreign.pt")
    save_refiner(tmp_path / "ok.pt", BoxRefiner(), {"detector_sha256": "x"})
    assert load_refiner(tmp_path / "ok.pt").meta["detector_sha256"] == "x"


def test_the_stage_says_which_refiner_it_runs(tmp_path):
    from stagepilot.perception.learned import LearnedPerception

    config = load_stack().perception.learned
    stage = LearnedPerception(config, cameras=("front",))
    assert stage.path["box_refiner"]["file"] == str(refine.WEIGHTS)
    assert stage.path["box_refiner"]["why"].startswith("auto")
    off = LearnedPerception(config.model_copy(update={"box_refiner": "off"}), cameras=("front",), runner=stage.runner)
    assert off.refinement is None and off.path["box_refiner"] == {"file": None, "why": "off"}


def test_train_refiner_writes_a_refiner_for_its_detector(tmp_path, capsys):
    shared_map("Town02")
    data = tmp_path / "ds"
    collect_dataset(front_config(), data, 30, frames_per_scene=10, val_fraction=0.34, seed=3, show_progress=False)
    out = tmp_path / "refiner.pt"
    assert main(["train-refiner", "--quiet", "--data", str(data), "--out", str(out), "--epochs", "1",
                 "sim.cameras.front_left=null", "sim.cameras.front_right=null"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["pairs"] > 0 and set(printed["val"]) == {"without", "with"}
    loaded = load_refiner(out)
    assert loaded.meta["detector_sha256"] == file_sha256(SHIPPED_CHECKPOINT)
    assert loaded.meta["training_command"].startswith("stagepilot train-refiner --data")
    assert main(["train-refiner", "--quiet", "--data", str(tmp_path / "nothing"), "--out", str(out)]) != 0

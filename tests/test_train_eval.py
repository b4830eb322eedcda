"""`stagepilot train` / `stagepilot eval perception` on a tiny collected dataset: the loss falls, checkpoints
carry their meta and resume where they stopped, evaluation reports every metric in range, and bad
config keys are named. No accuracy thresholds: 8 frames train nothing useful."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import cv2
from stagepilot.perception.data import CROP_KEEP, Augment, PerceptionDataset, _zoom_crop, class_index
from stagepilot.perception.evaluate import camera_record, evaluate_model
from stagepilot.perception.geometry import centre_from_box
from stagepilot.perception.geometry import ground_point, scale_intrinsics
from stagepilot.perception.labels import CLASSES, IGNORE_INDEX, SEG_CLASSES
from stagepilot.perception.network import build_model
from stagepilot.perception.train import epoch_augment, load_train_config
from stagepilot.pipeline.cli import main
from stagepilot.pipeline.collect import collect_dataset
from stagepilot.perception.zoom import TRAINING_ROWS, zoom_view
from stagepilot.core.config import load_stack

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "training" / "default.yaml"
SMALL = ["epochs=2", "batch_size=4", "model.input_size=[128,224]", "num_workers=0", "seed=3"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "ds"
    collect_dataset(load_stack(), out, 12, frames_per_scene=4, val_fraction=0.34, seed=2, show_progress=False)
    return out


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--quiet", "--config", str(CONFIG), f"data={data_dir}", f"out={out}", *SMALL]) == 0
    return out


def _meta(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]


def test_dataset_items_match_the_model_classes_and_augmentation_flips_boxes_with_the_mask(data_dir):
    plain = PerceptionDataset(data_dir, "train", input_size=(128, 224))
    flipped = PerceptionDataset(data_dir, "train", input_size=(128, 224), augment=Augment(1.0, 0.0, 0.0))
    for i in range(len(plain)):
        image, target = plain[i]
        assert image.shape == (3, 128, 224) and 0.0 <= image.min() and image.max() <= 1.0
        assert target["mask"].shape == (128, 224) and int(target["mask"].max()) < len(SEG_CLASSES)
        assert target["labels"].numel() == target["boxes"].shape[0] == target["center_ego"].shape[0]
        assert torch.all(target["labels"] < len(CLASSES))
        image_f, target_f = flipped[i]
        assert torch.allclose(image_f, image.flip(-1), atol=1e-6) and torch.equal(target_f["mask"], target["mask"].flip(-1))
        assert torch.allclose(target_f["boxes"][:, [2, 0]], 224 - target["boxes"][:, [0, 2]])


def test_a_training_crop_cuts_image_mask_and_boxes_alike_and_drops_boxes_mostly_outside(data_dir):
    plain = PerceptionDataset(data_dir, "train", input_size=(128, 224))
    dropped = 0
    for i in range(len(plain)):
        image, target = plain[i]
        rgb = (image * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, 3), as the dataset holds it
        mask = target["mask"].to(torch.uint8).numpy()
        for u in ([0.0, 0.0, 0.0], [0.0, 0.3, 0.7], [0.0, 0.999, 0.999]):
            image_c, boxes_c, mask_c, kept = _zoom_crop(rgb, target["boxes"], mask, (64, 112),
                                                        (1.0, 1.0), torch.tensor(u))
            y0, x0 = int(u[1] * (128 - 64 + 1)), int(u[2] * (224 - 112 + 1))
            assert np.array_equal(image_c, rgb[y0:y0 + 64, x0:x0 + 112])
            assert np.array_equal(mask_c, mask[y0:y0 + 64, x0:x0 + 112])
            boxes = target["boxes"] - torch.tensor([x0, y0, x0, y0])
            clipped = torch.stack([boxes[:, 0].clamp(0, 112), boxes[:, 1].clamp(0, 64),
                                   boxes[:, 2].clamp(0, 112), boxes[:, 3].clamp(0, 64)], dim=1)
            inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            keep = (inside >= CROP_KEEP * area).nonzero().squeeze(1)
            assert torch.equal(kept, keep) and torch.allclose(boxes_c, clipped[keep])
            dropped += len(boxes) - len(keep)
    assert dropped > 0  # boxes mostly outside a window go
    # through the dataset: the labels and positions follow the boxes kept
    cropped = PerceptionDataset(data_dir, "train", input_size=(128, 224),
                                augment=Augment(0.0, 0.0, 0.0, crop=(64, 112), scale=(0.9, 1.2)))
    for i in range(len(cropped)):
        image_c, target_c = cropped[i]
        assert image_c.shape == (3, 64, 112) and target_c["mask"].shape == (64, 112)
        n = target_c["boxes"].shape[0]
        assert target_c["labels"].shape == (n,) and target_c["center_ego"].shape == (n, 3)
        assert torch.all(target_c["boxes"] >= 0) and torch.all(target_c["boxes"][:, [2, 3]] <= torch.tensor([112, 64]))


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "training").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_training_recipe_loads_and_fits_its_architecture(path):
    config = load_train_config(path)
    model = build_model(config.model.architecture, input_size=tuple(config.model.input_size))
    assert model.architecture == config.model.architecture


def test_the_last_epochs_train_on_whole_frames_when_asked(data_dir):
    config = load_train_config(ROOT / "configs" / "training" / "crops640.yaml",
                               [f"data={data_dir}", "epochs=3", "augment.whole_frames_last=1"])
    sizes = []
    for epoch in range(3):
        dataset = PerceptionDataset(data_dir, "train", input_size=config.model.input_size,
                                    augment=epoch_augment(config, epoch), seed=0)
        dataset.epoch = epoch
        sizes.append(tuple(dataset[0][0].shape[-2:]))
    assert sizes == [(288, 512), (288, 512), (360, 640)]
    assert epoch_augment(config, 2).hflip == config.augment.hflip  # only the crop and zoom are dropped


def test_a_zoom_below_the_window_pads_the_mask_with_the_ignore_label(data_dir):
    ds = PerceptionDataset(data_dir, "train", input_size=(128, 224),
                           augment=Augment(0.0, 0.0, 0.0, crop=(128, 224), scale=(0.5, 0.5)))
    image, target = ds[0]
    assert image.shape == (3, 128, 224)
    assert torch.all(target["mask"][64:, :] == IGNORE_INDEX) and torch.all(target["mask"][:, 112:] == IGNORE_INDEX)
    assert torch.all(image[:, 64:, :] == 0) and torch.all(target["boxes"] <= torch.tensor([112, 64, 112, 64]))


def test_a_horizon_zoom_item_shows_the_band_the_stage_magnifies(data_dir):
    """With ``horizon_zoom`` a window item is the frame magnified as the stage's zoom reads it,
    the window's middle on the zoom's band (perception/zoom.py), its boxes scaled alike."""
    plain = PerceptionDataset(data_dir, "train", input_size=(180, 320))
    zoomed = PerceptionDataset(data_dir, "train", input_size=(180, 320),
                               augment=Augment(0.0, 0.0, 0.0, crop=(96, 160), horizon_zoom=1.0, horizon_zoom_scale=2.0))
    camera = next(iter(plain.cameras.values()))
    band = zoom_view(180, 320, scale_intrinsics(np.asarray(camera["K"]), 0.5, 0.5),
                     np.asarray(camera["T_ego_cam"]), (180, 320), TRAINING_ROWS, 2.0)
    top, bottom = band.top, band.bottom
    for i in range(2):
        image, target = plain[i]
        rgb = (image * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        big = cv2.resize(rgb, (640, 360), interpolation=cv2.INTER_LINEAR)
        item, item_target = zoomed[i]
        window = (item * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        # where the window was cut from the magnified frame
        spots = [(y, x) for y in range(0, 360 - 96 + 1) for x in range(0, 640 - 160 + 1)
                 if np.array_equal(big[y:y + 96, x:x + 160], window)]
        assert spots, f"item {i}: the window is not a piece of the frame magnified twice"
        y0, x0 = spots[0]
        assert abs(y0 + 48 - (top + bottom)) <= 96 / 8 + 1      # its middle row on the band's, doubled
        boxes = target["boxes"] * 2 - torch.tensor([x0, y0, x0, y0])
        inside = (boxes[:, 2] > 0) & (boxes[:, 0] < 160) & (boxes[:, 3] > 0) & (boxes[:, 1] < 96)
        assert len(item_target["boxes"]) <= int(inside.sum())


@pytest.mark.parametrize("attributes, expected", [
    ({"state": "red", "facing_camera": True}, "traffic_light_red"),
    ({"state": "green", "facing_camera": True}, "traffic_light_green"),
    ({"state": "red", "facing_camera": False}, None),  # lamps not visible: left out
    ({"state": "unknown", "facing_camera": True}, None),
])
def test_traffic_lights_take_their_state_only_when_it_can_be_seen(attributes, expected):
    index = class_index("traffic_light", attributes)
    assert (None if index is None else CLASSES[index]) == expected


def test_ground_point_inverts_the_camera_projection():
    camera = camera_record(load_stack())  # configs/stack.yaml's front camera
    K, T = np.array(camera["K"]), np.array(camera["T_ego_cam"])
    point = np.array([12.0, -2.0, 0.0, 1.0])  # on the ground, ego frame
    cam = np.linalg.inv(T) @ point
    u, v = (K @ cam[:3])[:2] / cam[2]
    assert np.allclose(ground_point(u, v, K, T), point[:2], atol=1e-3)
    # A box whose bottom-centre outline is that pixel: edges count half a pixel past pixel
    # centres, and a camera's silhouettes reach its outline margin past the outline.
    m = 0.5
    box = np.array([u - 20, v - 30, u + 20, v]) + 0.5 + np.array([-m, -m, m, m])
    # the vehicle centre is put the contact depth behind its lowest point, along the ray
    depth = load_stack().perception.learned.contact_depth_m["vehicle"]
    centre = centre_from_box(box, depth, K, T, m)
    assert np.isclose(np.linalg.norm(centre - point[:2]), depth, atol=1e-3)
    assert np.linalg.norm(centre - T[:2, 3]) > np.linalg.norm(point[:2] - T[:2, 3])



def test_evaluation_takes_the_recorded_camera_else_the_stack_configs(data_dir, tmp_path):
    """`collect` records the stack config's camera; a split without a record is read with the
    camera of the loaded config passed in."""
    recorded = json.loads((data_dir / "annotations" / "val.json").read_text())
    built = camera_record(load_stack())
    assert np.allclose(built["K"], recorded["camera"]["K"], atol=1e-6)
    assert np.allclose(built["T_ego_cam"], recorded["camera"]["T_ego_cam"], atol=1e-6)
    assert (built["width"], built["height"]) == (recorded["camera"]["width"], recorded["camera"]["height"])
    bare = tmp_path / "bare"
    (bare / "annotations").mkdir(parents=True)
    for folder in ("images", "semantic"):
        (bare / folder).symlink_to(data_dir / folder)
    (bare / "annotations" / "val.json").write_text(json.dumps({k: v for k, v in recorded.items() if k != "camera"}))
    model = build_model(input_size=(128, 224))
    result = evaluate_model(model, bare, "val", config=load_stack(), limit=2)
    assert result["frames"] == 2 and set(result["position_error_median_m"]) == {"vehicle", "pedestrian"}

def test_training_lowers_the_loss_and_writes_checkpoints_with_their_meta(trained, data_dir):
    meta = _meta(trained / "epoch_002.pt")
    assert meta["epoch"] == 2 and meta["losses"][1] < meta["losses"][0]
    assert meta["classes"] == list(CLASSES) and meta["seg_classes"] == list(SEG_CLASSES)
    assert meta["input_size"] == [128, 224] and meta["architecture"] == "mtl_mbv3small_fpn96_s48_seg4"
    assert meta["training_command"].startswith("stagepilot train --config ") and "epochs=2" in meta["training_command"]
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert meta["data_manifest"]["frames"] == manifest["frames"] and len(meta["data_manifest"]["sha256"]) == 64
    assert meta["data_manifest"]["content_sha256"] == manifest["content_sha256"]  # the files as collect wrote them
    assert meta["resume"]["optimizer"]["state"]  # AdamW moments, for --resume
    final = _meta(trained / "model.pt")
    assert "resume" not in final and set(final["metrics"]["val"]["ap50"]) == set(CLASSES)


def test_resume_continues_the_epoch_count_from_the_checkpoint(trained, data_dir):
    before = _meta(trained / "epoch_002.pt")
    args = ["train", "--quiet", "--config", str(CONFIG), "--resume", str(trained / "epoch_002.pt"),
            f"data={data_dir}", f"out={trained}", *SMALL, "epochs=3", "val_split=null"]
    assert main(args) == 0
    meta = _meta(trained / "epoch_003.pt")
    assert meta["epoch"] == 3 and meta["losses"][:2] == before["losses"] and len(meta["losses"]) == 3
    train_images = len(json.loads((data_dir / "annotations" / "train.json").read_text())["images"])
    assert train_images == 8 * len(load_stack().sim.cameras)  # every rig camera's image of 8 frames
    assert meta["resume"]["scheduler"]["last_epoch"] == 3 * math.ceil(train_images / 4)  # batch 4
    assert "--resume" in meta["training_command"]


def test_weight_averaging_keeps_the_mean_of_the_last_epochs_and_survives_a_resume(data_dir, tmp_path):
    """``average_last``: the final weights are the mean of the averaged epochs' parameters (their
    BatchNorm statistics re-estimated); a run stopped after its first averaged epoch and resumed
    ends on the same mean as one that was not stopped."""
    common = ["train", "--quiet", "--config", str(CONFIG), f"data={data_dir}", *SMALL, "epochs=3",
              "schedule=cyclic", "average_last=2", "val_split=null", "limit_frames=4"]
    assert main([*common, f"out={tmp_path / 'a'}"]) == 0
    params = [name for name, _ in build_model(input_size=(128, 224)).named_parameters()]
    weights = {e: torch.load(tmp_path / "a" / f"epoch_00{e}.pt", weights_only=True)["state_dict"] for e in (1, 2, 3)}
    mean = _meta(tmp_path / "a" / "epoch_003.pt")["resume"]["average"]
    assert mean["n"] == 2 and "average" not in _meta(tmp_path / "a" / "epoch_001.pt")["resume"]
    for name in params:
        assert torch.allclose(mean["state"][name], (weights[2][name] + weights[3][name]) / 2, atol=1e-6)
    assert any(not torch.equal(weights[2][name], weights[3][name]) for name in params)  # the epochs differ
    final = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    for name in params:
        assert torch.allclose(final[name], mean["state"][name])
    # stopped after epoch 2 (its first averaged one), then resumed
    assert main([*common, f"out={tmp_path / 'b'}", "--resume", str(tmp_path / "a" / "epoch_002.pt")]) == 0
    resumed = _meta(tmp_path / "b" / "epoch_003.pt")["resume"]["average"]
    assert resumed["n"] == 2
    for name in params:
        assert torch.allclose(resumed["state"][name], mean["state"][name], atol=1e-5)


def test_eval_prints_one_json_object_with_every_metric_in_range(trained, data_dir, capsys):
    capsys.readouterr()
    assert main(["eval", "perception", "--checkpoint", str(trained / "model.pt"), "--data", str(data_dir),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["ap50"]) == set(result["ap50_95"]) == set(CLASSES)
    assert set(result["iou"]) == set(SEG_CLASSES)
    assert set(result["position_error_median_m"]) == {"vehicle", "pedestrian"}
    for value in [*result["ap50"].values(), *result["ap50_95"].values(), *result["iou"].values(), result["miou"]]:
        assert value is None or 0.0 <= value <= 1.0
    assert any(v is not None for v in result["ap50"].values()) and result["miou"] is not None
    for value in result["position_error_median_m"].values():
        assert value is None or value >= 0.0
    coco = json.loads((data_dir / "annotations" / "val.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for kind, bands in result["recall_by_height"].items():  # every box of the split is in one band
        assert sum(b["boxes"] for b in bands.values()) == sum(names[a["category_id"]] == kind
                                                            for a in coco["annotations"])
        assert all(b["recall"] is None or 0.0 <= b["recall"] <= 1.0 for b in bands.values())


@pytest.mark.parametrize("override, key", [("optimiser=adam", "optimiser"), ("model.depth=3", "model.depth"),
                                           ("epochs=0", "epochs"), ("augment.scale=[1.2,0.8]", "augment"),
                                           ("augment.crop=[16,16]", "augment"),
                                           ("augment.whole_frames_last=21", "augment.whole_frames_last")])
def test_a_bad_training_config_key_is_rejected_by_name(override, key, data_dir, tmp_path, capsys):
    assert main(["train", "--config", str(CONFIG), f"data={data_dir}", f"out={tmp_path}", override]) == 2
    assert f"{key}:" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.pt"))

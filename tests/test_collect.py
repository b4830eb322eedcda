"""`stagepilot collect`: a small dataset, its boxes against its semantic masks, its splits and
its determinism."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from stagepilot.core.maps import find_map
from stagepilot.core.roadmap import MapError
from stagepilot.core.config import StackConfig
from stagepilot.pipeline.collect import TRAIN_MAPS, TRAIN_TOWN, TRAIN_YELLOW_S, VAL_TOWN
from stagepilot.pipeline.cli import main

ARGS = ["--frames", "12", "--frames-per-scene", "4", "--val-fraction", "0.34", "--seed", "2", "--depth", "--quiet"]
TAGS = {"vehicle": 14, "pedestrian": 12, "static_obstacle": 20}
SKY = 11


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("collect") / "ds"
    assert main(["collect", "--out", str(out), *ARGS]) == 0
    return out


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"{split}.json").read_text())


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_coco_files_hold_every_frame_with_its_files(dataset_dir):
    manifest = _manifest(dataset_dir)
    assert manifest["frames"] == {"train": 8, "val": 4}
    for split, count in manifest["frames"].items():
        coco = _coco(dataset_dir, split)
        assert [c["name"] for c in coco["categories"]] == ["vehicle", "pedestrian", "traffic_light", "static_obstacle"]
        rig = list(coco["cameras"])
        assert rig == ["front", "front_left", "front_right"] and coco["camera"]["name"] == "front"
        assert len(coco["images"]) == count * len(rig) == manifest["splits"][split]["images"]
        assert [i["camera"] for i in coco["images"]] == rig * count  # every camera of every frame
        for image in coco["images"]:
            rgb = cv2.imread(str(dataset_dir / image["file_name"]))
            semantic = cv2.imread(str(dataset_dir / image["semantic_file"]), cv2.IMREAD_UNCHANGED)
            depth = cv2.imread(str(dataset_dir / image["depth_file"]), cv2.IMREAD_UNCHANGED)
            assert rgb.shape == (360, 640, 3) and semantic.shape == (360, 640) and semantic.dtype == np.uint8
            assert depth.dtype == np.uint16 and np.all(depth[semantic == SKY] == 65535)
            assert np.all(depth[semantic == 1] < 20000)  # road: nearer than 200 m
        ids = [a["id"] for a in coco["annotations"]]
        assert ids == list(range(1, len(ids) + 1))


@pytest.mark.parametrize("category", ["vehicle", "pedestrian", "static_obstacle"])
def test_boxes_lie_in_the_image_tightly_around_pixels_of_their_class(dataset_dir, category):
    fractions = []
    for split in ("train", "val"):
        coco = _coco(dataset_dir, split)
        cat_id = next(c["id"] for c in coco["categories"] if c["name"] == category)
        images = {i["id"]: i for i in coco["images"]}
        for ann in (a for a in coco["annotations"] if a["category_id"] == cat_id):
            image = images[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
            assert w >= 4 and h >= 4 and ann["visible_fraction"] >= 0.25
            crop = cv2.imread(str(dataset_dir / image["semantic_file"]), cv2.IMREAD_UNCHANGED)[y:y + h, x:x + w]
            mine = crop == TAGS[category]
            # The box is the bounding box of the object's visible pixels: each edge touches one.
            assert mine[0].any() and mine[-1].any() and mine[:, 0].any() and mine[:, -1].any()
            fractions.append(mine.mean())
    assert fractions, f"no {category} in the test dataset: pick another seed"
    # Limbs and occluders leave gaps, so a few boxes fall under half; none by much, and not typically.
    assert min(fractions) > 0.2
    assert np.median(fractions) > 0.5


def test_traffic_light_boxes_frame_the_housing_and_carry_the_state(dataset_dir):
    lights = [(split, a) for split in ("train", "val") for a in _coco(dataset_dir, split)["annotations"]
              if a["category_id"] == 3]
    for split, ann in lights:
        assert ann["attributes"]["state"] in ("red", "yellow", "green")
        assert isinstance(ann["attributes"]["facing_camera"], bool)
        image = next(i for i in _coco(dataset_dir, split)["images"] if i["id"] == ann["image_id"])
        x, y, w, h = ann["bbox"]
        crop = cv2.imread(str(dataset_dir / image["semantic_file"]), cv2.IMREAD_UNCHANGED)[y:y + h, x:x + w]
        assert (crop == 7).mean() >= 0.3


def test_annotations_carry_ego_position_track_and_visibility(dataset_dir):
    coco = _coco(dataset_dir, "train")
    camera_of = {i["id"]: i["camera"] for i in coco["images"]}
    sides = set()
    for ann in coco["annotations"]:
        pose = np.asarray(coco["cameras"][camera_of[ann["image_id"]]]["T_ego_cam"])
        depth = (np.linalg.inv(pose) @ np.array([*ann["center_ego"], 1.0]))[2]
        assert depth > 0.0 and ann["center_ego"][2] > 0.0  # in front of its camera, box centre above the ground
        assert isinstance(ann["track_id"], int) and 0.25 <= ann["visible_fraction"] <= 1.0
        sides.add(camera_of[ann["image_id"]])
    assert len(sides) >= 2, "the side cameras' images carry boxes too"


def test_train_and_val_never_share_a_map_seed_pair_or_a_seed(dataset_dir):
    splits = _manifest(dataset_dir)["splits"]
    pairs = {name: {(s["map"], s["seed"]) for s in split["scenes"]} for name, split in splits.items()}
    assert pairs["train"].isdisjoint(pairs["val"])
    assert set(splits["train"]["seeds"]).isdisjoint(splits["val"]["seeds"])
    assert set(splits["train"]["maps"]) <= {*TRAIN_MAPS, TRAIN_TOWN} and VAL_TOWN not in splits["train"]["maps"]
    try:
        find_map(VAL_TOWN)
    except MapError:
        assert "absent" in splits["val"]["note"]
    else:
        assert splits["val"]["maps"] == [VAL_TOWN] and "note" not in splits["val"]


def test_manifest_lists_seeds_maps_and_provenance(dataset_dir):
    manifest = _manifest(dataset_dir)
    assert manifest["command"].startswith("stagepilot collect --out ")
    assert manifest["seed"] == 2 and manifest["stagepilot_version"] and "commit" in manifest["git"]
    for split in ("train", "val"):
        images = _coco(dataset_dir, split)["images"]
        entry = manifest["splits"][split]
        assert entry["seeds"] == sorted({i["seed"] for i in images})
        assert entry["maps"] == sorted({i["map"] for i in images})
        for scene in entry["scenes"]:
            assert scene["scenario"]["seed"] == scene["seed"] and scene["scenario"]["map"] == scene["map"]


def test_training_scenes_hold_yellow_longer_and_validation_keeps_the_stack_timing(dataset_dir):
    splits = _manifest(dataset_dir)["splits"]
    train = [scene["yellow_s"] for scene in splits["train"]["scenes"]]
    assert all(TRAIN_YELLOW_S[0] <= y <= TRAIN_YELLOW_S[1] for y in train) and len(set(train)) == len(train)
    default = StackConfig().traffic.traffic_lights.yellow_s
    assert [scene["yellow_s"] for scene in splits["val"]["scenes"]] == [default] * len(splits["val"]["scenes"])


def test_first_yellow_starts_the_first_light_of_training_scenes_yellow_and_changes_nothing_else():
    """`--first-yellow 1`: every training scene's scenario is the seed's own plus its first light
    on the route starting yellow; validation scenes are untouched; the share draws on its own stream."""
    from dataclasses import replace

    from stagepilot.pipeline.collect import plan_scenes
    from stagepilot.pipeline.collect_scenes import sample_scenario

    common = {"interval_s": 0.5, "out": Path("unused"), "config": StackConfig(), "image_format": "jpg", "depth": False}
    for split in ("train", "val"):
        jobs, _ = plan_scenes(split, 20, 10, 3, **common)
        for job in jobs:
            plain, params = sample_scenario(job, 0)
            yellow, yellow_params = sample_scenario(replace(job, first_yellow=1.0), 0)
            lights = yellow_params.pop("traffic_lights", None)
            assert yellow_params == params
            if split == "train":
                assert lights is not None and yellow.traffic_lights.first_light == "yellow"
            else:
                assert lights is None and yellow.traffic_lights.first_light == "auto"
            assert plain.traffic_lights.first_light == "auto"


def test_crowd_adds_queues_walkers_and_parked_cars_to_training_scenes_and_changes_nothing_else():
    """`--crowd 1`: every training scene is the seed's own plus queued cars far down the route,
    walkers and parked cars; its weather and everything else stay the seed's; validation scenes
    are untouched; the scenario still validates, and a crowded scene renders (the manifest marks it)."""
    from dataclasses import replace

    from stagepilot.pipeline.collect import plan_scenes
    from stagepilot.pipeline.collect_scenes import CROWD_QUEUE_START_M, crowded, sample_scenario

    common = {"interval_s": 0.5, "out": Path("unused"), "config": StackConfig(), "image_format": "jpg", "depth": False}
    added = {"vehicle": 0, "pedestrian": 0, "static": 0}
    for split in ("train", "val"):
        jobs, _ = plan_scenes(split, 200, 10, 3, **common)
        for job in jobs:
            _, params = sample_scenario(job, 0)
            crowd, crowd_params = sample_scenario(replace(job, crowd=1.0), 0)
            assert crowded(replace(job, crowd=1.0), 0) == (split == "train") and not crowded(job, 0)
            extra = crowd_params["actors"][len(params["actors"]):]
            assert crowd_params["actors"][:len(params["actors"])] == params["actors"]
            assert {**crowd_params, "actors": params["actors"]} == params
            assert len(crowd.actors) == len(crowd_params["actors"])
            if split == "val":
                assert extra == []
            for actor in extra:
                added[actor["type"]] += 1
    # 20 training scenes: queues of several cars each, and more walkers and parked cars
    assert added["vehicle"] >= 30 and added["pedestrian"] >= 20 and added["static"] >= 10, added
    assert CROWD_QUEUE_START_M >= 30.0  # the queues are far cars


def test_a_crowded_scene_renders_and_the_manifest_says_so(tmp_path):
    out = tmp_path / "crowd"
    assert main(["collect", "--out", str(out), "--frames", "3", "--frames-per-scene", "3", "--split", "train",
                 "--seed", "6", "--crowd", "1", "--quiet"]) == 0
    manifest = _manifest(out)
    assert manifest["crowd"] == 1.0 and "--crowd 1.0" in manifest["command"]
    (scene,) = manifest["splits"]["train"]["scenes"]
    assert scene["crowded"] is True and manifest["splits"]["train"]["annotations"] > 0


def test_the_content_hash_names_the_files_not_the_commit(dataset_dir, tmp_path):
    """The manifest's content_sha256 covers every file but the manifest: a copy with another
    manifest (another commit, command) keeps it; one changed label or image changes it."""
    import shutil

    from stagepilot.perception.dataset import content_sha256

    manifest = _manifest(dataset_dir)
    assert content_sha256(dataset_dir) == manifest["content_sha256"]
    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "git": {"commit": "another"}}))
    assert content_sha256(copy) == manifest["content_sha256"]
    image = next((copy / "images").rglob("*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")
    assert content_sha256(copy) != manifest["content_sha256"]


def test_the_same_command_writes_the_same_bytes(dataset_dir, tmp_path):
    again = tmp_path / "ds"
    assert main(["collect", "--out", str(again), *ARGS]) == 0
    files = sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for relative in files:
        if relative.name != "manifest.json":
            assert (dataset_dir / relative).read_bytes() == (again / relative).read_bytes(), relative
    first, second = _manifest(dataset_dir), _manifest(again)
    first.pop("command"), second.pop("command")  # names the output folder
    assert first == second


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "--seed -1"),
    (["--interval", "0"], "--interval 0"),
    (["--first-yellow", "1.5"], "--first-yellow 1.5"),
    (["--crowd", "-0.1"], "--crowd -0.1"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["collect", "--out", str(tmp_path / "x"), "--frames", "4", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stagepilot: error:") and message in err and "\n" not in err


def test_an_existing_dataset_is_not_overwritten(dataset_dir, capsys):
    assert main(["collect", "--out", str(dataset_dir), "--frames", "4", "--quiet"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err

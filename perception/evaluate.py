"""`stagepilot eval perception`: detection AP, segmentation IoU and ground-plane position error.

    stagepilot eval perception --checkpoint CKPT --data DIR [--split val] [--json]

Prints one JSON object:
- ``ap50`` / ``ap50_95``: per class, torchmetrics ``MeanAveragePrecision(box_format="xyxy",
  class_metrics=True)`` (pycocotools backend) with iou_thresholds [0.5] and the COCO
  0.50:0.05:0.95 set; ``map50`` / ``map50_95`` their means. A class without a ground-truth
  box in the split is ``null`` (COCO's -1), not 0. Boxes are compared in the camera's pixels.
  Traffic lights that do not face the camera are not ground truth (perception/data.py).
- ``iou``: per seg class, torchmetrics ``MulticlassJaccardIndex(average=None)`` at the model's
  input size; ``null`` where the class is in neither the prediction nor the ground truth.
  ``miou`` is the mean over road, road_line, sidewalk, vehicle, pedestrian (those not null).
- ``position_error_median_m``: for vehicles and pedestrians whose ground-truth centre lies
  within 30 m (ego xy), the detection of the same class with the highest IoU (>= 0.5, score
  >= ``score_threshold``, each used once) is placed on the ground: the bottom-centre of its box
  (in K's pixel coordinates, less the camera's outline margin: perception/geometry.py) is
  back-projected through K and T_ego_cam onto z = 0 (ego frame, the ground under the ego).
  That is the object's lowest visible point, so the centre estimate adds the stage's
  ``contact_depth_m`` along the horizontal viewing ray (vehicle 1.73 m: a car seen from behind
  touches the road at its rear tyres, 0.385 of its length behind its centre; pedestrian
  0.25 m). The error is the xy distance to the ground-truth centre; its median per class is
  reported (``null`` with no match), with ``position_matches`` the matched / eligible counts.
  The camera is the annotation file's own record (``collect`` writes one); a file without one
  is read with the camera of the stack config passed in (``camera_record``: ``sim.cameras``).
  A record without ``outline_margin_px``, and a camera built from the stack config (which has
  no such key), are taken to have none (``UNRECORDED_OUTLINE_MARGIN_PX``, 0 px: CameraImage's
  default, a camera that samples pixel centres).
- ``recall_by_height``: for vehicles and pedestrians, per band of ground-truth box height in
  camera pixels (``HEIGHT_BANDS_PX``), the number of boxes and the share found by a detection of
  the same class (score >= ``score_threshold``, IoU >= 0.5, each detection used once): where
  the accuracy is lost, which AP alone does not say.
- ``horizon_zoom``: the detections are the stage's, the whole frame's joined with those of its
  horizon band read again magnified, as the stack config sets it (perception/zoom.py; the
  band's pixels are scaled as the stage scales them, 8-bit with OpenCV); ``null`` when off
  (``zoom=False``, as training's own evaluation runs: the network alone).
- ``box_refiner``: the refiner that then moved the small vehicle boxes' edges, as the stage does
  (perception/refine.py; ``box_refiner`` of the stack config), and why; ``null`` when none ran
  (``zoom=False`` runs none either).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from stagepilot.perception import dataset as dataset_files
from stagepilot.core.camera import camera_pose, pinhole_intrinsics
from stagepilot.perception import geometry
from stagepilot.perception.checkpoint import load_checkpoint
from stagepilot.perception.data import PerceptionDataset, collate
from stagepilot.perception.labels import IGNORE_INDEX
from stagepilot.perception.network import PerceptionNet
from stagepilot.perception.refine import Refinement, resolve_refiner
from stagepilot.perception.runner import scale_frame
from stagepilot.perception.zoom import ZOOM_CLASSES, merge, zoom_of, zoom_view
from stagepilot.core.config import ConfigError, StackConfig
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou
from tqdm import tqdm

MIOU_CLASSES = ("road", "road_line", "sidewalk", "vehicle", "pedestrian")
POSITION_CLASSES = ("vehicle", "pedestrian")
POSITION_RANGE_M = 30.0
MATCH_IOU = 0.5
AP_SCORE_THRESHOLD = 0.05  # AP integrates over scores: keep low-confidence detections
HEIGHT_BANDS_PX = (0, 12, 20, 32, 64)  # lower edges of the recall bands [camera px]; the last is open
CAMERA = "front"  # the camera `collect` records
UNRECORDED_OUTLINE_MARGIN_PX = 0.0  # [px] assumed where a camera records none (module docstring)


def camera_record(config: StackConfig, name: str = CAMERA, *,
                  outline_margin_px: float = UNRECORDED_OUTLINE_MARGIN_PX) -> dict[str, Any]:
    """The stack config's camera ``name`` (``sim.cameras``) as a dataset camera record: K (3, 3),
    T_ego_cam (4, 4), size and outline margin, as perception/dataset.py ``camera_record``."""
    cam = config.sim.cameras.get(name)
    if cam is None:
        raise ConfigError(f"sim.cameras: evaluation needs a camera named {name!r}")
    K = pinhole_intrinsics(cam.width, cam.height, cam.fov_deg)
    T = camera_pose(cam.x, cam.y, cam.z, cam.roll_deg, cam.pitch_deg, cam.yaw_deg)
    return dataset_files.camera_record(name, cam.width, cam.height, K, T, outline_margin_px)


def _cameras(frames: PerceptionDataset, config: StackConfig) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Name -> (K, T_ego_cam, outline margin px) of each camera that took the split's frames: those
    its annotation file records, else the stack config's main camera (under the name "")."""
    records = frames.cameras or {"": camera_record(config)}
    return {name: (np.asarray(camera["K"], dtype=float), np.asarray(camera["T_ego_cam"], dtype=float),
                   float(camera.get("outline_margin_px", UNRECORDED_OUTLINE_MARGIN_PX)))
            for name, camera in records.items()}


def _null(value: float) -> float | None:
    return None if value is None or value < 0 or math.isnan(value) else round(float(value), 4)


def ap50_metric() -> MeanAveragePrecision:
    """COCO AP at IoU 0.5, per class (pycocotools)."""
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, iou_thresholds=[0.5],
                                backend="pycocotools")


@torch.no_grad()
def evaluate_model(model: PerceptionNet, data: str | Path, split: str = "val", *, device: str | torch.device = "cpu",
                   batch_size: int = 8, score_threshold: float = 0.3, num_workers: int = 0,
                   show_progress: bool = False, limit: int | None = None, config: StackConfig,
                   pooled_ap50: MeanAveragePrecision | None = None, zoom: bool = True,
                   refinement: Refinement | None = None) -> dict[str, Any]:
    """Run `model` over a split (its first `limit` frames) -> the metrics dict described in the
    module docstring. ``config``: the loaded stack config: its camera where the split's
    annotation file records none, and perception's contact depths for positions.
    ``pooled_ap50``: a metric that also takes every frame's detections, to pool AP over several
    datasets (a class too rare in one set for its AP to mean much, such as yellow lights).
    ``zoom``: read the horizon band as the stage does (``perception.learned.horizon_zoom``).
    ``refinement``: the box refiner the stage runs after that (None: none)."""
    device = torch.device(device)
    zoom_setting = zoom_of(config.perception.learned) if zoom else None
    dataset = PerceptionDataset(data, split, input_size=tuple(model.input_size), limit=limit)
    cameras = _cameras(dataset, config)
    main_camera = (dataset.camera or {}).get("name")  # the camera `collect` records as the rig's main one
    classes, seg_classes = list(model.classes), list(model.seg_classes)
    ap50 = ap50_metric()
    ap = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools")
    jaccard = MulticlassJaccardIndex(num_classes=len(seg_classes), average=None, ignore_index=IGNORE_INDEX)
    present = torch.zeros(len(seg_classes), dtype=torch.bool)
    errors: dict[str, list[float]] = {k: [] for k in POSITION_CLASSES}
    found = {k: np.zeros((2, len(HEIGHT_BANDS_PX)), dtype=int) for k in POSITION_CLASSES}  # [found, total]
    eligible = {k: 0 for k in POSITION_CLASSES}
    was_training = model.training
    model.eval().to(device)
    amp = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    for images, targets in tqdm(loader, desc=f"eval {split}", unit="batch", disable=not show_progress, leave=False):
        images = images.to(device).contiguous(memory_format=torch.channels_last)  # (B, 3, H, W)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(images)
        dets = stage_detections(model, images, outputs, targets, cameras, zoom_setting, amp, main_camera,
                                config.perception.learned.nms_iou, refinement)
        preds, gts = [], []
        for det, tgt in zip(dets, targets):
            scale = tgt["scale"].repeat(2)                                        # (4,) sx, sy, sx, sy
            boxes = det["boxes"].cpu().float() / scale                            # (N, 4) camera px
            gt_boxes = tgt["boxes"] / scale                                       # (M, 4) camera px
            preds.append({"boxes": boxes, "scores": det["scores"].cpu().float(), "labels": det["labels"].cpu()})
            gts.append({"boxes": gt_boxes, "labels": tgt["labels"]})
            seg, mask = det["seg"].cpu(), tgt["mask"]                             # (H, W) each
            jaccard.update(seg[None], mask[None])
            valid = mask != IGNORE_INDEX
            present |= torch.bincount(seg[valid], minlength=len(seg_classes)).bool()
            present |= torch.bincount(mask[valid], minlength=len(seg_classes)).bool()
            _position_errors(boxes, det["scores"].cpu(), det["labels"].cpu(), gt_boxes, tgt, classes,
                             score_threshold, cameras.get(tgt["camera"]) or next(iter(cameras.values())),
                             config.perception.learned.contact_depth_m,
                             errors, eligible)
            _recall_by_height(boxes, det["scores"].cpu(), det["labels"].cpu(), gt_boxes, tgt["labels"], classes,
                              score_threshold, found)
        ap50.update(preds, gts)
        ap.update(preds, gts)
        if pooled_ap50 is not None:
            pooled_ap50.update(preds, gts)
    if was_training:
        model.train()
    r50, r = ap50.compute(), ap.compute()
    iou = jaccard.compute()
    miou_values = [float(iou[seg_classes.index(c)]) for c in MIOU_CLASSES
                   if c in seg_classes and present[seg_classes.index(c)]]
    return {
        "split": split,
        "frames": len(dataset),
        "map50": _null(float(r50["map"])),
        "map50_95": _null(float(r["map"])),
        "ap50": per_class_ap(r50, classes),
        "ap50_95": per_class_ap(r, classes),
        "iou": {c: (round(float(iou[i]), 4) if present[i] else None) for i, c in enumerate(seg_classes)},
        "miou": round(float(np.mean(miou_values)), 4) if miou_values else None,
        "position_error_median_m": {k: (round(float(np.median(v)), 3) if v else None) for k, v in errors.items()},
        "position_matches": {k: {"matched": len(errors[k]), "eligible": eligible[k]} for k in POSITION_CLASSES},
        "position_range_m": POSITION_RANGE_M,
        "recall_by_height": {k: {_band(i): {"boxes": int(v[1, i]), "recall": (round(float(v[0, i] / v[1, i]), 3)
                                                                            if v[1, i] else None)}
                                 for i in range(len(HEIGHT_BANDS_PX))} for k, v in found.items()},
        "score_threshold": score_threshold,
        "horizon_zoom": ({"magnification": zoom_setting[0], "rows": zoom_setting[1], "width": zoom_setting[2]}
                         if zoom_setting else None),
        "box_refiner": refinement.describe() if refinement is not None else None,
    }


def stage_detections(model: PerceptionNet, images: Tensor, outputs: dict, targets: list[dict], cameras: dict,
                     zoom_setting: tuple[float, int, float] | None, amp: bool, main: str | None, nms_iou: float,
                     refinement: Refinement | None = None) -> list[dict[str, Tensor]]:
    """A batch's raw outputs -> each frame's detections as the stage makes them: decoded, joined
    with the horizon band's where ``zoom_setting`` is set, the small vehicle boxes then refined
    where ``refinement`` is set. Boxes in the model's input pixels."""
    dets = model.decode(outputs, score_threshold=AP_SCORE_THRESHOLD)
    if zoom_setting is not None:
        dets = _with_zoom(model, images, dets, targets, cameras, zoom_setting, amp, main, nms_iou)
    if refinement is not None:
        ids = [model.classes.index(c) for c in refinement.classes if c in model.classes]
        dets = [{**det, "boxes": refinement.apply(images[i], det["boxes"], det["scores"], det["labels"], ids)}
                for i, det in enumerate(dets)]
    return dets


def _with_zoom(model: PerceptionNet, images: Tensor, dets: list[dict[str, Tensor]], targets: list[dict],
               cameras: dict, setting: tuple[float, int, float], amp: bool, main: str | None,
               nms_iou: float) -> list[dict[str, Tensor]]:
    """The detections of each frame of the ``main`` camera (None: every frame) joined with its
    horizon band's (perception/zoom.py), in the model's pixels, as the stage joins them.
    ``images``: the batch (B, 3, H, W) at the model's input size. Where that is the camera's own
    size (the shipped model's), the band's pixels and boxes are the stage's; at another input
    size the band is cut from the frame scaled to it, and the zoom's pixel limits count in its
    pixels, not the camera's."""
    _, _, H, W = images.shape
    bands: dict[tuple, list[int]] = {}
    for i, tgt in enumerate(targets):
        if main is not None and tgt["camera"] not in (main, ""):
            continue  # the stage zooms its main camera only
        K, T, _ = cameras.get(tgt["camera"]) or next(iter(cameras.values()))
        sx, sy = (float(v) for v in tgt["scale"])
        band = zoom_view(H, W, geometry.scale_intrinsics(K, sx, sy), T, (H, W), rows=setting[1], scale=setting[0],
                         width_share=setting[2])
        if band is not None:
            bands.setdefault(band, []).append(i)
    out = list(dets)
    taken = [model.classes.index(c) for c in ZOOM_CLASSES if c in model.classes]
    for band, idx in bands.items():
        (h, w), top, left = band.size, band.top, band.left
        pixels = (images[idx, :, top:band.bottom, left:band.right].mul(255.0).round_().to(torch.uint8)
                  .permute(0, 2, 3, 1).cpu().numpy())
        zoomed = np.stack([scale_frame(p, (h, w)) for p in pixels])  # as the stage's runner scales it
        x = torch.from_numpy(zoomed).permute(0, 3, 1, 2).float().div_(255.0).to(images.device)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            raw = model(x.contiguous(memory_format=torch.channels_last))
        sx, sy = (band.right - left) / w, (band.bottom - top) / h
        scale = torch.tensor([sx, sy, sx, sy], device=images.device)
        shift = torch.tensor([left, top, left, top], dtype=torch.float32, device=images.device)
        for i, band_det in zip(idx, model.decode(raw, score_threshold=AP_SCORE_THRESHOLD, with_seg=False)):
            boxes, scores, labels = merge((dets[i]["boxes"], dets[i]["scores"], dets[i]["labels"]),
                                          (band_det["boxes"].float() * scale + shift, band_det["scores"],
                                           band_det["labels"]), band, nms_iou, taken)
            out[i] = {**dets[i], "boxes": boxes, "scores": scores, "labels": labels}
    return out


def per_class_ap(result: dict[str, torch.Tensor], classes: list[str]) -> dict[str, float | None]:
    """A computed MeanAveragePrecision -> {class: AP} (None for a class with no boxes)."""
    values = {c: None for c in classes}
    ids = result["classes"].reshape(-1).tolist()
    per = result["map_per_class"].reshape(-1).tolist()
    for cid, value in zip(ids, per):
        if 0 <= int(cid) < len(classes):
            values[classes[int(cid)]] = _null(value)
    return values


def _band(i: int) -> str:
    low = HEIGHT_BANDS_PX[i]
    return f"{low}-{HEIGHT_BANDS_PX[i + 1]}px" if i + 1 < len(HEIGHT_BANDS_PX) else f">={low}px"


def _greedy_match(boxes, scores, labels, gt_boxes, gt_labels, score_threshold, gt_order) -> dict[int, Tensor]:
    """Ground-truth index -> the box (4,) of the detection it is matched to. Ground truths take
    their turn in ``gt_order``; each takes the unused detection of its class (score >=
    ``score_threshold``) with the highest IoU, at least MATCH_IOU."""
    keep = scores >= score_threshold
    order = scores[keep].argsort(descending=True)
    boxes, labels = boxes[keep][order], labels[keep][order]
    used = torch.zeros(len(boxes), dtype=torch.bool)
    ious = box_iou(gt_boxes, boxes) if len(boxes) and len(gt_boxes) else torch.zeros(len(gt_boxes), len(boxes))
    matches = {}
    for j in gt_order:
        candidates = (labels == int(gt_labels[j])) & ~used & (ious[j] >= MATCH_IOU)
        if candidates.any():
            best = int(torch.where(candidates, ious[j], torch.tensor(-1.0)).argmax())
            used[best] = True
            matches[j] = boxes[best]
    return matches


def _recall_by_height(boxes, scores, labels, gt_boxes, gt_labels, classes, score_threshold, found) -> None:
    """Count, per class and height band, the ground-truth boxes and those a detection finds."""
    heights = (gt_boxes[:, 3] - gt_boxes[:, 1]).tolist()
    counted = [j for j in range(len(gt_boxes)) if classes[int(gt_labels[j])] in found]
    counted.sort(key=lambda j: -heights[j])  # larger boxes pick first
    matches = _greedy_match(boxes, scores, labels, gt_boxes, gt_labels, score_threshold, counted)
    for j in counted:
        band = int(np.searchsorted(HEIGHT_BANDS_PX, heights[j], side="right")) - 1
        kind = classes[int(gt_labels[j])]
        found[kind][1, band] += 1
        found[kind][0, band] += j in matches


def _position_errors(boxes, scores, labels, gt_boxes, target, classes, score_threshold, camera, contact_depth_m,
                     errors, eligible) -> None:
    """Match each near ground-truth vehicle / pedestrian to one detection; collect the xy errors [m]
    of the centre the stage would place from the box (``contact_depth_m`` per class)."""
    gt_labels, centres = target["labels"], target["center_ego"]
    near = [j for j, label in enumerate(gt_labels.tolist()) if classes[label] in POSITION_CLASSES
            and float(centres[j][:2].norm()) <= POSITION_RANGE_M]
    matches = _greedy_match(boxes, scores, labels, gt_boxes, gt_labels, score_threshold, near)
    for j in near:
        kind = classes[int(gt_labels[j])]
        eligible[kind] += 1
        if j in matches:
            K, T, margin = camera
            estimate = geometry.centre_from_box(matches[j].numpy(), contact_depth_m[kind], K, T, margin)
            if estimate is not None:
                errors[kind].append(float(np.linalg.norm(estimate - centres[j][:2].numpy())))


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "val", *,
                        config: StackConfig, device: str | None = None, batch_size: int = 8,
                        show_progress: bool = False, pooled_ap50: MeanAveragePrecision | None = None,
                        zoom: bool = True) -> dict[str, Any]:
    """``evaluate_model`` on a checkpoint file; its path, architecture, input size and epoch are
    added under ``checkpoint``. With ``zoom`` the box refiner is the stage's: ``box_refiner`` of
    the config, resolved for this checkpoint (perception/refine.py ``resolve_refiner``)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_checkpoint(checkpoint, map_location=device)
    model.to(memory_format=torch.channels_last)
    refinement, why = resolve_refiner(config.perception.learned.box_refiner, checkpoint) if zoom else (None, "off")
    result = evaluate_model(model, data, split, device=device, batch_size=batch_size, show_progress=show_progress,
                            config=config, pooled_ap50=pooled_ap50, zoom=zoom, refinement=refinement)
    if result["box_refiner"] is not None:
        result["box_refiner"]["why"] = why
    result["checkpoint"] = {"path": str(checkpoint), "architecture": meta["architecture"],
                            "input_size": list(meta["input_size"]), "epoch": meta.get("epoch")}
    return result

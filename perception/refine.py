"""A second look at small vehicle boxes: the frame's own pixels around a box -> its four edges.

The detector places a far car from stride-4 features, so a car 10 px wide is a few cells, and a
box a pixel or two off is below IoU 0.5 with the car's label. Most far cars it misses are found
that way, not missed outright (docs/perception.md, "Box refinement"). The refiner looks again,
as the second stage of a two-stage detector does: each vehicle box under ``max_height_px`` tall
(at least ``min_score``) is widened about its centre to a region of ``2 w + PAD_X`` by
``2 h + PAD_Y`` px, sampled to CROP (h, w) px with torchvision's ``roi_align``, and a small CNN
gives the moves of its four edges as shares of the region's width and height. Nothing else
changes: scores, labels and every other box stay the detector's.

A refiner is trained on one detector's boxes (`stagepilot train-refiner`, perception/train_refiner.py)
and its file records that detector's sha256: ``box_refiner: auto`` uses the shipped refiner only
with the detector it was trained for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from stagepilot.perception.checkpoint import CheckpointError, _first_line, file_sha256
from stagepilot.perception.runner import fold_batchnorm

CROP = (24, 48)          # (h, w) px of the sampled region
PAD_X, PAD_Y = 8.0, 6.0  # [px] added to twice the box's width / height for the region
WEIGHTS = Path(__file__).parent / "weights" / "box_refiner.pt"
ARCHITECTURE_RE = r"^refiner_c(\d+)_24x48$"  # refiner_c{width}_24x48
WIDTH = 16  # channels of the first layers (then twice that)
CLASSES = ("vehicle",)  # what is refined by default: vehicle boxes
MAX_HEIGHT_PX = 20.0    # under this tall (the recall bands 0-12 and 12-20 px)
MIN_SCORE = 0.2         # scoring at least this


class BoxRefiner(nn.Module):
    """Region crop (B, 3, 24, 48) in [0, 1] and box size (B, 2) [px] -> edge moves (B, 4): x0, y0,
    x1, y1 as shares of the region's width and height. Five 3x3 conv layers (two poolings) keep
    where an edge lies; a two-layer head reads the map with the box's log size. The last layer
    starts at zero, so an untrained refiner leaves boxes as they are."""

    def __init__(self, width: int = WIDTH):
        super().__init__()
        self.width = width

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.features = nn.Sequential(block(3, width), block(width, width), nn.MaxPool2d(2),
                                      block(width, 2 * width), block(2 * width, 2 * width), nn.MaxPool2d(2),
                                      block(2 * width, 2 * width))
        cells = (CROP[0] // 4) * (CROP[1] // 4)
        self.head = nn.Sequential(nn.Linear(2 * width * cells + 2, 128), nn.ReLU(inplace=True), nn.Linear(128, 4))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, crops: Tensor, sizes: Tensor) -> Tensor:
        f = self.features(crops).flatten(1)
        return self.head(torch.cat([f, torch.log(sizes.clamp_min(1.0) / 10.0)], 1))

    @property
    def architecture(self) -> str:
        return f"refiner_c{self.width}_24x48"


def regions(boxes: Tensor) -> Tensor:
    """Boxes (N, 4) xyxy px -> the regions (N, 4) the refiner reads, about the same centres."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    rw, rh = 2 * w + PAD_X, 2 * h + PAD_Y
    return torch.stack([cx - rw / 2, cy - rh / 2, cx + rw / 2, cy + rh / 2], 1)


def crops(image: Tensor, boxes: Tensor) -> Tensor:
    """One image (3, H, W) in [0, 1] and boxes (N, 4) in its pixels -> the regions' crops (N, 3, *CROP);
    outside the image reads 0."""
    return roi_align(image[None].float(), [regions(boxes.float())], CROP, spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)


def frame_crops(rgb: np.ndarray, boxes: Tensor) -> Tensor:
    """``crops`` of a uint8 frame (H, W, 3), converting only the window the regions cover: the same
    values as ``crops`` on the whole frame as floats."""
    h, w = rgb.shape[:2]
    reg = regions(boxes.float())
    x0 = int(max(0, np.floor(float(reg[:, 0].min())) - 1))
    y0 = int(max(0, np.floor(float(reg[:, 1].min())) - 1))
    x1 = int(min(w, np.ceil(float(reg[:, 2].max())) + 2))
    y1 = int(min(h, np.ceil(float(reg[:, 3].max())) + 2))
    if x1 <= x0 or y1 <= y0:
        return torch.zeros((len(boxes), 3, *CROP))
    window = torch.from_numpy(np.ascontiguousarray(rgb[y0:y1, x0:x1])).permute(2, 0, 1).float().div_(255.0)
    shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
    return crops(window, boxes.float() - shift)


def box_sizes(boxes: Tensor) -> Tensor:
    """Boxes (N, 4) -> their (width, height) (N, 2) px."""
    return torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)


def _region_scale(boxes: Tensor) -> Tensor:
    """(N, 4): each box's region width, height, width, height: what a move is a share of."""
    return box_sizes(regions(boxes.float())).repeat(1, 2)


def moved(boxes: Tensor, moves: Tensor) -> Tensor:
    """Boxes (N, 4) moved by the refiner's output (N, 4) (shares of their regions)."""
    out = boxes.float() + moves.float() * _region_scale(boxes)
    # an edge never crosses its opposite one
    out[:, 2] = torch.maximum(out[:, 2], out[:, 0] + 0.5)
    out[:, 3] = torch.maximum(out[:, 3], out[:, 1] + 0.5)
    return out


def moves_towards(boxes: Tensor, targets: Tensor) -> Tensor:
    """The refiner's training target: the moves (N, 4) that take ``boxes`` to ``targets``."""
    return (targets.float() - boxes.float()) / _region_scale(boxes)


def small_boxes(boxes: Tensor, scores: Tensor, is_class: Tensor, min_score: float = MIN_SCORE,
                max_height_px: float = MAX_HEIGHT_PX) -> Tensor:
    """Indices of the boxes a refiner takes: of its classes (``is_class``, (N,) bool), scoring at
    least ``min_score``, under ``max_height_px`` tall."""
    heights = boxes[:, 3] - boxes[:, 1]
    return torch.where(is_class & (scores >= min_score) & (heights < max_height_px) & (heights > 0))[0]


@dataclass
class Refinement:
    """A loaded refiner and what it refines: boxes of ``classes`` under ``max_height_px`` tall with a
    score of at least ``min_score`` (at most ``max_boxes`` a frame, surest first)."""

    model: BoxRefiner
    meta: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = CLASSES
    max_height_px: float = MAX_HEIGHT_PX
    min_score: float = MIN_SCORE
    max_boxes: int = 64
    path: str = ""

    def chosen(self, boxes: Tensor, scores: Tensor, is_class: Tensor, min_score: float | None = None) -> Tensor:
        """Indices of the boxes to refine."""
        floor = self.min_score if min_score is None else max(self.min_score, min_score)
        idx = small_boxes(boxes, scores, is_class, floor, self.max_height_px)
        if len(idx) > self.max_boxes:
            idx = idx[scores[idx].argsort(descending=True)[: self.max_boxes]]
        return idx

    @torch.inference_mode()
    def apply(self, image: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor, class_ids: list[int]) -> Tensor:
        """Evaluation's form: one image (3, H, W) in [0, 1], its detections as tensors -> boxes (N, 4)."""
        is_class = torch.isin(labels.long().cpu(), torch.tensor(class_ids, dtype=torch.long))
        idx = self.chosen(boxes.cpu().float(), scores.cpu().float(), is_class)
        out = boxes.clone()
        if len(idx):
            b = boxes[idx].cpu().float()
            out[idx] = moved(b, self.model(crops(image.cpu(), b), box_sizes(b))).to(out.dtype).to(out.device)
        return out

    @torch.inference_mode()
    def apply_frame(self, rgb: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: list[str],
                    min_score: float | None = None) -> np.ndarray:
        """The stage's form: a uint8 frame (H, W, 3) and its decoded boxes (N, 4) px, scores and class
        names -> boxes (N, 4). ``min_score``: the stage's own threshold (boxes under it are dropped
        anyway)."""
        if not len(boxes):
            return boxes
        b_all = torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4))
        is_class = torch.tensor([label in self.classes for label in labels], dtype=torch.bool)
        idx = self.chosen(b_all, torch.from_numpy(np.asarray(scores, np.float32)), is_class, min_score)
        if not len(idx):
            return boxes
        b = b_all[idx]
        out = np.array(boxes, dtype=float, copy=True)
        out[idx.numpy()] = moved(b, self.model(frame_crops(rgb, b), box_sizes(b))).numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return {"file": self.path, "sha256": self.meta.get("sha256"), "max_height_px": self.max_height_px,
                "min_score": self.min_score, "classes": list(self.classes)}


def save_refiner(path: str | Path, model: BoxRefiner, meta: dict[str, Any]) -> Path:
    """torch.save {"state_dict", "meta"}: meta names the architecture, the detector's sha256, the
    classes, the height and score limits, the training data and command, and the figures."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": {**meta, "architecture": model.architecture}}, path)
    return path


def load_refiner(path: str | Path) -> Refinement:
    """A refiner file -> Refinement (``weights_only=True``); a missing, unreadable or foreign file is a
    CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"box refiner {path}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one message
        raise CheckpointError(f"box refiner {path}: cannot be read ({_first_line(exc)})") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or not isinstance(blob.get("meta"), dict):
        raise CheckpointError(f"box refiner {path}: not a refiner file (no state_dict and meta)")
    meta = dict(blob["meta"])
    match = re.match(ARCHITECTURE_RE, str(meta.get("architecture")))
    if match is None:
        raise CheckpointError(f"box refiner {path}: architecture {meta.get('architecture')!r}, "
                              "expected like 'refiner_c16_24x48'")
    model = BoxRefiner(int(match.group(1)))
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"box refiner {path}: weights do not fit ({_first_line(exc)})") from None
    meta["sha256"] = file_sha256(path)
    return Refinement(fold_batchnorm(model.eval()), meta, tuple(meta.get("classes", CLASSES)),
                      float(meta.get("max_height_px", MAX_HEIGHT_PX)), float(meta.get("min_score", MIN_SCORE)),
                      path=str(path))


def resolve_refiner(setting: str | None, detector: str | Path | None) -> tuple[Refinement | None, str]:
    """``box_refiner`` of the config and the detector's checkpoint file (None: a model handed in,
    with no file) -> (the refinement or None, why). ``auto``: the shipped refiner when it was
    trained on this detector's file (sha256), else none; ``off``: none; a path: that refiner,
    whichever detector it was trained on (the reason says when it was another)."""
    if setting in (None, "off"):
        return None, "off"
    if setting == "auto":
        if detector is None:
            return None, "auto: the detector has no checkpoint file"
        if not WEIGHTS.is_file():
            return None, "auto: no shipped refiner"
        refinement = load_refiner(WEIGHTS)
        if refinement.meta.get("detector_sha256") != file_sha256(detector):
            return None, "auto: the shipped refiner was trained on another detector"
        return refinement, "auto: the shipped refiner, trained on this detector"
    refinement = load_refiner(setting)
    if detector is None or refinement.meta.get("detector_sha256") == file_sha256(detector):
        return refinement, "configured"
    return refinement, "configured (trained on another detector)"

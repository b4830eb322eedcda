"""A torch Dataset over one split of a collected dataset (layout: perception/dataset.py).

    ds = PerceptionDataset(root, "train", input_size=(288, 512), augment=Augment(), seed=0)
    image, target = ds[0]        # (3, H, W) float in [0, 1]; target dict (below)
    loader = DataLoader(ds, batch_size=8, collate_fn=collate)

Label mapping (COCO category -> index in model.CLASSES):
- vehicle, pedestrian, static_obstacle map to their class;
- traffic_light maps to traffic_light_{red,yellow,green} by `attributes.state`.
  Lights whose lamps do not face the camera (``facing_camera: false``) and lights of an
  unknown state are left out: their state cannot be read from the image, so a box labelled
  with it would teach the network to guess. The network therefore learns to detect only
  lights it can read; a light seen from behind is background for it.

Images and masks are resized to ``input_size`` (area / nearest); boxes are scaled with them,
and ``target["scale"]`` (sx, sy) maps model pixels back to the original camera pixels.

With ``Augment.crop`` a training item is a random window of that size, cut from the image at
``input_size`` after a random zoom from ``Augment.scale``: the network then trains at the
scale it runs at (the whole 640x360 frame) for the cost of a smaller image. A box keeps its
clipped part when at least ``CROP_KEEP`` of its area is inside the window and is dropped
otherwise: the rule `collect` applies at the image's own edges (MIN_VISIBLE_FRACTION), so
that a car cut by a window edge is labelled as one cut by the frame's edge would be. The
shipped recipe does not crop (docs/perception.md: the crop experiment, which kept boxes
from half their area, learned to miss near cars cut by the frame's edge). Padding (a zoom
below the window) is ignored by the segmentation loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from stagepilot.perception.dataset import MIN_VISIBLE_FRACTION
from stagepilot.perception.labels import CLASSES, IGNORE_INDEX, SEG_LOOKUP
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import box_area, clip_boxes_to_image

LIGHT_STATES = ("red", "yellow", "green")
CROP_KEEP = MIN_VISIBLE_FRACTION  # share of a box's area that must be inside a training crop for it to stay
_SEG_LOOKUP_U8 = SEG_LOOKUP.to(torch.uint8).numpy()  # (256,) CARLA tag -> seg class, as a uint8 table
_PLAIN = {"vehicle": "vehicle", "pedestrian": "pedestrian", "static_obstacle": "static_obstacle"}


@dataclass(frozen=True)
class Augment:
    """Training augmentation; every draw comes from (seed, epoch, index), so it does not depend on
    the number of workers or the order in which they run."""

    hflip: float = 0.5        # probability of a horizontal flip (image, boxes, mask)
    brightness: float = 0.2   # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.2     # blend with the mean grey by a factor from [1 - c, 1 + c]
    crop: tuple[int, int] | None = None       # (H, W) random window of the zoomed image; None: whole image
    scale: tuple[float, float] = (1.0, 1.0)   # zoom factor range applied before the crop
    horizon_zoom: float = 0.0        # share of window items magnified horizon_zoom_scale times on the horizon band
    horizon_zoom_scale: float = 2.0  # (the stage's horizon zoom, perception/zoom.py; needs the camera's record)


def class_index(category: str, attributes: dict[str, Any] | None) -> int | None:
    """COCO category name (+ traffic-light attributes) -> index in CLASSES, None to leave out."""
    if category in _PLAIN:
        return CLASSES.index(_PLAIN[category])
    if category == "traffic_light":
        attributes = attributes or {}
        state = attributes.get("state")
        if not attributes.get("facing_camera", False) or state not in LIGHT_STATES:
            return None
        return CLASSES.index(f"traffic_light_{state}")
    return None


class PerceptionDataset(Dataset):
    """One split: item -> (image (3, H, W) float [0, 1], target) with target
    {"boxes" (M, 4) xyxy model px, "labels" (M,), "mask" (H, W) int64 seg classes,
    "center_ego" (M, 3) m, "extent" (M, 3) m, "image_id" int, "scale" (2,) sx, sy}."""

    def __init__(self, root: str | Path, split: str = "train", *, input_size: tuple[int, int] | None = None,
                 augment: Augment | None = None, seed: int = 0, limit: int | None = None) -> None:
        self.root = Path(root)
        path = self.root / "annotations" / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no annotations for split {split!r}")
        coco = json.loads(path.read_text())
        self.split = split
        self.camera = coco.get("camera")  # {"K", "T_ego_cam", "width", "height"} when collect wrote it
        # every rig camera that took the split's frames, by name (an image names its own: "camera")
        self.cameras = coco.get("cameras") or ({self.camera["name"]: self.camera} if self.camera else {})
        names = {c["id"]: c["name"] for c in coco["categories"]}
        self.images = sorted(coco["images"], key=lambda i: i["id"])[:limit]
        self.objects: dict[int, list[tuple[list[float], int, list[float], list[float]]]] = {
            i["id"]: [] for i in self.images}
        for ann in coco["annotations"]:
            if ann["image_id"] not in self.objects:
                continue
            label = class_index(names[ann["category_id"]], ann.get("attributes"))
            if label is None:
                continue
            x, y, w, h = ann["bbox"]
            self.objects[ann["image_id"]].append(
                ([x, y, x + w, y + h], label, ann.get("center_ego", [0.0, 0.0, 0.0]), ann.get("extent", [0.0, 0.0, 0.0])))
        self.input_size = tuple(input_size) if input_size else None
        self.augment = augment
        self.seed = seed
        self.epoch = 0  # set by the trainer before each epoch; with augment, draws depend on it

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        record = self.images[index]
        bgr = cv2.imread(str(self.root / record["file_name"]), cv2.IMREAD_COLOR)
        tags = cv2.imread(str(self.root / record["semantic_file"]), cv2.IMREAD_UNCHANGED)
        if bgr is None or tags is None:
            raise OSError(f"{self.root}: cannot read the files of image {record['id']}")
        h0, w0 = bgr.shape[:2]
        h, w = self.input_size or (h0, w0)
        if (h, w) != (h0, w0):
            bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
            tags = cv2.resize(tags, (w, h), interpolation=cv2.INTER_NEAREST)
        sx, sy = w / w0, h / h0
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)                                                     # (H, W, 3) uint8
        classes = _SEG_LOOKUP_U8[tags]                                                                  # (H, W) uint8
        objects = self.objects[record["id"]]
        boxes = torch.tensor([o[0] for o in objects], dtype=torch.float32).reshape(-1, 4)              # (M, 4)
        boxes *= torch.tensor([sx, sy, sx, sy])
        labels = torch.tensor([o[1] for o in objects], dtype=torch.long)
        center_ego = torch.tensor([o[2] for o in objects], dtype=torch.float32).reshape(-1, 3)
        extent = torch.tensor([o[3] for o in objects], dtype=torch.float32).reshape(-1, 3)
        if self.augment is not None:
            image, boxes, classes, kept = self._augment(rgb, boxes, classes, index)
            labels, center_ego, extent = labels[kept], center_ego[kept], extent[kept]
        else:
            image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0                           # (3, H, W)
        target = {"boxes": boxes, "labels": labels, "mask": torch.from_numpy(classes).long(),
                  "center_ego": center_ego, "extent": extent,
                  "image_id": int(record["id"]), "scale": torch.tensor([sx, sy]),
                  "camera": record.get("camera", (self.camera or {}).get("name", ""))}
        return image, target

    def _horizon_band_centre(self, index: int, height: int, width: int) -> float | None:
        """The horizon band's middle row in item ``index``'s image (``height`` x ``width``), from its
        camera's record; None when the annotation file records no camera."""
        name = self.images[index].get("camera", (self.camera or {}).get("name", ""))
        camera = self.cameras.get(name) or (next(iter(self.cameras.values())) if self.cameras else None)
        if camera is None:
            return None
        return _band_centre(camera, height, width, self.augment.horizon_zoom_scale)

    def _augment(self, rgb: np.ndarray, boxes: Tensor, mask: np.ndarray,
                 index: int) -> tuple[Tensor, Tensor, np.ndarray, Tensor]:
        """rgb (H, W, 3) uint8, boxes (M, 4), mask (H, W) uint8 -> image (3, H', W') float [0, 1],
        boxes, mask and the index of the boxes kept (M',). The geometry works on uint8 pixels and
        only the window is turned into floats: a window item takes 5.5 ms instead of 10 ms."""
        aug = self.augment
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
        u = torch.rand(3, generator=gen)
        kept = torch.arange(boxes.shape[0])
        if aug.crop is not None:
            window = torch.rand(3, generator=gen)
            centre = None
            if aug.horizon_zoom > 0.0 and float(torch.rand(1, generator=gen)) < aug.horizon_zoom:
                centre = self._horizon_band_centre(index, rgb.shape[0], rgb.shape[1])
            if centre is None:
                rgb, boxes, mask, kept = _zoom_crop(rgb, boxes, mask, aug.crop, aug.scale, window)
            else:
                rgb, boxes, mask, kept = _zoom_crop(rgb, boxes, mask, aug.crop, (aug.horizon_zoom_scale,) * 2, window,
                                                    centre_row=centre)
        if u[0] < aug.hflip:
            w = rgb.shape[1]
            rgb, mask = rgb[:, ::-1], mask[:, ::-1]
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        # brightness b, then contrast c about the mean grey m of the brightened image, in one affine map:
        # ((x b) - m b) c + m b = x (b c) + m b (1 - c), with x in [0, 1]
        b = 1.0 + aug.brightness * (2.0 * float(u[1]) - 1.0)
        c = 1.0 + aug.contrast * (2.0 * float(u[2]) - 1.0)
        grey = float(rgb.mean()) / 255.0
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()                # (3, H', W')
        image = image.mul_(b * c / 255.0).add_(grey * b * (1.0 - c)).clamp_(0.0, 1.0)
        return image, boxes, np.ascontiguousarray(mask), kept


def _band_centre(camera: dict[str, Any], height: int, width: int, scale: float) -> float | None:
    """The middle row of the stage's horizon band (perception/zoom.py) in an image of ``camera`` at
    ``height`` x ``width`` px; None when the camera cannot see the horizon."""
    from stagepilot.perception.geometry import scale_intrinsics
    from stagepilot.perception.zoom import TRAINING_ROWS, zoom_view

    K = scale_intrinsics(np.asarray(camera["K"], float), width / camera["width"], height / camera["height"])
    band = zoom_view(height, width, K, np.asarray(camera["T_ego_cam"], float), (height, width), TRAINING_ROWS, scale)
    return None if band is None else (band.top + band.bottom) / 2.0


def _zoom_crop(image: np.ndarray, boxes: Tensor, mask: np.ndarray, crop: tuple[int, int],
               scale: tuple[float, float], u: Tensor, centre_row: float | None = None
               ) -> tuple[np.ndarray, Tensor, np.ndarray, Tensor]:
    """Zoom by a factor from ``scale`` (u[0]), then cut a ``crop`` (H, W) window at a random place
    (u[1], u[2]); with ``centre_row`` (a row of the image before the zoom) the window's middle row
    lies within an eighth of the window's height of it instead. A zoomed image smaller than the
    window is padded (image 0, mask IGNORE_INDEX).
    image (H, W, 3) uint8, boxes (M, 4) xyxy, mask (H, W) uint8 -> the window's image, boxes, mask
    and kept (M',). The zoom is OpenCV's area resampling below 1 (antialiased) and bilinear above."""
    ch, cw = crop
    h, w = image.shape[:2]
    zoom = float(scale[0] + (scale[1] - scale[0]) * u[0])
    zh, zw = max(1, round(h * zoom)), max(1, round(w * zoom))
    if (zh, zw) != (h, w):
        image = cv2.resize(image, (zw, zh), interpolation=cv2.INTER_AREA if zoom < 1.0 else cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (zw, zh), interpolation=cv2.INTER_NEAREST)
        boxes = boxes * torch.tensor([zw / w, zh / h, zw / w, zh / h])
    if zh < ch or zw < cw:
        pad_h, pad_w = max(ch - zh, 0), max(cw - zw, 0)
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        mask = cv2.copyMakeBorder(mask, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
        zh, zw = zh + pad_h, zw + pad_w
    y0 = int(u[1] * (zh - ch + 1)) if zh > ch else 0
    if centre_row is not None and zh > ch:
        y0 = min(max(int(round(centre_row * zh / h - ch / 2 + (float(u[1]) - 0.5) * ch / 4)), 0), zh - ch)
    x0 = int(u[2] * (zw - cw + 1)) if zw > cw else 0
    image, mask = image[y0:y0 + ch, x0:x0 + cw], mask[y0:y0 + ch, x0:x0 + cw]
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    clipped = clip_boxes_to_image(shifted, (ch, cw))
    kept = (box_area(clipped) >= CROP_KEEP * box_area(shifted).clamp(min=1e-6)).nonzero().squeeze(1)
    return image, clipped[kept], mask, kept


def collate(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict[str, Any]]]:
    """-> images (B, 3, H, W), list of B targets (box counts differ between images)."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def manifest_record(root: str | Path) -> dict[str, Any]:
    """{"path", "sha256" of manifest.json, "frames", "content_sha256"} of a dataset, for a
    checkpoint's data_manifest. The content hash is taken now, from the files the run reads
    (perception/dataset.py `content_sha256`): two runs on the same data show the same one, even
    when their manifests differ by the commit that wrote them."""
    import hashlib

    from stagepilot.perception.dataset import content_sha256

    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        return {"path": str(root.resolve()), "sha256": None, "frames": None, "content_sha256": None}
    blob = path.read_bytes()
    frames = json.loads(blob).get("frames")
    return {"path": str(root.resolve()), "sha256": hashlib.sha256(blob).hexdigest(), "frames": frames,
            "content_sha256": content_sha256(root)}

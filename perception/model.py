"""Multi-task camera network: one shared backbone, a detection head and a segmentation head.

    model = PerceptionNet()                     # random init, no download
    out = model(images)                         # images (B, 3, H, W) float RGB in [0, 1]
    dets = model.decode(out, score_threshold=0.3)   # list of {"boxes", "scores", "labels"}, "seg"
    losses = model.loss(out, targets)           # dict of scalars, "total" to backprop

Architecture (``architecture`` string ``mtl_{backbone}_fpn{width}_s{levels}_seg4[_cs]``, default
``mtl_mbv3small_fpn96_s48_seg4``; ``levels`` is ``8`` for one stride-8 detection level or ``48``
for stride 4 and stride 8; ``_cs`` regresses boxes as centre offset and size instead of FCOS's
distances to the four edges, see ``PerceptionNet._ltrb``):
- backbone: torchvision MobileNetV3-Small ``features`` up to the stride-32 stage, without its
  576-channel 1x1 head (C2 16 ch @ s4, C3 24 ch @ s8, C4 48 ch @ s16, C5 96 ch @ s32).
  ``backbone="mbv3large"`` (C2 24 / C3 40 / C4 112 / C5 160) is the heavier option: on the 2-core CPU, bf16 + channels_last,
  forward + decode of one 640x360 frame takes about 19 ms with mbv3small/96 and 40 ms with
  mbv3large/64, against 58 ms for ssdlite320 + lraspp (``stagepilot bench perception``);
- neck: a small top-down FPN fused to one stride-8 map of ``width`` channels;
- detection: an anchor-free FCOS-style dense head at stride 8 (sigmoid class logits with focal
  loss, left/top/right/bottom distances with GIoU loss, centre sampling instead of centre-ness);
  traffic-light state is part of the class (red / yellow / green). With ``s48`` a second, light
  head runs on the stride-4 decoder features that the segmentation head also uses; boxes up to
  ``P2_MAX_SIDE`` px (in input pixels) are its targets and boxes from ``P3_MIN_SIDE`` px the
  stride-8 head's (FCOS's assignment by object size, with an overlap). Distant cars and people
  are a few pixels tall, and a stride-8 cell blurs them (docs/perception.md);
- segmentation: a light head on the same stride-8 map, upsampled and fused with the stride-4
  C2 features (``SEG4_WIDTH`` channels) so that thin classes (road lines, far pedestrians) keep
  their shape; stride-4 logits are upsampled to the input size in ``loss`` and ``decode``.
  The loss is cross-entropy plus a soft Dice term over the classes the mIoU is taken on,
  since road lines and pedestrians cover a few percent of the pixels.

Checkpoints follow the shape of torchvision's weights metadata: the file carries the
classes, the input size, the architecture, the metrics reached, the training command and the
data manifest next to the state dict (``save_checkpoint`` / ``load_checkpoint``).
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

from stagepilot.core.config_base import ConfigError
from torchvision.ops import (
    batched_nms,
    box_area,
    box_convert,
    clip_boxes_to_image,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

CLASSES = ("vehicle", "pedestrian", "traffic_light_red", "traffic_light_yellow", "traffic_light_green",
           "static_obstacle")
SEG_CLASSES = ("background", "road", "road_line", "sidewalk", "vehicle", "pedestrian", "traffic_light", "pole",
               "vegetation", "building", "sky")
# CARLA semantic tag id (sim/render/palette.py) -> index in SEG_CLASSES; every other tag is background.
CARLA_TAG_TO_SEG = {
    1: 1,    # road
    24: 2,   # road line
    2: 3,    # sidewalk
    14: 4, 15: 4, 16: 4,  # car, truck, bus -> vehicle
    12: 5,   # pedestrian
    7: 6,    # traffic light
    6: 7,    # pole
    9: 8,    # vegetation
    3: 9,    # building
    11: 10,  # sky
}
SEG_LOOKUP = torch.zeros(256, dtype=torch.long)  # (256,) CARLA tag -> seg class
for _tag, _cls in CARLA_TAG_TO_SEG.items():
    SEG_LOOKUP[_tag] = _cls
IGNORE_INDEX = 255  # mask value left out of the segmentation loss
INPUT_SIZE = (360, 640)  # (H, W) of the front camera
STRIDE = 8
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ARCH_RE = re.compile(r"^mtl_(mbv3large|mbv3small)_fpn(\d+)_s(8|48)_seg4(_cs)?$")
CS_OFFSET_CELLS = 2.0  # ``_cs`` boxes: the centre lies within this many cells of the point (centre sampling: 1.5)
DEFAULT_ARCHITECTURE = "mtl_mbv3small_fpn96_s48_seg4"
P2_MAX_SIDE = 32.0  # [input px] boxes whose longer side is at most this are stride-4 targets ...
P3_MIN_SIDE = 16.0  # ... and boxes whose longer side is at least this are stride-8 targets
# backbone -> (builder, feature slices for C2/C3/C4/C5, their channels)
BACKBONES = {
    "mbv3large": (mobilenet_v3_large, (slice(0, 4), slice(4, 7), slice(7, 13), slice(13, 16)), (24, 40, 112, 160)),
    "mbv3small": (mobilenet_v3_small, (slice(0, 2), slice(2, 4), slice(4, 9), slice(9, 12)), (16, 24, 48, 96)),
}
SEG4_WIDTH = 32  # channels of the stride-4 segmentation decoder
# seg classes the Dice term (and the evaluation's mIoU) cover
DICE_CLASSES = ("road", "road_line", "sidewalk", "vehicle", "pedestrian")


def seg_mask_from_tags(tags: Tensor) -> Tensor:
    """CARLA tag image (..., H, W) of integers -> seg class mask (..., H, W) int64."""
    return SEG_LOOKUP.to(tags.device)[tags.long()]


def _conv_bn_relu(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _sep_block(c: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, both with BN + ReLU: a cheap 3x3 receptive field."""
    return nn.Sequential(_conv_bn_relu(c, c, 3, groups=c), _conv_bn_relu(c, c, 1))


class PerceptionNet(nn.Module):
    def __init__(self, *, num_classes: int = len(CLASSES), num_seg_classes: int = len(SEG_CLASSES),
                 backbone: str = "mbv3small", width: int = 96, input_size: tuple[int, int] = INPUT_SIZE,
                 levels: str = "48", box_param: str = "ltrb", backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        self.classes = CLASSES if num_classes == len(CLASSES) else tuple(f"class_{i}" for i in range(num_classes))
        self.seg_classes = (SEG_CLASSES if num_seg_classes == len(SEG_CLASSES)
                            else tuple(f"seg_{i}" for i in range(num_seg_classes)))
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r} (one of {', '.join(BACKBONES)})")
        if levels not in ("8", "48"):
            raise ValueError(f"unknown detection levels {levels!r} (8 or 48)")
        if box_param not in ("ltrb", "cs"):
            raise ValueError(f"unknown box parametrisation {box_param!r} (ltrb or cs)")
        self.box_param = box_param
        self.backbone = backbone
        self.width = width
        self.levels = levels
        self.input_size = tuple(input_size)
        self.stride = STRIDE
        builder, (s2, s3, s4, s5), (ch2, ch3, ch4, ch5) = BACKBONES[backbone]
        trunk = builder(weights=None)
        if backbone_weights is not None:  # a local ImageNet state dict of the torchvision model; never downloaded
            path = Path(backbone_weights)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                trunk.load_state_dict(state)
            except Exception as exc:
                raise CheckpointError(f"{path}: not a {builder.__name__} state dict ({str(exc).splitlines()[0]})") from exc
        feats = trunk.features
        self.c2 = feats[s2]  # (B, ch2, H/4, W/4)
        self.c3 = feats[s3]  # (B, ch3, H/8, W/8)
        self.c4 = feats[s4]  # (B, ch4, H/16, W/16)
        self.c5 = feats[s5]  # (B, ch5, H/32, W/32)
        self.lat3 = _conv_bn_relu(ch3, width, 1)
        self.lat4 = _conv_bn_relu(ch4, width, 1)
        self.lat5 = _conv_bn_relu(ch5, width, 1)
        self.smooth = _sep_block(width)
        self.cls_tower = _sep_block(width)
        self.box_tower = _sep_block(width)
        self.cls_out = nn.Conv2d(width, num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(width, 4, 3, padding=1)
        self.seg_tower = _sep_block(width)
        self.seg_reduce = _conv_bn_relu(width, SEG4_WIDTH, 1)
        self.lat2 = _conv_bn_relu(ch2, SEG4_WIDTH, 1)
        self.seg_fuse = _sep_block(SEG4_WIDTH)
        self.seg_out = nn.Conv2d(SEG4_WIDTH, num_seg_classes, 1)
        if levels == "48":  # stride-4 detection on the decoder features the segmentation uses
            self.cls_tower4 = _sep_block(SEG4_WIDTH)
            self.box_tower4 = _sep_block(SEG4_WIDTH)
            self.cls_out4 = nn.Conv2d(SEG4_WIDTH, num_classes, 3, padding=1)
            self.box_out4 = nn.Conv2d(SEG4_WIDTH, 4, 3, padding=1)
        dice = [self.seg_classes.index(c) for c in DICE_CLASSES if c in self.seg_classes]
        self.register_buffer("dice_index", torch.tensor(dice, dtype=torch.long), persistent=False)
        for cls_out in (self.cls_out, getattr(self, "cls_out4", None)):
            if cls_out is not None:
                nn.init.normal_(cls_out.weight, std=0.01)
                nn.init.constant_(cls_out.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01 for focal loss
        # torchvision's MobileNetV3 tracks BatchNorm statistics with momentum 0.01, which lags far
        # behind the weights on a short schedule and breaks eval mode; 0.1 keeps up.
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.1
        for box_out in (self.box_out, getattr(self, "box_out4", None)):
            if box_out is not None:
                nn.init.normal_(box_out.weight, std=0.01)
                nn.init.zeros_(box_out.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def architecture(self) -> str:
        suffix = "_cs" if self.box_param == "cs" else ""
        return f"mtl_{self.backbone}_fpn{self.width}_s{self.levels}_seg4{suffix}"

    @property
    def strides(self) -> tuple[int, ...]:
        """Detection strides, in the order of the ``cls`` / ``box`` output lists."""
        return (STRIDE,) if self.levels == "8" else (4, STRIDE)

    def forward(self, images: Tensor) -> dict[str, Any]:
        """images (B, 3, H, W) float RGB in [0, 1] -> raw head outputs: ``cls`` and ``box``, lists with
        one map per detection stride (``strides``), and ``seg`` at stride 4."""
        x = (images - self.mean) / self.std            # (B, 3, H, W)
        c2 = self.c2(x)                                # (B, 24, H/4, W/4)    (16 for mbv3small)
        c3 = self.c3(c2)                               # (B, 40, H/8, W/8)    (24)
        c4 = self.c4(c3)                               # (B, 112, H/16, W/16) (48)
        c5 = self.c5(c4)                               # (B, 160, H/32, W/32) (96)
        p4 = self.lat4(c4) + F.interpolate(self.lat5(c5), size=c4.shape[-2:], mode="nearest")  # (B, w, H/16, W/16)
        p3 = self.lat3(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")            # (B, w, H/8, W/8)
        p3 = self.smooth(p3)                           # (B, w, H/8, W/8)
        cls = self.cls_out(self.cls_tower(p3))         # (B, C, H/8, W/8) logits
        ltrb = self._ltrb(self.box_out(self.box_tower(p3)), self.stride)  # (B, 4, H/8, W/8) px
        s3 = self.seg_reduce(self.seg_tower(p3))       # (B, 32, H/8, W/8)
        s2 = self.lat2(c2) + F.interpolate(s3, size=c2.shape[-2:], mode="bilinear", align_corners=False)
        f2 = self.seg_fuse(s2)                         # (B, 32, H/4, W/4)
        seg = self.seg_out(f2)                         # (B, K, H/4, W/4) logits
        if self.levels == "8":
            return {"cls": [cls], "box": [ltrb], "seg": seg, "image_size": tuple(images.shape[-2:])}
        cls4 = self.cls_out4(self.cls_tower4(f2))      # (B, C, H/4, W/4) logits
        ltrb4 = self._ltrb(self.box_out4(self.box_tower4(f2)), 4)  # (B, 4, H/4, W/4) px
        return {"cls": [cls4, cls], "box": [ltrb4, ltrb], "seg": seg, "image_size": tuple(images.shape[-2:])}

    # ---- helpers -----------------------------------------------------------------------------
    def _ltrb(self, raw: Tensor, stride: int) -> Tensor:
        """Box head output (B, 4, h, w) -> distances from each cell's centre to the box's left, top,
        right and bottom edges (B, 4, h, w) px, float32.

        ``ltrb``: softplus(raw) * stride, so every box contains its cell's centre. A box narrower
        than a cell whose centre cell is assigned to it (``_assign``) may not, and is then learned
        too wide: before ``cs``, the shipped model's boxes for pedestrians under 12 px were a median
        1.7x too wide. ``cs``: the box centre is offset from the cell's centre by at most
        ``CS_OFFSET_CELLS`` cells (tanh) and its width and height are softplus(raw) * stride, so a
        box may lie beside the point (negative distances) and still has a positive size."""
        raw = raw.float()
        if self.box_param == "ltrb":
            return F.softplus(raw) * stride
        offset = torch.tanh(raw[:, :2]) * (CS_OFFSET_CELLS * stride)  # (B, 2, h, w) centre - point, x and y
        half = F.softplus(raw[:, 2:]) * (0.5 * stride)                # (B, 2, h, w) half width, half height
        return torch.cat([half - offset, half + offset], dim=1)       # l, t, r, b

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def _points(h: int, w: int, stride: int, device: torch.device) -> Tensor:
        """Centres of the cells of a stride-`stride` map in px, (h*w, 2) as (x, y), row-major; cached
        per map size (every frame has the same), callers never write to it."""
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)

    @torch.no_grad()
    def decode(self, outputs: dict[str, Any], score_threshold: float = 0.3, *, nms_iou: float = 0.5,
               max_candidates: int = 1000, max_detections: int = 100, with_seg: bool = True,
               seg_stride: int = 1) -> list[dict[str, Tensor]]:
        """Raw outputs -> per image {"boxes" (N, 4) xyxy px inside the image, "scores" (N,), "labels" (N,),
        "seg" (H, W) int64 class map when with_seg, its class taken every ``seg_stride`` px (_seg_classes)}."""
        image_size = tuple(outputs["image_size"])
        points, scores_all, dist = self._flatten_levels(outputs)     # (P, 2), (B, P, C), (B, P, 4)
        b, c = scores_all.shape[0], scores_all.shape[2]
        scores_all = scores_all.sigmoid()
        seg = None
        if with_seg:
            seg = self._seg_classes(outputs["seg"], image_size, seg_stride)  # (B, H, W)
        results = []
        for i in range(b):
            flat = scores_all[i].reshape(-1)                         # (P*C,)
            keep = flat > score_threshold
            scores = flat[keep]
            idx = keep.nonzero().squeeze(1)
            if scores.numel() > max_candidates:
                scores, top = scores.topk(max_candidates)
                idx = idx[top]
            loc, labels = idx // c, idx % c
            cxcy = points[loc]                                       # (N, 2)
            d = dist[i, loc]                                         # (N, 4)
            boxes = torch.cat([cxcy - d[:, :2], cxcy + d[:, 2:]], dim=1)  # (N, 4) xyxy
            boxes = clip_boxes_to_image(boxes, image_size)
            keep = batched_nms(boxes, scores, labels, nms_iou)[:max_detections]
            result = {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
            if seg is not None:
                result["seg"] = seg[i]
            results.append(result)
        return results

    @staticmethod
    def _seg_classes(logits: Tensor, image_size: tuple[int, int], s: int = 1) -> Tensor:
        """Stride-4 logits (B, K, h, w) -> class map (B, H, W) int64 at the image size: the logits are
        upsampled bilinearly to 1/s of the image size, the class is taken there and repeated s x s.
        On a CPU the class decision (argmax over K) costs more than the upsampling; with s = 2 it
        costs a quarter, which the learned stage takes (evaluation keeps s = 1)."""
        h, w = image_size
        small = (math.ceil(h / s), math.ceil(w / s))
        classes = F.interpolate(logits.float(), size=small, mode="bilinear", align_corners=False).argmax(1)
        if s == 1:
            return classes
        return classes.repeat_interleave(s, 1).repeat_interleave(s, 2)[:, :h, :w]

    def _flatten_levels(self, outputs: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Per-level maps -> all cells of all levels: points (P, 2) px, class logits (B, P, C), ltrb (B, P, 4)."""
        points, logits, dists = [], [], []
        for stride, cls, ltrb in zip(self.strides, outputs["cls"], outputs["box"]):
            h, w = cls.shape[-2:]
            points.append(self._points(h, w, stride, cls.device))
            logits.append(cls.float().flatten(2).transpose(1, 2))
            dists.append(ltrb.float().flatten(2).transpose(1, 2))
        return torch.cat(points), torch.cat(logits, 1), torch.cat(dists, 1)

    def _level_sides(self, stride: int) -> tuple[float, float]:
        """Longer-side range [px] of the boxes a level is assigned."""
        if len(self.strides) == 1:
            return 0.0, float("inf")
        return (0.0, P2_MAX_SIDE) if stride < STRIDE else (P3_MIN_SIDE, float("inf"))

    def _assign(self, boxes: Tensor, labels: Tensor, points: Tensor, h: int, w: int,
                stride: int = STRIDE) -> tuple[Tensor, Tensor]:
        """FCOS assignment with centre sampling on one level.

        boxes (M, 4) xyxy, labels (M,), points (P = h*w, 2) -> matched box index per point (P,) (-1: background)
        and the class target (P, C). Only boxes whose longer side is in the level's range take part."""
        p = points.shape[0]
        target = torch.zeros(p, len(self.classes), device=points.device)
        if boxes.numel() == 0:
            return torch.full((p,), -1, dtype=torch.long, device=points.device), target
        x, y = points[:, 0:1], points[:, 1:2]                        # (P, 1)
        inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])  # (P, M)
        cxcywh = box_convert(boxes, "xyxy", "cxcywh")
        centre = cxcywh[:, :2]                                       # (M, 2)
        radius = 1.5 * stride
        near = ((x - centre[:, 0]).abs() < radius) & ((y - centre[:, 1]).abs() < radius)
        positive = inside & near                                     # (P, M)
        # a box smaller than a cell still gets the cell holding its centre
        cell = (torch.div(centre, stride, rounding_mode="floor")).long()
        cx = cell[:, 0].clamp(0, w - 1)
        cy = cell[:, 1].clamp(0, h - 1)
        positive[cy * w + cx, torch.arange(boxes.shape[0], device=boxes.device)] = True
        low, high = self._level_sides(stride)
        side = cxcywh[:, 2:].max(dim=1).values                       # (M,)
        positive &= ((side >= low) & (side <= high)).unsqueeze(0)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand(p, -1)
        area = torch.where(positive, area, torch.full_like(area, float("inf")))
        best_area, match = area.min(dim=1)                           # (P,)
        match[torch.isinf(best_area)] = -1
        pos = match >= 0
        target[pos, labels[match[pos]]] = 1.0
        return match, target

    def loss(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]], *,
             seg_stride: int = 1, cls_loss: str = "focal") -> dict[str, Tensor]:
        """targets[i]: {"boxes" (M, 4) xyxy px, "labels" (M,) index in CLASSES, "mask" (H, W) seg class ids
        (IGNORE_INDEX left out)}. Returns {"cls", "box", "seg", "dice", "total"}.

        ``cls_loss``: ``focal`` (torchvision's sigmoid focal loss, target 1 at an assigned cell) or
        ``quality_focal`` (Generalized Focal Loss, Li et al. 2020: the assigned cell's target is the
        IoU of its predicted box with its ground-truth box, so the score ranks detections by how well
        they are placed as well as by class; at AP@0.5 a far car's box 8 px wide is a miss at IoU
        0.4, and non-maximum suppression keeps the best-placed box, not the most confident one).

        ``seg_stride``: the segmentation terms are taken every ``seg_stride`` px of the mask (the
        centre pixel of each s x s block, with the logits upsampled to that grid). At 1 they take
        about 40 % of a whole-frame training step on a 2-core CPU; at 2 a quarter of that, and a
        road line a few px wide still gets a sample across it."""
        if seg_stride < 1:
            raise ValueError(f"seg_stride must be at least 1, got {seg_stride}")
        seg = outputs["seg"].float()
        points, cls_flat, dist = self._flatten_levels(outputs)       # (P, 2), (B, P, C), (B, P, 4)
        device = cls_flat.device
        cls_targets, pred_boxes, gt_boxes = [], [], []
        for i, t in enumerate(targets):
            boxes = t["boxes"].to(device, torch.float32).reshape(-1, 4)
            labels = t["labels"].to(device, torch.long).reshape(-1)
            matches, level_targets, start = [], [], 0
            for stride, cls in zip(self.strides, outputs["cls"]):
                h, w = cls.shape[-2:]
                m, ct = self._assign(boxes, labels, points[start:start + h * w], h, w, stride)
                matches.append(m)
                level_targets.append(ct)
                start += h * w
            match, cls_t = torch.cat(matches), torch.cat(level_targets)
            cls_targets.append(cls_t)
            pos = match >= 0
            d = dist[i, pos]                                         # (N, 4)
            pts = points[pos]
            pred_boxes.append(torch.cat([pts - d[:, :2], pts + d[:, 2:]], dim=1))
            gt_boxes.append(boxes[match[pos]])
        cls_target = torch.stack(cls_targets)                        # (B, P, C)
        pred = torch.cat(pred_boxes)
        num_pos = max(pred.shape[0], 1)
        if cls_loss == "focal":
            loss_cls = sigmoid_focal_loss(cls_flat, cls_target, reduction="sum") / num_pos
        elif cls_loss == "quality_focal":
            positive = cls_target > 0                                # (B, P, C), one class per assigned cell
            quality = torch.zeros_like(cls_target)
            if pred.shape[0]:  # cells in (image, point) order, as pred and gt_boxes were gathered
                quality[positive] = _paired_iou(pred.detach(), torch.cat(gt_boxes)).clamp(min=0.01)
            loss_cls = _quality_focal_loss(cls_flat, quality) / num_pos
        else:
            raise ValueError(f"cls_loss must be 'focal' or 'quality_focal', got {cls_loss!r}")
        if pred.shape[0]:
            loss_box = generalized_box_iou_loss(pred, torch.cat(gt_boxes), reduction="mean")
        else:
            loss_box = dist.sum() * 0.0
        masks = torch.stack([t["mask"].to(seg.device, torch.long) for t in targets])  # (B, H, W)
        if seg_stride > 1:
            masks = masks[:, seg_stride // 2::seg_stride, seg_stride // 2::seg_stride]  # (B, H/s, W/s)
        seg_up = F.interpolate(seg, size=masks.shape[-2:], mode="bilinear", align_corners=False)  # (B, K, H/s, W/s)
        log_probs = F.log_softmax(seg_up, dim=1)                      # once for both terms
        loss_seg = F.nll_loss(log_probs, masks, ignore_index=IGNORE_INDEX)
        loss_dice = self._dice_loss(log_probs, masks)
        total = loss_cls + 2.0 * loss_box + loss_seg + loss_dice
        return {"cls": loss_cls, "box": loss_box, "seg": loss_seg, "dice": loss_dice, "total": total}

    def _dice_loss(self, log_probs: Tensor, masks: Tensor) -> Tensor:
        """1 - soft Dice over the batch, averaged over DICE_CLASSES; log_probs (B, K, H, W) (log-softmax
        over K), masks (B, H, W)."""
        if self.dice_index.numel() == 0:
            return log_probs.sum() * 0.0
        valid = (masks != IGNORE_INDEX).unsqueeze(1)                  # (B, 1, H, W)
        probs = log_probs.index_select(1, self.dice_index).exp() * valid  # (B, D, H, W)
        onehot = (masks.unsqueeze(1) == self.dice_index.view(1, -1, 1, 1)) & valid
        onehot = onehot.to(probs.dtype)
        inter = (probs * onehot).sum((0, 2, 3))
        denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        present = onehot.sum((0, 2, 3)) > 0                          # a class absent from the batch says nothing
        dice = (2 * inter + 1.0) / (denom + 1.0)
        return (1.0 - dice)[present].mean() if present.any() else log_probs.sum() * 0.0


def _paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of a[i] with b[i]; a, b (N, 4) xyxy -> (N,). (torchvision's box_iou is all pairs, N x N.)"""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = box_area(a) + box_area(b) - inter
    return inter / union.clamp(min=1e-6)


def _quality_focal_loss(logits: Tensor, quality: Tensor, beta: float = 2.0) -> Tensor:
    """Quality focal loss (GFL), summed: binary cross-entropy towards a soft target in [0, 1],
    weighted by |target - sigmoid(logit)|^beta (beta 2, the paper's), so cells already near their
    target count little, as in focal loss. logits, quality (B, P, C)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, quality, reduction="none")
    return (ce * (quality - prob).abs().pow(beta)).sum()


def build_model(architecture: str = DEFAULT_ARCHITECTURE, **kwargs: Any) -> PerceptionNet:
    match = _ARCH_RE.match(architecture)
    if not match:
        raise ValueError(f"unknown architecture {architecture!r} (expected like 'mtl_mbv3large_fpn64_s48_seg4')")
    return PerceptionNet(backbone=match.group(1), width=int(match.group(2)), levels=match.group(3),
                         box_param="cs" if match.group(4) else "ltrb", **kwargs)


# ---- checkpoints ---------------------------------------------------------------------------------
class CheckpointError(ConfigError):
    """A checkpoint file that cannot be read, or that does not fit the requested model (a
    ValueError; the CLI prints it as one line, like a config error)."""


META_KEYS = ("classes", "seg_classes", "input_size", "architecture", "metrics", "training_command",
             "data_manifest")


def model_meta(model: PerceptionNet) -> dict[str, Any]:
    return {"classes": list(model.classes), "seg_classes": list(model.seg_classes),
            "input_size": list(model.input_size), "architecture": model.architecture}


def save_checkpoint(path: str | Path, model: PerceptionNet, meta: dict[str, Any] | None = None) -> Path:
    """torch.save {"state_dict", "meta"}; meta's classes/seg_classes/input_size/architecture come from the
    model; metrics, training_command and data_manifest from ``meta`` (empty when not given)."""
    meta = dict(meta or {})
    own = model_meta(model)
    for key, value in own.items():
        if key in meta and _norm(meta[key]) != _norm(value):
            raise CheckpointError(f"{path}: meta {key}={meta[key]!r} does not match the model's {value!r}")
    full = {"metrics": {}, "training_command": "", "data_manifest": {}, **meta, **own}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": full}, path)
    return path


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def load_checkpoint(path: str | Path, model: PerceptionNet | None = None, *,
                    map_location: str | torch.device = "cpu") -> tuple[PerceptionNet, dict[str, Any]]:
    """Read a checkpoint (weights_only) into ``model`` (or a model built from its meta) -> (model, meta).

    Raises CheckpointError (a ValueError) naming the file when it is unreadable or not a checkpoint, or
    when its classes, seg classes, input size or architecture differ from the requested model's."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob or "meta" not in blob:
        raise CheckpointError(f"{path}: not a stagepilot checkpoint (expected a dict with 'state_dict' and 'meta')")
    meta = blob["meta"]
    missing = [k for k in ("classes", "seg_classes", "input_size", "architecture") if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: meta lacks {', '.join(missing)}")
    if model is None:
        try:
            model = build_model(meta["architecture"], num_classes=len(meta["classes"]),
                                num_seg_classes=len(meta["seg_classes"]), input_size=tuple(meta["input_size"]))
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        model.classes = tuple(meta["classes"])
        model.seg_classes = tuple(meta["seg_classes"])
    want = model_meta(model)
    for key in ("architecture", "classes", "seg_classes", "input_size"):
        if _norm(meta[key]) != want[key]:
            raise CheckpointError(f"{path}: {key} mismatch: checkpoint has {_norm(meta[key])!r}, "
                                  f"the requested model has {want[key]!r}")
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: state dict does not fit {want['architecture']}: {exc}") from exc
    return model, meta


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches) -> int:
    """Re-estimate every BatchNorm's running statistics as a plain average over `batches` of
    images (B, 3, H, W) with the final weights; returns how many batches were used."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    count = 0
    for images in batches:
        model(images)
        count += 1
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.train(was_training)
    return count

"""Training targets and losses of the perception network.

- Assignment (FCOS, Tian et al. 2019, with centre sampling instead of centre-ness): a cell is
  positive for a box when its centre lies inside the box and within 1.5 cells of the box's
  centre; a box smaller than a cell still gets the cell holding its centre; a cell claimed by
  several boxes takes the smallest. Objects go to detection levels by size, as in FCOS: boxes
  whose longer side is at most ``P2_MAX_SIDE`` px (input pixels) are the stride-4 head's, boxes
  from ``P3_MIN_SIDE`` px the stride-8 head's; the overlap trains both on the middle sizes.
- ``assignment: visible``: a vehicle's or a walker's positive cells are only those whose
  stride x stride block of the segmentation mask holds a pixel of its class, so a far car cut
  by a pole or a walker is learned from the cells that show it, not from the occluder at its box
  centre; a box none of whose candidate cells shows its class keeps the centre rule. Lights and
  static obstacles, which have no segmentation class of their own, always keep it.
- Classification: ``quality_focal`` (Generalized Focal Loss, Li et al. 2020; the shipped recipe,
  configs/training/camera640_32ep_qfl.yaml): an assigned cell's target is the IoU of its
  predicted box with its ground-truth box, so the score ranks detections by placement as well as
  by class. ``focal``: torchvision's sigmoid focal loss, target 1 at an assigned cell.
- Boxes: torchvision's GIoU loss over the assigned cells (``giou``, the shipped recipe), or
  (``giou_nwd``) half that and half one minus the normalized Gaussian Wasserstein distance
  (Wang et al. 2021, "A Normalized Gaussian Wasserstein Distance for Tiny Object Detection"):
  each box taken as a 2-D Gaussian, W2^2 = |centre difference|^2 + |half-size difference|^2,
  NWD = exp(-W2 / ``NWD_SCALE_PX``). IoU falls from 1 to 0.5 when an 8x8 px box moves 1.5 px
  along both axes, and its gradient is that of a ratio of small areas; the distance grows with the offset in
  pixels whatever the box's size, so a far car's pixel matters as much as a near car's.
- Segmentation: cross-entropy plus a soft Dice term over ``DICE_CLASSES`` (the classes the
  evaluation's mIoU covers), since road lines and pedestrians cover a few percent of the pixels;
  both read one log-softmax.

total = cls + 2 box + seg + dice. Cells come in the order of perception/decode.py's
``flatten_levels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_area, box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from stagepilot.perception.decode import flatten_levels
from stagepilot.perception.labels import CLASSES, IGNORE_INDEX, SEG_CLASSES

P2_MAX_SIDE = 32.0  # [input px] boxes whose longer side is at most this are stride-4 targets ...
P3_MIN_SIDE = 16.0  # ... and boxes whose longer side is at least this are stride-8 targets
# seg classes the Dice term (and the evaluation's mIoU) cover
DICE_CLASSES = ("road", "road_line", "sidewalk", "vehicle", "pedestrian")
CLS_LOSSES = ("focal", "quality_focal")
BOX_LOSSES = ("giou", "giou_nwd")
ASSIGNMENTS = ("centre", "visible")
# detection class -> its segmentation class (-1: none; `assignment: visible`)
SEG_OF_CLASS = torch.tensor([SEG_CLASSES.index(name) if name in SEG_CLASSES else -1 for name in CLASSES])
NWD_SCALE_PX = 12.0  # [input px] the distance at which NWD is 1/e: about a far car's size, as the paper sets C


def level_sides(strides: Sequence[int], stride: int) -> tuple[float, float]:
    """Longer-side range [px] of the boxes the level at ``stride`` is assigned; a single level
    takes every box."""
    if len(strides) == 1:
        return 0.0, float("inf")
    return (0.0, P2_MAX_SIDE) if stride < max(strides) else (P3_MIN_SIDE, float("inf"))


def visible_cells(mask: Tensor, labels: Tensor, h: int, w: int, stride: int) -> Tensor:
    """(P = h*w, M) bool: whether cell p's stride x stride block of ``mask`` (H, W) seg class ids
    holds a pixel of box m's class (``labels`` (M,) detection classes); True for a class without a
    segmentation class of its own (lights, static obstacles)."""
    seg_ids = SEG_OF_CLASS.to(labels.device)[labels]            # (M,), -1: no seg class
    out = torch.ones(h * w, labels.shape[0], dtype=torch.bool, device=labels.device)
    for seg_id in seg_ids.unique().tolist():
        if seg_id < 0:
            continue
        hit = F.max_pool2d((mask == seg_id).to(torch.float32)[None, None], stride, stride, ceil_mode=True)[0, 0]
        block = torch.zeros(h, w, device=labels.device)
        rows, cols = min(h, hit.shape[0]), min(w, hit.shape[1])
        block[:rows, :cols] = hit[:rows, :cols]
        out[:, seg_ids == seg_id] = (block.reshape(-1, 1) > 0)
    return out


def assign(boxes: Tensor, labels: Tensor, points: Tensor, h: int, w: int, stride: int, *,
           strides: Sequence[int], num_classes: int, visible: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """FCOS assignment with centre sampling on one level.

    boxes (M, 4) xyxy, labels (M,), points (P = h*w, 2) -> matched box index per point (P,) (-1: background)
    and the class target (P, C). Only boxes whose longer side is in the level's range take part.
    ``visible`` (P, M) bool (``visible_cells``): a box with a candidate cell that shows it takes
    only such cells (``assignment: visible``, module docstring)."""
    p = points.shape[0]
    target = torch.zeros(p, num_classes, device=points.device)
    if boxes.numel() == 0:
        return torch.full((p,), -1, dtype=torch.long, device=points.device), target
    x, y = points[:, 0:1], points[:, 1:2]                        # (P, 1)
    inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])  # (P, M)
    cxcywh = box_convert(boxes, "xyxy", "cxcywh")
    centre = cxcywh[:, :2]                                       # (M, 2)
    radius = 1.5 * stride
    near = ((x - centre[:, 0]).abs() < radius) & ((y - centre[:, 1]).abs() < radius)
    candidate = inside & near                                    # (P, M)
    # a box smaller than a cell still gets the cell holding its centre
    cell = (torch.div(centre, stride, rounding_mode="floor")).long()
    cx = cell[:, 0].clamp(0, w - 1)
    cy = cell[:, 1].clamp(0, h - 1)
    positive = candidate.clone()
    positive[cy * w + cx, torch.arange(boxes.shape[0], device=boxes.device)] = True
    if visible is not None:
        seen = candidate & visible
        positive = torch.where(seen.any(dim=0, keepdim=True), seen, positive)
    low, high = level_sides(strides, stride)
    side = cxcywh[:, 2:].max(dim=1).values                       # (M,)
    positive &= ((side >= low) & (side <= high)).unsqueeze(0)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand(p, -1)
    area = torch.where(positive, area, torch.full_like(area, float("inf")))
    best_area, match = area.min(dim=1)                           # (P,)
    match[torch.isinf(best_area)] = -1
    pos = match >= 0
    target[pos, labels[match[pos]]] = 1.0
    return match, target


def perception_loss(outputs: dict[str, Any], targets: list[dict[str, Tensor]], *, strides: Sequence[int],
                    num_classes: int, dice_index: Tensor, seg_stride: int = 1,
                    cls_loss: str = "focal", box_loss: str = "giou",
                    assignment: str = "centre") -> dict[str, Tensor]:
    """targets[i]: {"boxes" (M, 4) xyxy px, "labels" (M,) class index, "mask" (H, W) seg class ids
    (IGNORE_INDEX left out)}; ``dice_index`` (D,) the seg class ids of the Dice term. Returns
    {"cls", "box", "seg", "dice", "total"}.

    ``cls_loss``: ``focal`` or ``quality_focal`` (module docstring). At AP@0.5 a far car's box
    8 px wide is a miss at IoU 0.4, and non-maximum suppression keeps the best-scored box, so a
    score that follows the IoU keeps the best-placed one. ``box_loss``: ``giou`` or
    ``giou_nwd`` (module docstring). ``assignment``: ``centre`` or ``visible`` (module docstring).

    ``seg_stride``: the segmentation terms are taken every ``seg_stride`` px of the mask (the
    centre pixel of each s x s block, with the logits upsampled to that grid). At 1 they take
    about 40 % of a whole-frame training step on a 2-core CPU; at 2 a quarter of that, and a
    road line a few px wide still gets a sample across it."""
    if seg_stride < 1:
        raise ValueError(f"seg_stride must be at least 1, got {seg_stride}")
    if cls_loss not in CLS_LOSSES:
        raise ValueError(f"cls_loss must be 'focal' or 'quality_focal', got {cls_loss!r}")
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {', '.join(BOX_LOSSES)}, got {box_loss!r}")
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {', '.join(ASSIGNMENTS)}, got {assignment!r}")
    seg = outputs["seg"].float()
    points, cls_flat, dist = flatten_levels(outputs, strides)    # (P, 2), (B, P, C), (B, P, 4)
    device = cls_flat.device
    cls_targets, pred_boxes, gt_boxes = [], [], []
    for i, t in enumerate(targets):
        boxes = t["boxes"].to(device, torch.float32).reshape(-1, 4)
        labels = t["labels"].to(device, torch.long).reshape(-1)
        matches, level_targets, start = [], [], 0
        for stride, cls in zip(strides, outputs["cls"]):
            h, w = cls.shape[-2:]
            visible = (visible_cells(t["mask"].to(device), labels, h, w, stride)
                       if assignment == "visible" and labels.numel() else None)
            m, ct = assign(boxes, labels, points[start:start + h * w], h, w, stride,
                           strides=strides, num_classes=num_classes, visible=visible)
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
    else:
        positive = cls_target > 0                                # (B, P, C), one class per assigned cell
        quality = torch.zeros_like(cls_target)
        if pred.shape[0]:  # cells in (image, point) order, as pred and gt_boxes were gathered
            quality[positive] = paired_iou(pred.detach(), torch.cat(gt_boxes)).clamp(min=0.01)
        loss_cls = quality_focal_loss(cls_flat, quality) / num_pos
    if pred.shape[0]:
        truth = torch.cat(gt_boxes)
        loss_box = generalized_box_iou_loss(pred, truth, reduction="mean")
        if box_loss == "giou_nwd":
            loss_box = 0.5 * loss_box + 0.5 * (1.0 - gaussian_wasserstein_similarity(pred, truth)).mean()
    else:
        loss_box = dist.sum() * 0.0
    masks = torch.stack([t["mask"].to(seg.device, torch.long) for t in targets])  # (B, H, W)
    if seg_stride > 1:
        masks = masks[:, seg_stride // 2::seg_stride, seg_stride // 2::seg_stride]  # (B, H/s, W/s)
    seg_up = F.interpolate(seg, size=masks.shape[-2:], mode="bilinear", align_corners=False)  # (B, K, H/s, W/s)
    log_probs = F.log_softmax(seg_up, dim=1)                      # once for both terms
    loss_seg = F.nll_loss(log_probs, masks, ignore_index=IGNORE_INDEX)
    loss_dice = dice_loss(log_probs, masks, dice_index)
    total = loss_cls + 2.0 * loss_box + loss_seg + loss_dice
    return {"cls": loss_cls, "box": loss_box, "seg": loss_seg, "dice": loss_dice, "total": total}


def dice_loss(log_probs: Tensor, masks: Tensor, dice_index: Tensor) -> Tensor:
    """1 - soft Dice over the batch, averaged over the classes in ``dice_index`` (D,); log_probs
    (B, K, H, W) (log-softmax over K), masks (B, H, W)."""
    if dice_index.numel() == 0:
        return log_probs.sum() * 0.0
    valid = (masks != IGNORE_INDEX).unsqueeze(1)                  # (B, 1, H, W)
    probs = log_probs.index_select(1, dice_index).exp() * valid   # (B, D, H, W)
    onehot = (masks.unsqueeze(1) == dice_index.view(1, -1, 1, 1)) & valid
    onehot = onehot.to(probs.dtype)
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0                          # a class absent from the batch says nothing
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return (1.0 - dice)[present].mean() if present.any() else log_probs.sum() * 0.0


def gaussian_wasserstein_similarity(a: Tensor, b: Tensor, scale_px: float = NWD_SCALE_PX) -> Tensor:
    """NWD of a[i] and b[i]: boxes (N, 4) xyxy as Gaussians of their centre and half size ->
    exp(-W2 / scale_px) (N,), 1 for equal boxes (module docstring)."""
    ca, cb = box_convert(a, "xyxy", "cxcywh"), box_convert(b, "xyxy", "cxcywh")
    diff = torch.cat([ca[:, :2] - cb[:, :2], 0.5 * (ca[:, 2:] - cb[:, 2:])], dim=1)
    return torch.exp(-torch.sqrt(diff.square().sum(1) + 1e-7) / scale_px)


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of a[i] with b[i]; a, b (N, 4) xyxy -> (N,). (torchvision's box_iou is all pairs, N x N.)"""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = box_area(a) + box_area(b) - inter
    return inter / union.clamp(min=1e-6)


def quality_focal_loss(logits: Tensor, quality: Tensor, beta: float = 2.0) -> Tensor:
    """Quality focal loss (GFL), summed: binary cross-entropy towards a soft target in [0, 1],
    weighted by |target - sigmoid(logit)|^beta (beta 2, the paper's), so cells already near their
    target count little, as in focal loss. logits, quality (B, P, C)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, quality, reduction="none")
    return (ce * (quality - prob).abs().pow(beta)).sum()

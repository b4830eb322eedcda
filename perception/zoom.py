"""The horizon zoom: the main camera's rows around the horizon read a second time, magnified.

About 40 % of the vehicles in the validation frames are under 12 px tall (40 m and more away).
The network finds nearly all of them, but cannot place a 5x7 px box to IoU 0.5: a pixel at each
edge is the difference (docs/perception.md, "Where it falls short"). Magnified twice, such a car
is 10x14 px, a size the network places well. Far objects meet the ground just below the horizon
of a flat road, so the band is a few rows around the row where the horizontal ray in the
camera's heading lands (perception/geometry.py ``elevation_row``): ``ZOOM_ABOVE`` of its rows
above that row (a far car's roof, a rise in the road), the rest below (its wheels, a dip).
Far cars are near the middle of the frame too (96 % of the vehicles under 12 px in 600 Town02
validation frames within its middle half, 98 % within the middle two thirds), so the band spans
a share of the frame's width about its centre column (0.675 by default: 432 of 640 columns).

    band = zoom_view(360, 640, K, T_ego_cam, (360, 640), rows=80, scale=2.0, width_share=0.675)
    # Band(top=131, bottom=211, left=104, right=536, size=(160, 864))
    boxes, scores, labels = merge(whole, zoomed, band, nms_iou=0.5)

The zoomed boxes join the whole frame's in its pixels. One on the band's edge (top, bottom or
side) is cut by the band and dropped, and so is one ``ZOOM_MAX_BOX_PX`` tall or more (larger
objects are the whole frame's: their boxes there are placed with the context the band lacks),
and one of a class the zoom is not for (``ZOOM_CLASSES``: vehicles and static obstacles). A band
box and a frame box of one class that overlap by ``TWIN_IOU`` are one object seen twice: they
become one box, their corners averaged with their scores as weights (as weighted box fusion,
Solovyev et al. 2021, joins an ensemble's boxes), scored as the chance that either view is
right, 1 - (1 - s_band)(1 - s_frame) (a noisy-OR, which takes the two views' errors as
independent; they are not wholly, so the rule was chosen on tuning sets, below). Two views of a
6x8 px car each miss its edges by a pixel or so, and their mean misses by less; a far car both
views find at 0.2 is likelier there than either alone says. Then one non-maximum suppression
per class keeps the surer of any boxes left on one object. On the tuning sets (collect seeds
9-11, 1568 vehicles under 12 px) joining twins lifted their recall from 0.856 to 0.887 (seed
11, the hardest, 0.825 to 0.871) against keeping the surer of the two, and moved vehicle AP by
-0.002 to +0.009 (docs/perception.md, "The horizon zoom").
The learned stage (perception/learned.py) and the evaluation (perception/evaluate.py) both use
this module, so the figures the model card states are the stage's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms, box_iou

from stagepilot.perception.geometry import elevation_row

ZOOM_ABOVE = 0.4        # share of the band's rows above the horizon row
ZOOM_MAX_BOX_PX = 20.0  # [camera px] zoomed boxes at least this tall are left to the whole frame
EDGE_PX = 1.0           # [camera px] a zoomed box this close to the band's top or bottom row is cut
TWIN_IOU = 0.3          # a band box and a frame box of one class overlapping this much are one object
# the classes the band's boxes are taken for. A far light is matched to its mapped head within
# metres, and the band's light boxes cost the lights' AP (seed 9: red 0.896 -> 0.843, green
# 0.927 -> 0.813 with them). Far walkers' band boxes lifted pedestrian AP (seed 9: 0.845 -> 0.873)
# but their jittery far positions made the closed-loop crossing's approach jerkier than nuPlan's
# bound (p95 4.28 m/s^3 against 4.13 with the whole rig): the stage reads walkers from the frame.
ZOOM_CLASSES = ("vehicle", "static_obstacle")
TRAINING_ROWS = 80      # the band whose middle a training item's window is centred on (perception/data.py)


@dataclass(frozen=True)
class Band:
    """The part of a camera's frame the zoom reads: rows ``top`` to ``bottom`` and columns
    ``left`` to ``right`` of the camera's pixels, read at the network input ``size`` (h, w)."""

    top: int
    bottom: int
    left: int
    right: int
    size: tuple[int, int]


def zoom_of(config) -> tuple[float, int, float] | None:
    """The zoom a ``LearnedPerceptionConfig`` sets: (magnification, rows, width share), None when off."""
    if config.horizon_zoom <= 1.0 or config.horizon_zoom_rows <= 0:
        return None
    return float(config.horizon_zoom), int(config.horizon_zoom_rows), float(config.horizon_zoom_width)


def zoom_view(height: int, width: int, K, T_ego_cam, input_size: tuple[int, int], rows: int,
              scale: float, width_share: float = 1.0) -> Band | None:
    """The band of a camera's frame the zoom reads; None when the zoom is off (``scale`` <= 1 or
    no rows) or the camera cannot see the horizon. ``rows``: the band's height at the network's
    input scale (``input_size`` for the whole frame), before the magnification; ``width_share``:
    the share of the frame's width it spans, about the centre column."""
    if scale <= 1.0 or rows <= 0:
        return None
    horizon = elevation_row(K, T_ego_cam, 0.0)
    in_h, in_w = input_size
    band = min(max(int(round(rows * height / in_h)), 1), height)   # camera rows
    if horizon is None or not 0.0 <= horizon < height:
        return None
    top = min(max(int(round(horizon - ZOOM_ABOVE * band)), 0), height - band)
    columns = min(max(int(round(width * width_share)), 1), width)
    left = (width - columns) // 2
    size = (max(int(round(band * in_h / height * scale)), 1), max(int(round(columns * in_w / width * scale)), 1))
    return Band(top, top + band, left, left + columns, size)


def merge(whole: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
          zoomed: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
          band: Band, nms_iou: float, classes: list[int] | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole frame's detections and the band's, as (boxes (N, 4) xyxy, scores (N,), labels
    (N,) int) each, both in the whole frame's pixels -> one set (module docstring), highest
    score first. ``band``: a Band, or anything with its top, bottom, left and right (the stage
    passes its operating View of the band). ``classes``: the labels the band's boxes are taken
    for (None: all)."""
    taken = _small_inside(zoomed[0], band)
    if classes is not None:
        taken &= torch.isin(zoomed[2].long(), torch.tensor(classes, dtype=torch.long))
    zb, zs, zl = zoomed[0][taken].float(), zoomed[1][taken].float(), zoomed[2][taken].long()
    kept = batched_nms(zb, zs, zl, nms_iou)                         # the band's own duplicates
    zb, zs, zl = zb[kept], zs[kept], zl[kept]
    wb, ws, wl = whole[0].float(), whole[1].float(), whole[2].long()
    band_at, frame_at = _twins(zb, zl, wb, wl)
    single = torch.ones(len(wb), dtype=torch.bool)
    single[frame_at] = False
    if len(band_at):
        a, b = zs[band_at, None], ws[frame_at, None]
        zb[band_at] = (zb[band_at] * a + wb[frame_at] * b) / (a + b).clamp_min(1e-6)
        zs[band_at] = 1.0 - (1.0 - zs[band_at]) * (1.0 - ws[frame_at])
    boxes, scores, labels = torch.cat([wb[single], zb]), torch.cat([ws[single], zs]), torch.cat([wl[single], zl])
    kept = batched_nms(boxes, scores, labels, nms_iou)              # sorted by score
    return boxes[kept], scores[kept], labels[kept]


def _twins(band_boxes: torch.Tensor, band_labels: torch.Tensor, frame_boxes: torch.Tensor,
           frame_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of one object's band box and frame box: indices (band, frame), each box in one pair
    at most. The band's boxes pick in their order (surest first), each the frame box of its class
    it overlaps most, by at least TWIN_IOU."""
    if not len(band_boxes) or not len(frame_boxes):
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    iou = box_iou(band_boxes, frame_boxes)
    iou[band_labels[:, None] != frame_labels[None, :]] = 0.0
    pairs = []
    for i in range(len(band_boxes)):
        j = int(iou[i].argmax())
        if iou[i, j] >= TWIN_IOU:
            pairs.append((i, j))
            iou[:, j] = 0.0
    return (torch.tensor([i for i, _ in pairs], dtype=torch.long),
            torch.tensor([j for _, j in pairs], dtype=torch.long))


def _small_inside(boxes: torch.Tensor, band: Band) -> torch.Tensor:
    """(N,) bool: boxes under ZOOM_MAX_BOX_PX tall lying inside the band, off its edges."""
    return ((boxes[:, 1] > band.top + EDGE_PX) & (boxes[:, 3] < band.bottom - EDGE_PX)
            & (boxes[:, 0] > band.left + EDGE_PX) & (boxes[:, 2] < band.right - EDGE_PX)
            & (boxes[:, 3] - boxes[:, 1] < ZOOM_MAX_BOX_PX))


def merge_arrays(whole_boxes: np.ndarray, whole_scores: np.ndarray, whole_labels: list[str],
                 zoom_boxes: np.ndarray, zoom_scores: np.ndarray, zoom_labels: list[str],
                 band: Band, nms_iou: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``merge`` on the stage's arrays (the band's boxes of ZOOM_CLASSES): boxes (N, 4) and scores
    (N,) as numpy, labels as class names; the band's boxes in its own crop's pixels (shifted here
    to the frame's)."""
    names = sorted(set(whole_labels) | set(zoom_labels))
    index = {name: i for i, name in enumerate(names)}
    shift = np.array([band.left, band.top, band.left, band.top], np.float32)

    def tensors(boxes, scores, labels, offset=0.0):
        return (torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4) + offset),
                torch.from_numpy(np.asarray(scores, np.float32).reshape(-1)),
                torch.tensor([index[n] for n in labels], dtype=torch.long))

    boxes, scores, labels = merge(tensors(whole_boxes, whole_scores, whole_labels),
                                  tensors(zoom_boxes, zoom_scores, zoom_labels, shift), band, nms_iou,
                                  [index[n] for n in ZOOM_CLASSES if n in index])
    return boxes.numpy().astype(float), scores.numpy(), [names[int(i)] for i in labels]

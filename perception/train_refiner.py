"""`stagepilot train-refiner`: the box refiner (perception/refine.py) trained on one detector's boxes.

    stagepilot train-refiner --data DIR --out FILE [--checkpoint CKPT] [--epochs 24] [--seed 0]

1. The detector reads the dataset's train split as the stage reads it (the horizon zoom joined,
   perception/evaluate.py ``stage_detections``). Each vehicle box under the refiner's height
   limit with a score of at least its ``min_score`` is paired with the labelled vehicle it overlaps
   most, if by IoU >= ``MATCH_IOU``; the pair gives a crop of the frame and the moves that take
   the box to the label.
2. The refiner learns those moves (smooth L1, AdamW, one-cycle; crops mirrored at random with their
   x moves swapped, brightness scaled 0.8-1.2).
3. The val split is evaluated with and without it: vehicle AP@0.5 and recall by height.

The file records the detector's sha256, the data's manifest hash, the command, the time and the
figures. The same data, checkpoint, epochs and seed give the same refiner on one machine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.ops import box_iou
from tqdm import tqdm

from stagepilot.core.config import StackConfig
from stagepilot.perception import evaluate as ev
from stagepilot.perception.checkpoint import load_checkpoint
from stagepilot.perception.data import PerceptionDataset, collate, manifest_record
from stagepilot.perception.checkpoint import file_sha256
from stagepilot.perception.refine import (CLASSES, MAX_HEIGHT_PX, MIN_SCORE, WIDTH, BoxRefiner, Refinement, box_sizes,
                                          crops, moves_towards, save_refiner, small_boxes)
from stagepilot.perception.zoom import zoom_of

MATCH_IOU = 0.25      # a box is paired with the label it overlaps most, if by at least this
BATCH = 256
LR = 2e-3


@torch.no_grad()
def capture(model, data: str | Path, split: str, config: StackConfig, *, show_progress: bool = True
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The refiner's training pairs from the stage's detections on a split: crops (N, 3, 24, 48)
    uint8, box sizes (N, 2) px and target moves (N, 4)."""
    model.eval().to(memory_format=torch.channels_last)
    dataset = PerceptionDataset(data, split, input_size=tuple(model.input_size))
    cameras = ev._cameras(dataset, config)
    main = (dataset.camera or {}).get("name")
    zoom = zoom_of(config.perception.learned)
    ids = torch.tensor([model.classes.index(c) for c in CLASSES])
    pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    loader = DataLoader(dataset, batch_size=8, collate_fn=collate)
    for images, targets in tqdm(loader, desc=f"boxes {split}", unit="batch", disable=not show_progress, leave=False):
        images = images.contiguous(memory_format=torch.channels_last)
        dets = ev.stage_detections(model, images, model(images), targets, cameras, zoom, False, main,
                                   config.perception.learned.nms_iou)
        for image, det, tgt in zip(images, dets, targets):
            pick = small_boxes(det["boxes"].float(), det["scores"], torch.isin(det["labels"], ids))
            labels = tgt["boxes"][torch.isin(tgt["labels"], ids)].float()
            if not len(pick) or not len(labels):
                continue
            boxes = det["boxes"].float()[pick]
            best, j = box_iou(boxes, labels).max(1)
            keep = best >= MATCH_IOU
            if not keep.any():
                continue
            boxes = boxes[keep]
            c = crops(image, boxes).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
            pieces.append((c, box_sizes(boxes), moves_towards(boxes, labels[j[keep]])))
    if not pieces:
        raise ValueError(f"{data}: no small vehicle box of the detector overlaps a label in split {split!r}")
    return tuple(torch.cat(p) for p in zip(*pieces))


def fit(crops_u8: torch.Tensor, sizes: torch.Tensor, moves: torch.Tensor, *, epochs: int, seed: int = 0,
        batch: int = BATCH, width: int = WIDTH, show_progress: bool = True) -> tuple[BoxRefiner, list[float]]:
    """Train a BoxRefiner on the pairs -> (the refiner in eval mode, mean loss per epoch)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = BoxRefiner(width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps_per_epoch = (len(crops_u8) + batch - 1) // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=epochs * steps_per_epoch)
    losses = []
    model.train()
    bar = tqdm(total=epochs * steps_per_epoch, desc="refiner", unit="step", disable=not show_progress, leave=False)
    for _ in range(epochs):
        order = torch.randperm(len(crops_u8), generator=generator)
        total = 0.0
        for k in range(0, len(order), batch):
            i = order[k:k + batch]
            x, t = crops_u8[i].float().div_(255.0), moves[i].clone()
            flip = torch.rand(len(i), generator=generator) < 0.5
            x[flip] = x[flip].flip(-1)
            t[flip] = torch.stack([-t[flip][:, 2], t[flip][:, 1], -t[flip][:, 0], t[flip][:, 3]], 1)
            x = x * (0.8 + 0.4 * torch.rand(len(i), 1, 1, 1, generator=generator))
            loss = F.smooth_l1_loss(model(x, sizes[i]), t, beta=0.02)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(i)
            bar.update()
        losses.append(total / len(crops_u8))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    return model.eval(), losses


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    return {"vehicle_ap50": result["ap50"]["vehicle"], "recall_by_height": result["recall_by_height"]["vehicle"]}


def train_refiner(data: str | Path, out: str | Path, checkpoint: str | Path, config: StackConfig, *,
                  epochs: int = 24, seed: int = 0, show_progress: bool = True, command: str = "") -> dict[str, Any]:
    """Capture, fit, evaluate and save (module docstring) -> the saved meta."""
    start = time.perf_counter()
    model, _ = load_checkpoint(checkpoint, map_location="cpu")
    crops_u8, sizes, moves = capture(model, data, "train", config, show_progress=show_progress)
    captured = time.perf_counter()
    refiner, losses = fit(crops_u8, sizes, moves, epochs=epochs, seed=seed, show_progress=show_progress)
    trained = time.perf_counter()
    meta = {"detector_sha256": file_sha256(checkpoint), "classes": list(CLASSES), "max_height_px": MAX_HEIGHT_PX,
            "min_score": MIN_SCORE, "match_iou": MATCH_IOU, "epochs": epochs, "seed": seed, "pairs": len(crops_u8),
            "loss": [round(v, 5) for v in losses], "training_command": command,
            "data_manifest": manifest_record(data),
            "minutes": {"capture": round((captured - start) / 60, 2), "train": round((trained - captured) / 60, 2)}}
    refinement = Refinement(refiner, meta, CLASSES, MAX_HEIGHT_PX, MIN_SCORE)
    if (Path(data) / "annotations" / "val.json").is_file():
        before = ev.evaluate_model(model, data, "val", config=config, show_progress=show_progress)
        after = ev.evaluate_model(model, data, "val", config=config, show_progress=show_progress,
                                  refinement=refinement)
        meta["val"] = {"without": _figures(before), "with": _figures(after)}
    save_refiner(out, refiner, meta)
    return meta

"""`stagepilot train`: train PerceptionNet on a collected dataset.

    stagepilot train --config configs/training/default.yaml [--resume CKPT] [key.path=value ...]

The YAML (validated, unknown keys rejected) sets the data folder, the schedule and the model.
Every epoch writes ``<out>/epoch_NNN.pt`` (and a copy ``last.pt``) with ``save_checkpoint``:
the state dict plus meta (classes, input size, architecture, the exact training command, the
data manifest's path and sha256, the epoch, and under ``resume`` the optimizer and LR-scheduler
state). Everything in it is tensors and plain containers, so ``torch.load(weights_only=True)``
reads it. After the last epoch the validation split is evaluated (perception/evaluate.py) and
``<out>/model.pt`` is written with those metrics and without the resume state (also without a
validation split when the weights were averaged, since no epoch checkpoint holds them).

Seeded: torch, numpy and random from ``seed``; the sample order of epoch e is a permutation
drawn from (seed, e) and augmentation draws from (seed, e, index), so a resumed run sees the
same batches as an uninterrupted one. ``--resume CKPT`` continues at the epoch after the
checkpoint's; with the same ``epochs`` it restores the LR schedule exactly, with more epochs
it re-plans the schedule for the new total at the step reached (optimizer state kept).

``average_last: N`` makes the final weights the mean of the weights at the end of each of the
last N epochs (stochastic weight averaging, Izmailov et al. 2018; for detectors "SWA Object
Detection", Zhang et al. 2020, which averages 12 extra epochs of a cyclical rate), usually with
``schedule: cyclic`` (each epoch's rate falls from ``lr`` to a hundredth of it, so that every
averaged point is a low-rate one). The running mean travels in each epoch checkpoint's resume
state, and BatchNorm statistics are re-estimated for the averaged weights as for any other.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from stagepilot.perception.data import (
    Augment,
    PerceptionDataset,
    collate,
    manifest_record,
)
from stagepilot.perception.checkpoint import (
    load_backbone_weights,
    load_checkpoint,
    load_grown,
    recalibrate_batchnorm,
    save_checkpoint,
)
from stagepilot.perception.labels import CLASSES, SEG_CLASSES
from stagepilot.perception.network import DEFAULT_ARCHITECTURE, build_model
from stagepilot.core.config import load_stack
from stagepilot.core.config_load import load_config
from stagepilot.perception.evaluate import evaluate_model
from stagepilot.core.config_base import ConfigError, Strict
from torch.utils.data import DataLoader
from tqdm import tqdm

BN_RECALIBRATION_BATCHES = 50  # batches of training images that re-estimate BatchNorm statistics


class ModelOptions(Strict):
    architecture: str = DEFAULT_ARCHITECTURE
    input_size: tuple[int, int] = (288, 512)  # (H, W) the images are resized to
    backbone_weights: str | None = None       # a local torchvision ImageNet state dict; never downloaded


class AugmentOptions(Strict):
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    brightness: float = Field(0.2, ge=0.0, lt=1.0)
    contrast: float = Field(0.2, ge=0.0, lt=1.0)
    crop: tuple[int, int] | None = None        # (H, W) random training window of the input-size image
    scale: tuple[float, float] = (1.0, 1.0)    # random zoom range before the crop
    whole_frames_last: int = Field(0, ge=0)    # the last N epochs see whole frames (no crop, no zoom)
    # share of the window items that show what the stage's horizon zoom reads (perception/zoom.py):
    # the frame magnified horizon_zoom_scale times, the window on its horizon band
    horizon_zoom: float = Field(0.0, ge=0.0, le=1.0)
    horizon_zoom_scale: float = Field(2.0, ge=1.0, le=4.0)

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentOptions":
        if not 0.0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale: need 0 < low <= high, got {list(self.scale)}")
        if self.crop is not None and min(self.crop) < 32:
            raise ValueError(f"crop: at least 32 px each side, got {list(self.crop)}")
        return self


class TrainConfig(Strict):
    data: str                                  # dataset folder written by `stagepilot collect`
    out: str = "runs/train/default"            # checkpoints go here
    init: str | None = None                    # start from this checkpoint's weights (fine-tuning; fresh optimizer)
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    schedule: Literal["cosine", "onecycle", "cyclic"] = "onecycle"  # cyclic: cosine from lr down, every epoch
    average_last: int = Field(0, ge=0)         # final weights: the mean of the last N epochs' (module docstring)
    grad_clip: float = Field(10.0, gt=0.0)
    seed: int = 0
    num_workers: int = Field(1, ge=0)
    threads: int | None = Field(None, ge=1)    # torch CPU threads (default: torch's choice)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 (fp16 without bf16) on CUDA, off on CPU
    limit_frames: int | None = Field(None, ge=1)  # use only the first N training frames
    val_split: str | None = "val"             # evaluated after the last epoch; null to skip
    seg_loss_stride: int = Field(1, ge=1, le=8)  # segmentation loss on every Nth mask pixel (PerceptionNet.loss)
    cls_loss: Literal["focal", "quality_focal"] = "focal"  # detection class loss (PerceptionNet.loss)
    box_loss: Literal["giou", "giou_nwd"] = "giou"  # detection box loss (perception/targets.py)
    assignment: Literal["centre", "visible"] = "centre"  # which cells learn a box (perception/targets.py)
    model: ModelOptions = ModelOptions()
    augment: AugmentOptions = AugmentOptions()

    @model_validator(mode="after")
    def _whole_frames(self) -> "TrainConfig":
        if self.augment.whole_frames_last > self.epochs:
            raise ValueError(f"augment.whole_frames_last: {self.augment.whole_frames_last} is more than "
                             f"epochs ({self.epochs})")
        if self.average_last > self.epochs:
            raise ValueError(f"average_last: {self.average_last} is more than epochs ({self.epochs})")
        return self


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file, then `key.path=value` overrides -> TrainConfig; problems raise ConfigError naming the key."""
    return load_config(TrainConfig, [path], overrides)  # type: ignore[return-value]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_augment(config: TrainConfig, epoch: int) -> Augment:
    """The augmentation of 0-based ``epoch``: the last ``augment.whole_frames_last`` epochs see whole
    frames (no crop, no zoom), the others the configured crop."""
    aug = Augment(**config.augment.model_dump(exclude={"whole_frames_last"}))
    if epoch >= config.epochs - config.augment.whole_frames_last:
        return dataclasses.replace(aug, crop=None, scale=(1.0, 1.0), horizon_zoom=0.0)
    return aug


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    if config.amp == "fp16" or (config.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=0.15)
    if config.schedule == "cyclic":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=steps_per_epoch,
                                                                    eta_min=config.lr * 0.01)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=config.lr * 0.01)


def _add_to_average(average: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """``average`` ({"n": epochs averaged, "state": parameter name -> mean}) with ``model``'s
    parameters added."""
    n = average["n"] + 1
    state = {name: (param.detach().float().clone() if n == 1
                    else average["state"][name] + (param.detach().float() - average["state"][name]) / n)
             for name, param in model.named_parameters()}
    return {"n": n, "state": state}


def _to_plain(value: Any) -> Any:
    """Optimizer / scheduler state -> tensors and plain containers only (weights_only loading)."""
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None  # functions (older schedulers keep their anneal function): rebuilt by the constructor


def _from_plain_scheduler(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if v is not None or k in ("_last_lr",)}


def train(config: TrainConfig, *, resume: str | Path | None = None, command: str = "",
          show_progress: bool = True, device: str | torch.device | None = None) -> dict[str, Any]:
    """Train; returns {"out", "checkpoint" (last epoch), "model" (final, or None), "losses" (mean per epoch),
    "metrics", "epoch"}."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    out = Path(config.out)
    input_size = tuple(config.model.input_size)
    aug = epoch_augment(config, 0)
    train_set = PerceptionDataset(config.data, "train", input_size=input_size, augment=aug, seed=config.seed,
                                  limit=config.limit_frames)
    if len(train_set) == 0:
        raise ConfigError(f"{config.data}: the train split holds no frames")
    try:
        model = build_model(config.model.architecture, input_size=input_size)
    except ValueError as exc:
        raise ConfigError(f"model.architecture: {exc}") from None
    if config.model.backbone_weights is not None:
        load_backbone_weights(model, config.model.backbone_weights)
    if config.init is not None and resume is None:
        if not Path(config.init).is_file():
            raise ConfigError(f"init: checkpoint {config.init} not found")
        model, _ = load_grown(config.init, model, map_location=device)  # weights only; optimizer starts fresh
    model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    scheduler = _scheduler(optimizer, config, steps_per_epoch)
    start_epoch, losses = 0, []
    average: dict[str, Any] = {"n": 0, "state": {}}  # running mean of the averaged epochs' parameters
    if resume is not None:
        model, meta = load_checkpoint(resume, model, map_location=device)
        state = meta.get("resume")
        if not state:
            raise ConfigError(f"{resume}: holds no optimizer state to resume from (a final model.pt?)")
        start_epoch, losses = int(meta["epoch"]), list(state.get("losses", []))
        if start_epoch > config.epochs:
            raise ConfigError(f"{resume}: already trained {start_epoch} epochs, more than epochs ({config.epochs})")
        optimizer.load_state_dict(state["optimizer"])
        average = state.get("average", average)
        if state.get("plan") == [config.epochs, steps_per_epoch, config.schedule]:
            scheduler.load_state_dict(_from_plain_scheduler(state["scheduler"]))
        else:  # epochs (or the data) changed: re-plan the schedule for the new total, at the step reached
            scheduler = _scheduler(optimizer, config, steps_per_epoch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
                for _ in range(start_epoch * steps_per_epoch):
                    scheduler.step()
    amp_dtype = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    base_meta = {"training_command": command, "data_manifest": manifest_record(config.data),
                 "config": config.model_dump(mode="json")}
    checkpoint = None
    for epoch in range(start_epoch, config.epochs):
        model.train()
        train_set.epoch = epoch
        train_set.augment = epoch_augment(config, epoch)
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        loader = DataLoader(train_set, batch_size=config.batch_size, sampler=order.tolist(), collate_fn=collate,
                            num_workers=config.num_workers, drop_last=False)
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not show_progress,
                   leave=False)
        for images, targets in bar:
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)  # (B, 3, H, W)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = model(images)
            loss = model.loss(outputs, targets, seg_stride=config.seg_loss_stride,
                              cls_loss=config.cls_loss, box_loss=config.box_loss,
                              assignment=config.assignment)  # float32 (the loss casts)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss["total"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += loss["total"].item() * images.shape[0]
            count += images.shape[0]
            bar.set_postfix(loss=f"{total / count:.3f}", cls=f"{loss['cls'].item():.3f}",
                            box=f"{loss['box'].item():.3f}", seg=f"{loss['seg'].item():.3f}")
        bar.close()
        losses.append(total / count)
        if show_progress:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {losses[-1]:.4f}, lr {scheduler.get_last_lr()[0]:.2e}")
        if epoch >= config.epochs - config.average_last:
            average = _add_to_average(average, model)
        meta = {**base_meta, "epoch": epoch + 1, "losses": list(losses),
                "resume": {"optimizer": _to_plain(optimizer.state_dict()),
                           "scheduler": _to_plain(scheduler.state_dict()), "losses": list(losses),
                           "plan": [config.epochs, steps_per_epoch, config.schedule],
                           **({"average": average} if average["n"] else {})}}
        checkpoint = save_checkpoint(out / f"epoch_{epoch + 1:03d}.pt", model, meta)
        shutil.copyfile(checkpoint, out / "last.pt")
    if average["n"]:
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(average["state"][name])
    # Running statistics that lagged the weights during training are re-estimated with the final
    # weights (the averaged ones with ``average_last``) before the model is evaluated and saved
    # (also when a resumed run had every epoch done and stopped before this step).
    calib = DataLoader(train_set, batch_size=config.batch_size, shuffle=False, collate_fn=collate,
                       num_workers=config.num_workers)
    images = (batch[0].to(device).contiguous(memory_format=torch.channels_last) for batch in calib)
    recalibrate_batchnorm(model, itertools.islice(images, BN_RECALIBRATION_BATCHES))
    metrics, final = {}, None
    if config.val_split and (Path(config.data) / "annotations" / f"{config.val_split}.json").is_file():
        metrics = evaluate_model(model, config.data, config.val_split, device=device, batch_size=config.batch_size,
                                 show_progress=show_progress, config=load_stack(), zoom=False)
    if metrics or average["n"]:  # averaged weights are in no epoch checkpoint: model.pt holds them
        final = save_checkpoint(out / "model.pt", model, {**base_meta, "epoch": config.epochs, "losses": losses,
                                                          **({"metrics": {f"{config.val_split}": metrics}}
                                                             if metrics else {})})
    return {"out": out, "checkpoint": checkpoint, "model": final, "losses": losses, "metrics": metrics,
            "epoch": config.epochs, "classes": list(CLASSES), "seg_classes": list(SEG_CLASSES)}

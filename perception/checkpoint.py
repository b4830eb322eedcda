"""Checkpoint files of the perception network, and the weights that go into them.

A checkpoint follows the shape of torchvision's weights metadata: one ``torch.save`` dict with the
``state_dict`` and a ``meta`` that carries the classes, the segmentation classes, the input size
and the architecture string (perception/network.py), the metrics reached, the training command
and the data manifest. ``load_checkpoint`` reads it with ``weights_only=True`` and builds the
network its meta names, so a file loads without knowing its architecture beforehand.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stagepilot.core.config_base import ConfigError
from stagepilot.perception.network import BACKBONES, TRUNK_STAGES, PerceptionNet, build_model

META_KEYS = ("classes", "seg_classes", "input_size", "architecture", "metrics", "training_command",
             "data_manifest")


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be read, or that does not fit the requested model (a
    ValueError; the CLI prints it as one line, like a config error)."""


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (a checkpoint's identity), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none (EOFError(''))."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def first_nonfinite(state: dict[str, Any]) -> str | None:
    """The first floating-point tensor of a state dict that holds NaN or infinite values, as
    ``name (12 NaN, 1 inf)``; None when every parameter and buffer is finite."""
    for name, tensor in state.items():
        if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()):
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(tensor).sum())
        counts = [f"{n} {label}" for n, label in ((nan, "NaN"), (int((~finite).sum()) - nan, "inf")) if n]
        return f"{name} ({', '.join(counts)})"
    return None


def load_checkpoint(path: str | Path, model: PerceptionNet | None = None, *,
                    map_location: str | torch.device = "cpu") -> tuple[PerceptionNet, dict[str, Any]]:
    """Read a checkpoint (weights_only) into ``model`` (or a model built from its meta) -> (model, meta).

    Raises CheckpointError (a ValueError) naming the file when it is unreadable (empty, truncated)
    or not a checkpoint, when any parameter or buffer is not finite (a diverged training run would
    otherwise load and make every output NaN), or when its classes, seg classes, input size or
    architecture differ from the requested model's."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        what = "empty file" if path.stat().st_size == 0 else f"{type(exc).__name__}: {_first_line(exc)}"
        raise CheckpointError(f"{path}: not a readable checkpoint ({what})") from exc
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
    bad = first_nonfinite(blob["state_dict"])
    if bad is not None:
        raise CheckpointError(f"{path}: weights are not finite: {bad}")
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: state dict does not fit {want['architecture']}: {exc}") from exc
    return model, meta


def load_grown(path: str | Path, model: PerceptionNet, *,
               map_location: str | torch.device = "cpu") -> tuple[PerceptionNet, dict[str, Any]]:
    """Start ``model`` from a checkpoint of a smaller network that it grows -> (model, the
    checkpoint's meta): the same network with more residual blocks after the stride-4 towers
    (``r{n}`` in perception/network.py). Every weight of the checkpoint goes to its place; the new
    blocks keep their initialisation, which is the identity, so the grown model computes what the
    checkpoint's did (tests/test_perception_model.py). A checkpoint of the model's own architecture
    loads as ``load_checkpoint``. CheckpointError when the model does not grow the checkpoint's."""
    small, meta = load_checkpoint(path, map_location=map_location)
    grows = (small.backbone, small.width, small.levels, small.box_param, small.input_size, small.classes,
             small.seg_classes) == (model.backbone, model.width, model.levels, model.box_param, model.input_size,
                                    model.classes, model.seg_classes) and small.residual4 <= model.residual4
    if not grows:
        raise CheckpointError(f"{path}: {model.architecture} does not grow the checkpoint's {small.architecture} "
                              "(only more stride-4 residual blocks, r{n}, can be added)")
    # the grown model's own state first: its blocks beyond the checkpoint's keep their identity start
    model.load_state_dict({**model.state_dict(), **small.state_dict()})
    return model, meta


def load_backbone_weights(model: PerceptionNet, path: str | Path) -> None:
    """Load a local torchvision MobileNetV3 state dict (ImageNet weights; never downloaded) into the
    model's trunk stages C2..C5. Its ``features.N`` entries go to the stage that holds feature N;
    the 1x1 head and classifier the network leaves out are not read."""
    path = Path(path)
    builder, slices, _ = BACKBONES[model.backbone]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name, part in zip(TRUNK_STAGES, slices):
            stage = getattr(model, name)
            prefixes = tuple(f"features.{i}." for i in range(part.start, part.stop))
            stage.load_state_dict({key[len("features."):]: value for key, value in state.items()
                                   if key.startswith(prefixes)})
    except Exception as exc:
        raise CheckpointError(f"{path}: not a {builder.__name__} state dict ({_first_line(exc)})") from exc


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

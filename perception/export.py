"""`stagepilot export onnx`: the perception network as an ONNX model, checked with onnxruntime.

    stagepilot export onnx [--checkpoint CKPT] --out model.onnx [--opset 18]

The graph takes ``images`` (B, 3, H, W) float RGB in [0, 1] at the checkpoint's input size and
returns the raw head outputs ``cls`` (B, C, H/8, W/8) logits, ``box`` (B, 4, H/8, W/8)
left/top/right/bottom distances [px] and ``seg`` (B, K, H/4, W/4) logits; decoding (score
threshold, NMS) stays outside, as in torchvision's detection exports. The batch, height and
width axes are dynamic: the stage also runs side cameras' bands and half-scale frames through the
same file (perception/operating.py). After writing, the file is run with onnxruntime on a fixed
random batch at the checkpoint's size and on one at a smaller, odd size, and compared with
PyTorch in fp32; the largest absolute difference of each output is reported and must stay
under ``tolerance``.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stagepilot.perception.checkpoint import load_checkpoint
from stagepilot.perception.network import PerceptionNet

def output_names(model: PerceptionNet) -> list[str]:
    """ONNX output names: class logits and box distances per detection stride, then the segmentation
    logits, e.g. cls_s4, cls_s8, box_s4, box_s8, seg."""
    return ([f"cls_s{s}" for s in model.strides] + [f"box_s{s}" for s in model.strides] + ["seg"])


class _Heads(nn.Module):
    """PerceptionNet with a flat tuple of tensors as its output, as ONNX wants."""

    def __init__(self, model: PerceptionNet):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return (*out["cls"], *out["box"], out["seg"])


def export_onnx(model: PerceptionNet, out: str | Path, *, opset: int = 18, tolerance: float = 1e-3,
                meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `model` to `out` as ONNX, run it with onnxruntime and compare with PyTorch.

    Returns {"path", "opset", "input_size", "max_abs_diff": {output: float}, "bytes"}; raises
    RuntimeError when an output differs by more than `tolerance`."""
    import onnx
    import onnxruntime as ort

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a copy: the caller's model keeps its device, dtype and memory format
    model = copy.deepcopy(model).eval().float().to("cpu", memory_format=torch.contiguous_format)
    h, w = model.input_size
    example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    # The torch.export-based exporter: the older TorchScript one (dynamo=False) gave outputs far
    # off PyTorch's for this network under torch 2.14 (max |diff| ~1 on the logits).
    heads = _Heads(model).eval()
    names = output_names(model)
    with contextlib.redirect_stdout(sys.stderr):  # the exporter reports its steps on stdout
        torch.onnx.export(heads, (example,), str(out), input_names=["images"], output_names=names,
                          opset_version=opset, dynamo=True, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64),
                                           2: torch.export.Dim("height", min=32, max=4096),
                                           3: torch.export.Dim("width", min=32, max=4096)},))
    graph = onnx.load(str(out))
    onnx.checker.check_model(graph)
    info = {"architecture": model.architecture, "classes": ",".join(model.classes),
            "seg_classes": ",".join(model.seg_classes), "input_size": f"{h}x{w}"}
    if meta and meta.get("metrics"):
        info["metrics"] = str(meta["metrics"])
    for key, value in info.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(out))

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    other = torch.rand(1, 3, h // 2 + 7, w // 2 + 3, generator=torch.Generator().manual_seed(1))
    diffs = dict.fromkeys(names, 0.0)
    for x in (example, other):
        got = session.run(names, {"images": x.numpy()})
        with torch.inference_mode():
            want = heads(x)
        for name, g, w_ in zip(names, got, want):
            diffs[name] = max(diffs[name], float(np.max(np.abs(g - w_.numpy()))))
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        raise RuntimeError(f"{out}: onnxruntime differs from PyTorch beyond {tolerance}: {bad}")
    return {"path": str(out), "opset": opset, "input_size": [h, w], "max_abs_diff": diffs,
            "bytes": out.stat().st_size}


def export_checkpoint(checkpoint: str | Path | None, out: str | Path, *, opset: int = 18) -> dict[str, Any]:
    from stagepilot.perception.learned import resolve_checkpoint

    path = resolve_checkpoint(None if checkpoint is None else str(checkpoint))
    model, meta = load_checkpoint(path)
    result = export_onnx(model, out, opset=opset, meta=meta)
    result["checkpoint"] = str(path)
    return result

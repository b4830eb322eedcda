"""Latency of our multi-task network against the torchvision pair on one 640x360 frame.

    stagepilot bench perception --json

Both sides run in the same process with the same device, dtype (bf16 autocast where the
device runs it natively, as the stage decides), memory format (channels_last), thread count and ``torch.inference_mode()``:
- ours: what the learned stage runs per frame (perception/learned.py ``NetworkRunner``): the
  640x360 uint8 frame to the device, scaled to the network's input size (the shipped
  checkpoint's), ``PerceptionNet`` forward and ``decode`` (boxes through NMS, the seg map);
  the shipped weights when present, else random init;
- the pair: ``ssdlite320_mobilenet_v3_large`` (its forward includes resize, decoding and NMS)
  plus ``lraspp_mobilenet_v3_large`` (full-resolution logits), 7 classes each, random init.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from stagepilot.perception.learned import SHIPPED_CHECKPOINT, NetworkRunner, native_bf16
from stagepilot.perception.model import DEFAULT_ARCHITECTURE, build_model, load_checkpoint
from stagepilot.core.config import LearnedPerceptionConfig

INPUT_H, INPUT_W = 360, 640


def _time_interleaved(fns: list[Callable[[], Any]], iters: int, warmup: int,
                      device: torch.device) -> list[dict[str, float]]:
    """Time each fn per round, in turn, so drift in machine load hits all of them alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + iters):
        for fn, spent in zip(fns, times):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_ >= warmup:
                spent.append((time.perf_counter() - start) * 1000.0)
    return [{"p50_ms": round(float(np.percentile(t, 50)), 2), "p99_ms": round(float(np.percentile(t, 99)), 2)}
            for t in times]


def bench_perception(iters: int = 30, warmup: int = 5, threads: int | None = None, *,
                     architecture: str | None = None, input_size: tuple[int, int] | None = None) -> dict:
    """Architecture and input size default to the shipped checkpoint's (else the model's defaults)."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if native_bf16(device) else None  # the stage's own rule (precision: auto)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext())

    ours, weights = None, "random"
    if SHIPPED_CHECKPOINT.is_file():
        shipped, meta = load_checkpoint(SHIPPED_CHECKPOINT, map_location=device)
        architecture = architecture or meta["architecture"]
        input_size = tuple(input_size or meta["input_size"])
        if meta["architecture"] == architecture and tuple(meta["input_size"]) == input_size:
            ours, weights = shipped, "shipped"
    if ours is None:
        kwargs = {"input_size": tuple(input_size)} if input_size else {}
        ours = build_model(architecture or DEFAULT_ARCHITECTURE, **kwargs)
    ours = ours.eval().to(device, memory_format=torch.channels_last)
    ssd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=7)
    lraspp = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=7)
    ssd = ssd.eval().to(device, memory_format=torch.channels_last)
    lraspp = lraspp.eval().to(device, memory_format=torch.channels_last)

    frame = torch.rand(1, 3, INPUT_H, INPUT_W, device=device)  # (B, 3, H, W) in [0, 1]
    seg_input = ((frame - torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1))
                 / torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1))
    seg_input = seg_input.contiguous(memory_format=torch.channels_last)

    rgb = (frame[0].permute(1, 2, 0) * 255).to(torch.uint8).cpu().numpy()  # (H, W, 3) camera frame
    stage = NetworkRunner(LearnedPerceptionConfig(device=device.type, threads=threads,
                                                  precision="bf16" if dtype is not None else "fp32"), model=ours)

    def run_ours():
        return stage(rgb)

    def run_pair():
        return ssd([frame[0]]), lraspp(seg_input)["out"]

    with torch.inference_mode(), autocast:
        result_ours, result_pair = _time_interleaved([run_ours, run_pair], iters, warmup, device)
    return {
        "ours": result_ours,
        "torchvision_pair": result_pair,
        "speedup_p50": round(result_pair["p50_ms"] / result_ours["p50_ms"], 2),
        "device": device.type,
        "dtype": "bfloat16" if dtype is not None else "float32",
        "memory_format": "channels_last",
        "threads": threads,
        "input": f"{INPUT_W}x{INPUT_H}",
        "architecture": ours.architecture,
        "ours_input": f"{ours.input_size[1]}x{ours.input_size[0]}",
        "ours_weights": weights,
        "params_m": {"ours": round(sum(p.numel() for p in ours.parameters()) / 1e6, 2),
                     "torchvision_pair": round(sum(p.numel() for m in (ssd, lraspp) for p in m.parameters()) / 1e6, 2)},
    }

"""Latency of our multi-task network against the torchvision pair on one 640x360 frame.

    stagepilot bench perception --json

Both sides run in the same process with the device, dtype and memory format of the stack
config's ``perception.learned`` (device ``auto``: CUDA when present; precision ``auto``: bf16
autocast where the device runs it natively; ``channels_last``), the same thread count (the one
given, else the config's ``threads``, else all cores) and ``torch.inference_mode()``:
- ours: what the learned stage runs per frame (perception/learned.py ``NetworkRunner``, with the
  config's score thresholds and NMS IoU): the 640x360 uint8 frame to the device, scaled to the
  network's input size (the checkpoint's), ``PerceptionNet`` forward and ``decode`` (boxes
  through NMS, the seg map); the configured checkpoint (null: the shipped one, random init when
  it is absent), or random init for another architecture or input size;
- the pair: ``ssdlite320_mobilenet_v3_large`` (its forward includes resize, decoding and NMS)
  plus ``lraspp_mobilenet_v3_large`` (full-resolution logits), 7 classes each, random init;
- ours with the horizon zoom (perception/zoom.py), as the stage runs the main camera at the
  points that read it: the frame, then its band around the horizon magnified (its own network
  call), the band's boxes joined to the frame's. ``speedup_p50`` compares one frame with one
  frame; ``speedup_p50_with_zoom`` what the stage spends on its main camera with the pair.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from stagepilot.perception.checkpoint import load_checkpoint
from stagepilot.perception.learned import SHIPPED_CHECKPOINT, NetworkRunner, resolve_checkpoint
from stagepilot.perception.network import DEFAULT_ARCHITECTURE, IMAGENET_MEAN, IMAGENET_STD, build_model
from stagepilot.core.camera import camera_pose, pinhole_intrinsics
from stagepilot.core.config import LearnedPerceptionConfig
from stagepilot.perception.zoom import merge_arrays, zoom_of, zoom_view

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


def bench_perception(learned: LearnedPerceptionConfig, iters: int = 30, warmup: int = 5,
                     threads: int | None = None, *, architecture: str | None = None,
                     input_size: tuple[int, int] | None = None, camera=None) -> dict:
    """``learned``: the stack config's ``perception.learned``. Architecture and input size default
    to its checkpoint's (else the model's defaults). ``camera``: the rig's main camera (a
    CameraConfig: the stack config's first ``sim.cameras`` entry), whose horizon band the stage
    reads again magnified (perception/zoom.py) and is timed with the frame; None: the frame alone."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    threads = threads or learned.threads or os.cpu_count() or 1
    torch.manual_seed(0)
    ours, weights = None, "random"
    checkpoint = SHIPPED_CHECKPOINT if learned.checkpoint is None else resolve_checkpoint(learned.checkpoint)
    if checkpoint.is_file():
        loaded, meta = load_checkpoint(checkpoint)
        architecture = architecture or meta["architecture"]
        input_size = tuple(input_size or meta["input_size"])
        if meta["architecture"] == architecture and tuple(meta["input_size"]) == input_size:
            ours, weights = loaded, "shipped" if checkpoint == SHIPPED_CHECKPOINT else str(checkpoint)
    if ours is None:
        kwargs = {"input_size": tuple(input_size)} if input_size else {}
        ours = build_model(architecture or DEFAULT_ARCHITECTURE, **kwargs)
    # the stage decides device, dtype and memory format from the config; the pair runs with the same
    # (bf16 autocast when the stage's path runs bf16, in torch or in OpenVINO)
    stage = NetworkRunner(learned.model_copy(update={"threads": threads}), model=ours)
    device, memory_format = stage.device, stage.memory_format
    dtype = torch.bfloat16 if stage.path["dtype"] == "bfloat16" else None
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext())
    ssd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=7)
    lraspp = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=7)
    ssd = ssd.eval().to(device, memory_format=memory_format)
    lraspp = lraspp.eval().to(device, memory_format=memory_format)

    frame = torch.rand(1, 3, INPUT_H, INPUT_W, device=device)  # (B, 3, H, W) in [0, 1]
    seg_input = ((frame - torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1))
                 / torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))
    seg_input = seg_input.contiguous(memory_format=memory_format)
    rgb = (frame[0].permute(1, 2, 0) * 255).to(torch.uint8).cpu().numpy()  # (H, W, 3) camera frame

    def run_ours():
        return stage(rgb)

    def run_pair():
        return ssd([frame[0]]), lraspp(seg_input)["out"]

    fns = [run_ours, run_pair]
    zoom = zoom_of(learned)
    band = zoom and camera is not None and zoom_view(
        INPUT_H, INPUT_W, pinhole_intrinsics(INPUT_W, INPUT_H, camera.fov_deg),
        camera_pose(camera.x, camera.y, camera.z, camera.roll_deg, camera.pitch_deg, camera.yaw_deg),
        stage.input_size, rows=zoom[1], scale=zoom[0], width_share=zoom[2])
    if band:  # the main camera's band, its pose and field of view on the bench's 640x360 frame
        frames, sizes = [rgb, rgb[band.top:band.bottom, band.left:band.right]], [stage.input_size, band.size]

        def run_ours_zoomed():
            whole, zoomed = stage.run(frames, sizes=sizes)
            return merge_arrays(whole.boxes, whole.scores, whole.labels, zoomed.boxes, zoomed.scores, zoomed.labels,
                                band, learned.nms_iou)
        fns.append(run_ours_zoomed)
    with torch.inference_mode(), autocast:
        result_ours, result_pair, *result_zoomed = _time_interleaved(fns, iters, warmup, device)
    zoomed = {}
    if result_zoomed:
        zoomed = {"ours_with_zoom": {**result_zoomed[0], "band": [band.left, band.top, band.right, band.bottom],
                                     "band_input": f"{band.size[1]}x{band.size[0]}"},
                  "speedup_p50_with_zoom": round(result_pair["p50_ms"] / result_zoomed[0]["p50_ms"], 2)}
    return {
        "ours": result_ours,
        "torchvision_pair": result_pair,
        "speedup_p50": round(result_pair["p50_ms"] / result_ours["p50_ms"], 2),
        **zoomed,
        "path": stage.path,
        "device": device.type,
        "dtype": "bfloat16" if dtype is not None else "float32",
        "memory_format": "channels_last" if memory_format == torch.channels_last else "contiguous",
        "threads": threads,
        "input": f"{INPUT_W}x{INPUT_H}",
        "architecture": ours.architecture,
        "ours_input": f"{ours.input_size[1]}x{ours.input_size[0]}",
        "ours_weights": weights,
        "params_m": {"ours": round(sum(p.numel() for p in ours.parameters()) / 1e6, 2),
                     "torchvision_pair": round(sum(p.numel() for m in (ssd, lraspp) for p in m.parameters()) / 1e6, 2)},
    }

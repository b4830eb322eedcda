"""The perception network on onnxruntime: its ONNX export (perception/export.py), exported once
per set of weights into the cache folder, run on onnxruntime's CPU provider in fp32.

`OnnxHeads(model, digest)(images)` returns what `PerceptionNet.forward` does (the raw heads as
torch tensors), so decoding stays the network's own (perception/runner.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

OPSET = 18


def cache_dir() -> Path:
    """$STAGEPILOT_CACHE, else $XDG_CACHE_HOME/stagepilot, else ~/.cache/stagepilot."""
    base = os.environ.get("STAGEPILOT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stagepilot"
    return Path(base)


def cached_export(model, digest: str) -> Path:
    """The model's ONNX export in the cache folder, written on first use: one file for every
    input size and batch (its batch, height and width axes are dynamic), shared by the
    onnxruntime and OpenVINO paths."""
    from stagepilot.perception.export import export_onnx

    path = cache_dir() / "onnx" / f"{digest[:16]}-anysize-opset{OPSET}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # The exporter writes its weights beside the file first; the saved model holds them.
        with tempfile.TemporaryDirectory(dir=path.parent) as work:
            partial = Path(work) / path.name
            export_onnx(model, partial, opset=OPSET)
            os.replace(partial, path)  # whole or absent, whatever another process does meanwhile
    return path


def heads(model, outputs: list[np.ndarray], image_size: tuple[int, int]) -> dict:
    """The exported graph's outputs (in `output_names` order) as `PerceptionNet.forward` gives
    them: torch tensors, the segmentation channels-last (the class argmax over its channels is
    then a pass over contiguous memory: 1.9 ms instead of 11.8 ms to decode)."""
    out = [torch.from_numpy(a) for a in outputs]
    n = len(model.strides)
    seg = out[2 * n].contiguous(memory_format=torch.channels_last)
    return {"cls": out[:n], "box": out[n:2 * n], "seg": seg, "image_size": tuple(image_size)}


class OnnxHeads:
    """One ONNX session for one model. `threads`: onnxruntime's intra-op threads (None: its default)."""

    def __init__(self, model, digest: str, threads: int | None = None):
        import onnxruntime as ort

        from stagepilot.perception.export import output_names

        self.model = model
        self.names = output_names(model)
        self._staging: dict[tuple, np.ndarray] = {}
        path = cached_export(model, digest)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Its threads must not spin after a run: the decoding that follows runs on torch's threads,
        # and spinning ones took its cores (decode p50 9.9 ms instead of 2.0 ms on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Denormal floats flushed to zero: 7-8 % off the rig's batch on a 2-core Intel Xeon
        # (docs/perception.md, "Speed"); values that small change no score or class.
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        self.version = ort.__version__

    def __call__(self, images: torch.Tensor) -> dict:
        x = images.detach().float().cpu().numpy()
        if not x.flags.c_contiguous:  # channels-last frames: into a buffer kept per shape, not a fresh
            staged = self._staging.get(x.shape)  # copy per call (page faults: perception/openvino_backend.py)
            if staged is None:
                staged = self._staging[x.shape] = np.empty(x.shape, np.float32)
            np.copyto(staged, x)
            x = staged
        return heads(self.model, self.session.run(self.names, {"images": x}), tuple(images.shape[-2:]))

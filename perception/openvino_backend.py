"""The perception network on OpenVINO's CPU plugin: the checkpoint's cached ONNX export
(perception/onnx_backend.py), compiled once per input shape, in fp32 or in bf16.

Why a second runtime: on a 2-core AMD EPYC with AVX-512 BF16 and no AMX, one 640x360 frame took
18.8 ms on onnxruntime fp32, 15.0 ms on OpenVINO fp32 and 9.2 ms on OpenVINO bf16; with oneDNN
capped at AVX2, onnxruntime 20.6 ms and OpenVINO fp32 16.6 ms (docs/perception.md, "Speed").
OpenVINO's kernels come from its own oneDNN, which honours ``ONEDNN_MAX_CPU_ISA``, so its AVX2
path can be checked on a newer CPU; onnxruntime's cannot (its MLAS kernels read the CPU itself).

- Shapes: the graph is reshaped to each (batch, 3, h, w) the stage runs and compiled for it
  (0.3 s each; the operating points use at most four), so every run is on static shapes.
- bf16 is OpenVINO's inference-precision hint: it runs the convolutions in bf16 and keeps fp32
  where its plugin judges bf16 too coarse. It compiles only where the CPU has bf16 (with the
  ISA capped at AVX2 the compile fails, and `backend: auto` leaves the candidate out).
- Threads: ``INFERENCE_NUM_THREADS`` as the stage's (2 on a 2-core machine), one stream, the
  latency hint, denormals flushed to zero.

`OpenVinoHeads(model, digest, dtype, threads)(images)` returns what `PerceptionNet.forward`
does, so decoding stays the network's own (perception/runner.py).
"""

from __future__ import annotations

import numpy as np
import torch

from stagepilot.perception.onnx_backend import cached_export, heads

PRECISION_HINT = {"float32": "f32", "bfloat16": "bf16"}


class OpenVinoHeads:
    """The model's export on OpenVINO's CPU plugin at one precision (`dtype`: float32 | bfloat16)."""

    def __init__(self, model, digest: str, dtype: str = "float32", threads: int | None = None,
                 shape: tuple[int, int, int, int] | None = None):
        """``shape``: one (batch, 3, h, w) to compile now, so that a precision this CPU cannot run
        fails here rather than on the first frame."""
        import openvino as ov

        from stagepilot.perception.export import output_names

        if dtype not in PRECISION_HINT:
            raise ValueError(f"OpenVINO path: dtype {dtype!r}, expected one of {sorted(PRECISION_HINT)}")
        self.model, self.dtype = model, dtype
        self.names = output_names(model)
        self.path = cached_export(model, digest)
        self.core = ov.Core()
        self.graph = self.core.read_model(str(self.path))
        self.settings = {"INFERENCE_PRECISION_HINT": PRECISION_HINT[dtype], "PERFORMANCE_HINT": "LATENCY",
                         "NUM_STREAMS": 1, "CPU_DENORMALS_OPTIMIZATION": True}
        if threads:
            self.settings["INFERENCE_NUM_THREADS"] = int(threads)
        self.version = ov.__version__
        self._requests: dict[tuple[int, ...], object] = {}
        if shape is not None:
            self._request(tuple(shape))

    def _request(self, shape: tuple[int, ...]):
        """An inference request of the graph compiled for ``shape``, compiled on first use."""
        request = self._requests.get(shape)
        if request is None:
            self.graph.reshape({"images": list(shape)})
            compiled = self.core.compile_model(self.graph, "CPU", self.settings)
            order = {port.get_any_name(): i for i, port in enumerate(compiled.outputs)}
            missing = [n for n in self.names if n not in order]
            if missing:
                raise RuntimeError(f"{self.path}: outputs {missing} not in the compiled graph")
            request = (compiled.create_infer_request(), [order[n] for n in self.names])
            self._requests[shape] = request
        return request

    def __call__(self, images: torch.Tensor) -> dict:
        x = images.detach().float().cpu().numpy()
        request, order = self._request(tuple(x.shape))
        # Into the request's own input buffer, whatever the frames' memory layout: a fresh
        # contiguous copy per call (8.3 MB for the rig) cost page faults, up to 10 ms a call.
        request.get_input_tensor(0).data[...] = x
        results = request.infer()
        outputs = [np.array(results[i], copy=True) for i in order]  # the request reuses its buffers
        return heads(self.model, outputs, tuple(images.shape[-2:]))

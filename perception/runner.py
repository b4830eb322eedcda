"""The trained PerceptionNet on its device: the learned stage's network runner.

Every image of the camera rig goes through the network as one batch: the uint8 frames are
copied to the device once, scaled to the network's input size there (area filter, as the
training data was), and run under ``torch.inference_mode`` with channels-last memory and bf16
autocast where the device runs it natively. Boxes come back in each camera's pixels; the
segmentation is decoded for the main (first) image only, at the network's size. Raw outputs
that are not finite make the whole batch unusable.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from stagepilot.core.config import ConfigError, LearnedPerceptionConfig
from stagepilot.core.spans import Spans
from stagepilot.perception.checkpoint import load_checkpoint
from stagepilot.perception.decode import stage_class_map
from stagepilot.perception.network import PerceptionNet
from stagepilot.perception.paths import (ONNX_FP32, OPENVINO_BF16, OPENVINO_FP32, TORCH_BF16, TORCH_FP32, Choice,
                                         candidates, choosing, fastest, installed, isa_capped, measure, memory_key,
                                         remember, torch_on_one_thread)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_CHECKPOINT = WEIGHTS_DIR / "mtl_mbv3small_fpn96_s48_seg4_cs.pt"
# The stage takes the segmentation class every 2 px and repeats it (perception/decode.py stage_class_map):
# on the 2-core CPU that is about 3 ms a frame less. It differs from the full-size decision only
# along class edges (about 1 % of the pixels): over the 600 Town02 validation frames the stage's
# map scores mIoU 0.870 against the card's 0.876 (docs/perception.md); `eval perception` keeps 1.
STAGE_SEG_STRIDE = 2


def select_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU. Asking for CUDA without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("perception.learned.device: cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def scale_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 frame at ``size`` (h, w): as it is when it has that size, else scaled as
    8-bit pixels with OpenCV's bilinear interpolation, as the stage scales its frames and bands."""
    h, w = size
    return image if image.shape[:2] == (h, w) else cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def native_bf16(device: torch.device) -> bool:
    """Does this device run bf16 natively? CUDA: torch says so. CPU: the processor has AVX-512 BF16
    or AMX (Linux /proc/cpuinfo flags) and oneDNN is not capped below them (``ONEDNN_MAX_CPU_ISA``,
    as scripts/avx2_only.sh sets it); emulated bf16 on other CPUs is slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cap = (isa_capped() or "").upper()
    if cap and not any(isa in cap for isa in ("BF16", "FP16", "AMX", "AVX10")):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (in eval mode) with each BatchNorm2d that follows a Conv2d in a Sequential folded
    into that convolution's weights and bias, and replaced by Identity. The same function in fewer
    passes over memory: on one 640x360 frame on a 2-core Xeon, fp32 27-29 % faster (native and at
    AVX2), bf16 19 % (docs/perception.md); outputs within 2e-5 of the unfolded network's in fp32.
    onnxruntime folds them itself."""
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d) and bn.track_running_stats:
                seq._modules[first] = fuse_conv_bn_eval(conv, bn)
                seq._modules[second] = torch.nn.Identity()
    return model


def resolve_checkpoint(path: str | None) -> Path:
    checkpoint = SHIPPED_CHECKPOINT if path is None else Path(path).expanduser()
    if not checkpoint.is_file():
        where = "perception.learned.checkpoint" if path is not None else "the shipped model"
        raise ConfigError(f"{where}: checkpoint {checkpoint} not found")
    return checkpoint


@dataclass(frozen=True)
class NetworkOutput:
    """Decoded network output for one frame: boxes in camera px."""

    boxes: np.ndarray   # (N, 4) xyxy camera px
    scores: np.ndarray  # (N,)
    labels: list[str]   # class names, (N,)
    seg: np.ndarray     # (h, w) uint8 seg class ids at the network's input size
    nonfinite: tuple[str, ...] = ()  # raw heads holding NaN or inf (then nothing is decoded)


def _weights_digest(model: torch.nn.Module) -> str:
    """A digest of a model's weights, naming its ONNX export in the cache."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def nonfinite_heads(raw: dict, strides: tuple[int, ...]) -> tuple[str, ...]:
    """Names of the raw outputs (``cls_s4``, ``box_s8``, ``seg``, ...) holding NaN or inf, by their float32
    sums (finite unless a value is; on the CPU 0.12 ms a frame against 2 ms for bf16 isfinite().all())."""
    heads = {**{f"cls_s{s}": t for s, t in zip(strides, raw["cls"])},
             **{f"box_s{s}": t for s, t in zip(strides, raw["box"])}, "seg": raw["seg"]}
    sums = torch.stack([t.sum(dtype=torch.float32) for t in heads.values()]).tolist()
    return tuple(name for name, total in zip(heads, sums) if not math.isfinite(total))


class NetworkRunner:
    """A checkpoint on its device with the inference settings of ``LearnedPerceptionConfig``."""

    def __init__(self, config: LearnedPerceptionConfig, model: PerceptionNet | None = None, batch: int = 1):
        """``batch``: the frames a call will carry (the rig's cameras); `backend: auto` times the
        allowed paths on a batch of that size (perception/paths.py)."""
        self.config = config
        self.device = select_device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.checkpoint_path: Path | None = None  # the detector's file (None: a model handed in)
        if model is None:
            path = self.checkpoint_path = resolve_checkpoint(config.checkpoint)
            model, self.meta = load_checkpoint(path, map_location=self.device)
        else:
            self.meta = {}
            model = copy.deepcopy(model)  # folded below: the caller's network (in training, say) stays as it was
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = fold_batchnorm(model.eval()).to(self.device, memory_format=memory_format)
        self.memory_format = memory_format
        self.classes = list(self.model.classes)
        self.input_size = tuple(self.model.input_size)  # (H, W)
        self.min_score = min(config.score_threshold.values())
        self.session = None
        self._buffers: dict[tuple, tuple[np.ndarray, torch.Tensor]] = {}  # preprocess's, per call slot and shape
        self._sessions: dict = {}  # NetPath -> its onnxruntime / OpenVINO session, built once and kept for the run
        self.dtype = torch.float32
        self.batch = max(int(batch), 1)
        self.choice = self._choose(self.batch)
        self._sessions = {p: s for p, s in self._sessions.items() if p == self.choice.path}  # the timed others go

    def _choose(self, batch: int, shapes: list[tuple[int, tuple[int, int]]] | None = None) -> Choice:
        """The path this runner uses, set up: configured, or measured on this machine and remembered;
        timed on ``batch`` frames at the input size, or on each (batch, (h, w)) of ``shapes``."""
        config, cpu = self.config, self.device.type == "cpu"
        bf16 = config.precision == "bf16" or (config.precision == "auto" and native_bf16(self.device))
        if config.backend == "onnxruntime":
            return self._use(Choice(ONNX_FP32, "configured"))
        if config.backend == "openvino":
            if not cpu:
                raise ConfigError("perception.learned.backend: openvino runs on the CPU; set device: cpu (or auto without CUDA)")
            if not installed("openvino"):
                raise ConfigError("perception.learned.backend: openvino is not installed (pip install openvino)")
            return self._use(Choice(OPENVINO_BF16 if bf16 else OPENVINO_FP32, "configured"))
        if not cpu or config.backend == "torch":
            return self._use(Choice(TORCH_BF16 if bf16 else TORCH_FP32, "configured"))
        cap = isa_capped()
        runtimes = (config.precision, native_bf16(self.device), installed("onnxruntime"), installed("openvino"))
        allowed = candidates(*runtimes, capped=cap is not None)
        left_out = {path.name: f"its kernels read the CPU and ignore oneDNN's cap at {cap}"
                    for path in candidates(*runtimes) if path not in allowed}
        if len(allowed) == 1:
            return self._use(Choice(allowed[0], "configured", left_out=left_out))
        shapes = [(int(n), tuple(size)) for n, size in shapes or [(batch, self.input_size)]]
        work = "" if shapes == [(batch, self.input_size)] else ";".join(f"{n}x{h}x{w}" for n, (h, w) in shapes)
        key = memory_key(self._digest, self.input_size, batch, self._threads(), allowed,
                         channels_last=self.memory_format == torch.channels_last, work=work)
        with choosing(key) as known:
            choice = known if known is not None and known.path in allowed else self._measure(allowed, shapes, key)
            choice.left_out = left_out
            return self._use(choice)

    def choose_for(self, shapes: list[tuple[int, tuple[int, int]]]) -> None:
        """Choose the path again, timed on the work a tick sends: each (batch, (h, w)) of
        ``shapes`` (an operating point's batches, perception/operating.py). The rig's whole batch
        and the main camera alone favour different paths: on a 2-core AVX2-only AMD EPYC the
        three 640x360 frames ran 64.8 ms on onnxruntime and 65.8 on OpenVINO, one 512x288 frame
        18.1 and 15.9 ms."""
        shapes = [(int(n), tuple(size)) for n, size in shapes]
        if shapes == [(self.batch, self.input_size)]:
            return  # the work it was chosen on
        self.choice = self._choose(0, shapes)
        self._sessions = {p: s for p, s in self._sessions.items() if p == self.choice.path}

    def _measure(self, allowed: list, shapes: list[tuple[int, tuple[int, int]]], key: str) -> Choice:
        """Time each allowed path on batches of the stage's sizes; remember and return the fastest.
        A path that cannot be set up (an ONNX export that fails, a precision the CPU cannot
        compile) is left out and named."""
        xs = [torch.zeros(n, 3, *size).contiguous(memory_format=self.memory_format) for n, size in shapes]
        runs, failed = {}, {}
        for path in allowed:
            try:
                self._use(Choice(path, "measured"))
            except Exception as e:  # noqa: BLE001 - any failure of the export or compile leaves the others to run
                failed[path.name] = f"{type(e).__name__}: {e}"[:200]
                continue
            session = self.session
            cast = (torch.autocast("cpu", dtype=torch.bfloat16) if path == TORCH_BF16
                    else contextlib.nullcontext())  # taken now: one per path, not the runner's last

            around = torch_on_one_thread if session is not None else contextlib.nullcontext  # as the stage runs it

            def run(session=session, cast=cast, around=around):
                with torch.inference_mode(), cast, around():
                    return [self.model(x) if session is None else session(x) for x in xs]
            runs[path.name] = run
        ms = measure(runs)
        choice = Choice(fastest(ms, allowed), "measured", ms, failed)
        remember(key, choice, " + ".join(f"{n} x {h}x{w}" for n, (h, w) in shapes) + f", {self._threads()} threads")
        return choice

    @functools.cached_property
    def _digest(self) -> str:
        return self.meta.get("sha256") or _weights_digest(self.model)

    def _threads(self) -> int:
        """The threads both backends run on: the config's, else torch's (which the caller may have set)."""
        return self.config.threads or torch.get_num_threads()

    def _use(self, choice: Choice) -> Choice:
        path = choice.path
        if path.backend in ("onnxruntime", "openvino"):
            session = self._sessions.get(path)
            if session is None:
                if path.backend == "onnxruntime":
                    from stagepilot.perception.onnx_backend import OnnxHeads

                    session = OnnxHeads(self.model, self._digest, threads=self._threads())
                else:
                    from stagepilot.perception.openvino_backend import OpenVinoHeads

                    session = OpenVinoHeads(self.model, self._digest, path.dtype, threads=self._threads(),
                                            shape=(1, 3, *self.input_size))
                self._sessions[path] = session
            self.session = session
            self.device, self.dtype = torch.device("cpu"), torch.float32  # the session takes fp32 inputs
        else:
            self.session = None
            self.dtype = torch.bfloat16 if path.dtype == "bfloat16" else torch.float32
        return choice

    @torch.inference_mode()
    def warm_up(self, batch: int = 1, shapes: list[tuple[int, tuple[int, int]]] | None = None) -> None:
        """Run the whole of a call (preprocess, network, decode) three times on blank frames of
        each (batch, (h, w)) in ``shapes`` (default: ``batch`` frames at the input size), so that
        the first real frames do not pay for one-time set-up: oneDNN builds its primitives per
        shape (50 ms on the first frame), the first decode paid 30 ms, and the first two
        preprocesses of three frames 12-18 ms (the allocator takes fresh pages for the 11 MB
        tensors until it keeps them), which put the second frame of every measured drive over
        its budget. The shapes go in one call, in their order, as a tick sends them, so that each
        call slot's kept buffers are the ones the ticks use."""
        frames, sizes = [], []
        for n, size in shapes or [(batch, self.input_size)]:
            frames += [np.zeros((*size, 3), np.uint8)] * n
            sizes += [tuple(size)] * n
        for _ in range(3):
            self.run(frames, sizes=sizes)

    @property
    def path(self) -> dict:
        """What runs the network on this machine and how it was chosen (for run.json and the
        benchmark)."""
        if self.session is not None:
            path = {"backend": self.choice.path.backend, "device": "cpu", "dtype": self.choice.path.dtype,
                    "version": self.session.version}
        else:
            path = {"backend": "torch", "device": self.device.type,
                    "dtype": "bfloat16" if self.dtype == torch.bfloat16 else "float32",
                    "memory_format": "channels_last" if self.memory_format == torch.channels_last else "contiguous"}
        return {**path, **self.choice.describe()}

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def preprocess(self, images: list[np.ndarray] | np.ndarray, size: tuple[int, int] | None = None,
                   buffer: int | None = None) -> torch.Tensor:
        """(H, W, 3) uint8 frames (or one frame) -> (B, 3, h, w) float in [0, 1] at ``size`` (default:
        the input size), on the device. A frame of another size is scaled first, as 8-bit pixels
        with OpenCV's bilinear interpolation (on a 2-core AVX2 CPU, 640x360 -> 512x288 took 4.5 ms
        in torch's area mode on the float tensor, 1.8 ms in OpenCV's area mode, 0.3 ms bilinear);
        then the frames are stacked and converted once. ``buffer`` (the stage's own calls, on a
        CPU): into buffers kept per call slot and shape, valid until the next call with the
        same. Fresh ones cost page faults: inside measured drives of the whole rig on a 2-core
        AMD EPYC VM, 1 call in 70 took 20-37 ms instead of 0.65, nearly all of it in the kernel
        mapping the 8.3 MB of three float frames anew (2025 faults, about 12 us each)."""
        if isinstance(images, np.ndarray):
            images = [images]
        h, w = size = tuple(size or self.input_size)
        images = [scale_frame(img, size) for img in images]
        if buffer is None or self.device.type != "cpu":
            x = torch.from_numpy(np.ascontiguousarray(np.stack(images))).to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)                                     # (B, 3, h, w)
            return x.contiguous(memory_format=self.memory_format)
        key = (buffer, len(images), h, w)
        if key not in self._buffers:
            self._buffers[key] = (np.empty((len(images), h, w, 3), np.uint8),
                                  torch.empty(len(images), 3, h, w).contiguous(memory_format=self.memory_format))
        pixels, x = self._buffers[key]
        np.stack(images, out=pixels)
        x.copy_(torch.from_numpy(pixels).permute(0, 3, 1, 2))                                 # (B, 3, h, w)
        return x.div_(255.0)

    @property
    def identity(self) -> str:
        """The weights, input size, threads, memory format, CPU, library versions and the path
        this runner runs: what a choice measured on it depends on (perception/operating.py)."""
        return memory_key(self._digest, self.input_size, 0, self._threads(), [self.choice.path],
                          channels_last=self.memory_format == torch.channels_last)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> dict:
        """The raw heads for a preprocessed batch, on this runner's path."""
        with self._autocast():
            return self.model(x) if self.session is None else self.session(x)

    def __call__(self, rgb: np.ndarray) -> NetworkOutput:
        """One frame (with its segmentation)."""
        return self.run([rgb])[0]

    @torch.inference_mode()
    def run(self, images: list[np.ndarray], spans: Spans | None = None,
            sizes: list[tuple[int, int]] | None = None) -> list[NetworkOutput]:
        """The rig's frames -> one output each; the first carries the segmentation. ``sizes``: the
        network input (h, w) of each frame (default: the checkpoint's); frames of one size and
        shape go through the network as one batch. Boxes come back in each frame's own pixels.
        `spans` (core/spans.py) gets the parts: preprocess, network, decode."""
        with self.side_work():
            return self._run(images, spans or Spans(), sizes or [self.input_size] * len(images))

    def _run(self, images: list[np.ndarray], spans: Spans, sizes: list[tuple[int, int]]) -> list[NetworkOutput]:
        groups: dict[tuple, list[int]] = {}
        for i, (img, size) in enumerate(zip(images, sizes)):
            groups.setdefault((img.shape, tuple(size)), []).append(i)
        with spans.part("preprocess"):
            xs = [self.preprocess([images[i] for i in idx], size, buffer=k)
                  for k, ((_, size), idx) in enumerate(groups.items())]
        with spans.part("network"):
            raws = [self.forward(x) for x in xs]
        nonfinite = tuple(dict.fromkeys(n for raw in raws for n in nonfinite_heads(raw, self.model.strides)))
        if nonfinite:  # decoding NaN scores would report an empty road, not a broken model
            empty = NetworkOutput(np.zeros((0, 4)), np.zeros(0), [], np.zeros(self.input_size, np.uint8), nonfinite)
            return [empty] * len(images)
        outputs: list[NetworkOutput | None] = [None] * len(images)
        with spans.part("decode"):
            for ((_, size), idx), raw in zip(groups.items(), raws):
                for i, out in zip(idx, self._decode([images[i] for i in idx], raw, size, with_seg=idx[0] == 0)):
                    outputs[i] = out
        return outputs

    def side_work(self) -> contextlib.AbstractContextManager:
        """The threads around this runner's network as the stage runs it: torch on one thread
        when onnxruntime or OpenVINO runs the network (perception/paths.py
        ``torch_on_one_thread``), as it is."""
        return torch_on_one_thread() if self.session is not None else contextlib.nullcontext()

    def _decode(self, images: list[np.ndarray], raw: dict, size: tuple[int, int], with_seg: bool) -> list[NetworkOutput]:
        dets = self.model.decode(raw, score_threshold=self.min_score, nms_iou=self.config.nms_iou, with_seg=False)
        seg = stage_class_map(raw["seg"][0], tuple(raw["image_size"]), STAGE_SEG_STRIDE) if with_seg else None
        outputs = []
        for i, (rgb, det) in enumerate(zip(images, dets)):
            h0, w0 = rgb.shape[:2]
            sx, sy = w0 / size[1], h0 / size[0]
            boxes = det["boxes"].float().cpu().numpy() * np.array([sx, sy, sx, sy])
            outputs.append(NetworkOutput(
                boxes=boxes, scores=det["scores"].float().cpu().numpy(),
                labels=[self.classes[int(j)] for j in det["labels"].cpu()],
                seg=seg if i == 0 and seg is not None else np.zeros((0, 0), np.uint8)))
        return outputs

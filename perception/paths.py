"""Which path runs the network on this machine: measured once, then remembered.

A CPU's flags do not say which path is fastest. On a 2-core AMD EPYC with AVX-512 BF16, torch
with bf16 autocast ran the rig's batch about as fast as onnxruntime in fp32; on a 2-core Intel
Xeon with the same flags, bf16 autocast was 1.8x slower than onnxruntime (docs/perception.md,
"Speed"). So `backend: auto` times each path the config allows on the batch the stage will run
(the rig's frames at the network's input size), interleaved, and keeps the fastest by median.
The paths: torch fp32, torch with bf16 autocast, onnxruntime fp32, OpenVINO fp32 and OpenVINO
bf16 (on another 2-core AMD EPYC the rig's batch took 63.5, 44.2, 44.5, 40.8 and 24.2 ms).

The choice is remembered in the cache folder (`paths.json`), keyed by the weights, the input
size, the batch, the threads, the CPU (model name and the flags that decide the kernels) and the
library versions: the same machine then runs the same path every time, so its drives stay
reproducible and the measurement is paid once. `stagepilot paths` lists what is remembered;
`stagepilot paths --forget` (or deleting the file) has the next drive measure again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # not on Windows: no lock, each process measures for itself
    fcntl = None

from stagepilot.perception.onnx_backend import cache_dir

# CPU flags that decide which kernels oneDNN and onnxruntime run
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_bf16", "amx_int8")
# settings that change which kernels run on the same CPU (scripts/avx2_only.sh sets them)
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE", "NPY_DISABLE_CPU_FEATURES",
              "OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY")
WARMUP = 2   # untimed runs of each path (kernel set-up)
TIMED = 6    # timed runs of each path, interleaved


@dataclass(frozen=True)
class NetPath:
    """One way to run the network: a backend and its dtype."""

    backend: str  # torch | onnxruntime | openvino
    dtype: str    # float32 | bfloat16

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.dtype}"


TORCH_FP32 = NetPath("torch", "float32")
TORCH_BF16 = NetPath("torch", "bfloat16")
ONNX_FP32 = NetPath("onnxruntime", "float32")
OPENVINO_FP32 = NetPath("openvino", "float32")
OPENVINO_BF16 = NetPath("openvino", "bfloat16")


@dataclass
class Choice:
    """The path picked and why: `by` is configured | measured | remembered; `ms` the median of
    each candidate's timed runs on the stage's batch (empty when configured)."""

    path: NetPath
    by: str
    ms: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # candidate -> why it could not be set up
    left_out: dict[str, str] = field(default_factory=dict)  # path -> why it was not a candidate

    def describe(self) -> dict:
        out = {"chosen_by": self.by}
        if self.ms:
            out["candidates_ms"] = dict(self.ms)
        if self.failed:
            out["candidates_failed"] = dict(self.failed)
        if self.left_out:
            out["left_out"] = dict(self.left_out)
        return out


def cpu_identity() -> str:
    """The CPU's model name and the flags that decide its kernels (Linux /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model, flags = "", set()
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return f"{model} [{' '.join(f for f in ISA_FLAGS if f in flags)}]"


def installed(module: str) -> bool:
    """Whether an optional runtime (onnxruntime, openvino) can be imported here."""
    return importlib.util.find_spec(module) is not None


def isa_capped() -> str | None:
    """The instruction set oneDNN is capped at (``ONEDNN_MAX_CPU_ISA`` or ``DNNL_MAX_CPU_ISA``, as
    scripts/avx2_only.sh sets them to emulate an older CPU), None when it is not."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(name, "").strip()
        if cap and cap.upper() not in ("ALL", "DEFAULT"):
            return cap
    return None


def candidates(precision: str, native_bf16: bool, onnx_available: bool, openvino_available: bool = False,
               capped: bool = False) -> list[NetPath]:
    """The CPU paths a `backend: auto` config allows: bf16 only where the CPU runs bf16 natively
    (emulated bf16 is slower than fp32 everywhere), onnxruntime only in fp32; OpenVINO in fp32,
    and in bf16 where the CPU has it. ``capped``: oneDNN's instruction set is capped
    (``isa_capped``); onnxruntime is then left out, since its own kernels read the CPU and ignore
    the cap (on an AVX-512 EPYC capped at AVX2 it ran its AVX-512 kernels), so its time would be
    the uncapped CPU's and the choice not the emulated one's."""
    bf16 = precision == "bf16" or (precision == "auto" and native_bf16)
    fp32 = precision != "bf16"
    paths = ([TORCH_FP32] if fp32 else []) + ([TORCH_BF16] if bf16 else [])
    if onnx_available and fp32 and not capped:
        paths.append(ONNX_FP32)
    if openvino_available:
        paths += ([OPENVINO_FP32] if fp32 else []) + ([OPENVINO_BF16] if bf16 else [])
    return paths


def memory_key(digest: str, input_size: tuple[int, int], batch: int, threads: int, allowed: list[NetPath], *,
               channels_last: bool = True, work: str = "") -> str:
    """The memory file's key of a choice: what its timing depends on. ``work``: the batches it was
    timed on when they are not ``batch`` frames at the input size."""
    versions = [f"torch {torch.__version__}"]
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions.append(f"onnxruntime {onnxruntime.__version__}")
    with contextlib.suppress(ImportError):
        import openvino

        versions.append(f"openvino {openvino.__version__}")
    text = "|".join([digest[:16], f"{input_size[0]}x{input_size[1]}", f"batch {batch}", f"threads {threads}",
                     "channels_last" if channels_last else "contiguous", cpu_identity(), *versions,
                     *(f"{k}={os.environ[k]}" for k in KERNEL_ENV if k in os.environ),
                     ",".join(p.name for p in allowed), *([f"work {work}"] if work else [])])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def memory_file() -> Path:
    """The file that remembers this machine's choices: ``paths.json`` in the cache folder."""
    return cache_dir() / "paths.json"


class MemoryFileError(ValueError):
    """The memory file exists but is not a JSON object of choices."""


def entries() -> dict[str, dict]:
    """Every choice remembered in the memory file, by key (``stagepilot paths`` lists them); {}
    when there is none. Raises MemoryFileError naming the file when it cannot be read as choices (a
    drive then measures again and rewrites it)."""
    path = memory_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise MemoryFileError(f"{path}: cannot be read ({exc.strerror})") from exc
    try:
        found = json.loads(text)
    except ValueError as exc:
        raise MemoryFileError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(found, dict):
        raise MemoryFileError(f"{path}: expected an object of choices by key, found {type(found).__name__}")
    return {k: v for k, v in found.items() if isinstance(v, dict)}


def forget() -> int:
    """Forget every remembered choice (the next drive times its paths and points again), under
    the machine's lock so that no drive is writing one meanwhile; how many there were."""
    with _locked():
        try:
            count = len(entries())
        except MemoryFileError:
            count = 0  # an unreadable file holds no choice this code can use; it goes all the same
        memory_file().unlink(missing_ok=True)
    return count


@contextlib.contextmanager
def choosing(key: str, read=None):
    """Hold the machine's lock on the memory file while a path is looked up, measured and
    written, and yield what is remembered under `key` (None: measure; `read` turns the entry
    into a result, `remembered` by default). Processes that start
    together (evaluation workers) then measure one at a time, and those after the first find
    its choice instead of timing under each other's load. Without a writable cache folder there
    is no lock and nothing is remembered."""
    with _locked():
        yield (read or remembered)(key)


@contextlib.contextmanager
def _locked():
    """The machine's lock on the memory file, held for the block (none without a writable cache folder)."""
    lock = None
    try:
        memory_file().parent.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            lock = open(memory_file().with_suffix(".lock"), "a")
            fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError:
        pass
    try:
        yield
    finally:
        if lock is not None:
            lock.close()  # closing the file releases the lock


def recall(key: str) -> dict | None:
    """The entry remembered under `key`, or None (nothing remembered, or a file this code cannot read)."""
    try:
        return entries().get(key)
    except MemoryFileError:
        return None


def store(key: str, entry: dict) -> None:
    """Remember `entry` under `key`, with the CPU and the date."""
    path = memory_file()
    try:
        known = entries()
    except MemoryFileError:
        known = {}  # a file this code cannot read is written over
    known[key] = {**entry, "cpu": cpu_identity(), "date": dt.date.today().isoformat()}
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(partial, path)  # whole or absent, whatever another process does meanwhile
    except OSError:
        pass  # a cache folder that cannot be written: the next run measures again


def remembered(key: str) -> Choice | None:
    entry = recall(key)
    try:
        return Choice(NetPath(entry["backend"], entry["dtype"]), "remembered", dict(entry["ms"]))
    except (KeyError, TypeError, ValueError):
        return None  # nothing remembered, or an entry this code cannot read: measure again


def remember(key: str, choice: Choice, timed_on: str = "") -> None:
    """Remember ``choice`` under ``key``; ``timed_on``: the work it was timed on, in words."""
    store(key, {"backend": choice.path.backend, "dtype": choice.path.dtype, "ms": choice.ms,
                **({"timed_on": timed_on} if timed_on else {})})


def measure(runs: dict[str, callable], warmup: int = WARMUP, timed: int = TIMED) -> dict[str, float]:
    """Median wall time [ms] of each runner, the runners taken in turn so that a change in the
    machine's load falls on all of them alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(timed):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: round(statistics.median(ts), 2) for name, ts in times.items()}


def fastest(ms: dict[str, float], allowed: list[NetPath]) -> NetPath:
    by_name = {p.name: p for p in allowed}
    return by_name[min(ms, key=ms.__getitem__)]


@contextlib.contextmanager
def torch_on_one_thread():
    """torch on one thread for the work around a network that onnxruntime or OpenVINO runs
    (scaling, the finite check, decoding: small tensors), and while such a network is timed. With
    more, torch's OpenMP threads spin after each parallel op and take a core from the runtime's
    own threads: on a 2-core AVX2-only AMD EPYC, 900 frames at main_reduced ran the network at p50
    16.4 ms, both cores busy (2 % idle), and 12.4-14.5 ms with torch on one thread around it (17-19
    % idle); 40 s measured drives taken in turn missed 10 and 25 of 801 frames without, 5 and 10
    with. Timed without it, the operating points read 1.3-1.5x slower than the stage runs them (a
    2-core AMD EPYC with bf16, OpenVINO: main_only 16.7 against 11.3 ms, full 30.5 against 23.4)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

"""Provenance of a run: the config hash, seeds, code and library versions, host and command.

`run_info` is what run.json holds; `write_json` writes any JSON output atomically.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2

from stagepilot.core.config import StackConfig, config_hash
from stagepilot.pipeline.trace import _plain

REPO_ROOT = Path(__file__).resolve().parents[1]


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The project's commit and whether its working tree differs from it (None outside git)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def run_info(config: StackConfig, scenario, started: datetime.datetime) -> dict[str, Any]:
    """Everything needed to reproduce the run: config hash, seeds, code and library versions."""
    return {
        "config_hash": config_hash(config),
        "scenario": {"name": scenario.name, "source": scenario.source, "seed": scenario.seed,
                     "map": scenario.map_path or scenario.map, "duration_s": scenario.duration_s},
        "perception_seed": config.perception.perfect.seed,
        "versions": {
            "python": platform.python_version(),
            "stagepilot": _version("stagepilot"),
            "numpy": _version("numpy"),
            "torch": _version("torch"),
            "opencv": _version("opencv-python", "opencv-python-headless", "opencv-contrib-python") or cv2.__version__,
            "carla": _version("carla"),
        },
        "git": git_state(),
        "started": started.isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "argv": sys.argv,
    }


# /proc/stat's first line: the whole machine's CPU time since boot, in these columns
PROC_STAT_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times(source: str = "/proc/stat") -> tuple[int, ...] | None:
    """The machine's CPU time counters [clock ticks] in PROC_STAT_COLUMNS order; None where the
    system has no /proc/stat (not Linux) or it cannot be read."""
    try:
        with open(source) as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 1 + len(PROC_STAT_COLUMNS):
        return None
    return tuple(int(v) for v in first[1:1 + len(PROC_STAT_COLUMNS)])


def cpu_shares(before: tuple[int, ...] | None, after: tuple[int, ...] | None) -> dict[str, float] | None:
    """Where the machine's CPU time went between two `cpu_times`, in percent: `busy` (user, system,
    interrupts), `idle` (with I/O wait) and `steal`, the time a hypervisor gave this virtual
    machine's CPUs to another. A measured latency figure depends on the last: on a 2-core cloud
    VM the same 40 s measured drive missed its perception budget on 5 of 801 frames at 1.1 % steal
    and on 22 at 3.9 %."""
    if before is None or after is None:
        return None
    spent = dict(zip(PROC_STAT_COLUMNS, (b - a for a, b in zip(before, after))))
    total = sum(spent.values())
    if total <= 0:
        return None
    idle = spent["idle"] + spent["iowait"]
    steal = spent["steal"]
    return {"busy_percent": round(100.0 * (total - idle - steal) / total, 1),
            "idle_percent": round(100.0 * idle / total, 1),
            "steal_percent": round(100.0 * steal / total, 1),
            "cores": os.cpu_count()}


def write_json(path: Path, data: Any) -> None:
    """Atomic write (a reader sees the old file or the whole new one, never half); NaN and
    infinities become null."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(_plain(data), indent=2, allow_nan=False, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when the write failed

"""Stage timings as a Chrome trace (trace-event JSON object format), for Perfetto and
chrome://tracing.

Each stage gets its own named track (one thread id per stage name); a stage call is a
complete event ("X"), a budget miss or fail-safe an instant ("i") on that stage's track,
and a signal such as the speed a counter ("C"). Callers pass seconds on one clock (wall
clock since the run started); the file holds integer microseconds, as the format wants.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

PID = 1


def _us(seconds: float) -> int:
    return round(seconds * 1e6)


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ChromeTrace:
    """Collects trace events in memory (a few hundred bytes per stage call) and writes them."""

    def __init__(self, process_name: str = "stagepilot"):
        self.events: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "pid": PID, "tid": 0, "args": {"name": process_name}},
        ]
        self._tids: dict[str, int] = {}

    def tid(self, stage: str) -> int:
        """The track of `stage`; the first use names it (thread_name metadata)."""
        if stage not in self._tids:
            tid = len(self._tids) + 1
            self._tids[stage] = tid
            self.events.append({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": stage}})
            self.events.append({"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid,
                                "args": {"sort_index": tid}})
        return self._tids[stage]

    def stage(self, name: str, start_s: float, duration_s: float, frame: int, args: dict | None = None) -> None:
        """One stage call: [start_s, start_s + duration_s] on the run's clock [s]."""
        self.events.append({
            "name": name, "cat": "stage", "ph": "X", "ts": _us(start_s), "dur": max(_us(duration_s), 0),
            "pid": PID, "tid": self.tid(name), "args": _plain({"frame": int(frame), **(args or {})}),
        })

    def part(self, stage: str, name: str, start_s: float, duration_s: float, frame: int) -> None:
        """A part of a stage call (core/spans.py), on the stage's track inside its call."""
        self.events.append({
            "name": name, "cat": "part", "ph": "X", "ts": _us(start_s), "dur": max(_us(duration_s), 0),
            "pid": PID, "tid": self.tid(stage), "args": {"frame": int(frame)},
        })

    def instant(self, name: str, t_s: float, stage: str | None = None, args: dict | None = None) -> None:
        """A marker at t_s [s]: on `stage`'s track, or across the whole process without one."""
        event = {"name": name, "cat": "mark", "ph": "i", "ts": _us(t_s), "pid": PID,
                 "args": _plain(args or {})}
        if stage is None:
            event.update(s="p", tid=0)
        else:
            event.update(s="t", tid=self.tid(stage))
        self.events.append(event)

    def counter(self, name: str, t_s: float, values: dict[str, float]) -> None:
        """Counter samples at t_s [s], e.g. counter("speed", t, {"m_per_s": 11.2})."""
        self.events.append({"name": name, "ph": "C", "ts": _us(t_s), "pid": PID, "tid": 0,
                            "args": _plain(values)})

    def to_json(self) -> dict[str, Any]:
        return {"traceEvents": list(self.events), "displayTimeUnit": "ms"}

    def write(self, path: str | Path) -> Path:
        """Write atomically, so an interrupted write never leaves half a file."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.to_json(), allow_nan=False))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # left only when the write failed
        return path

"""What the drive loop does around its stages: the garbage collector's work between ticks, while
no stage runs, the learned stage's operating-point guard (perception/operating.py), and OpenCV
on one thread for the drive.

The collector. Loading the stack leaves some 400 000 objects the collector tracks; the loop
collects once and freezes them before the first frame, so that no collection walks them again.
What the drive itself makes (its kept records, the trace, the series) still grew under Python's
automatic collector: on a 2-core AMD EPYC its full collections took 52 to 288 ms, growing with the
drive, inside whichever stage allocated at that moment. So the automatic collector is off for the
drive, and the loop collects here every ``COLLECT_EVERY`` ticks and freezes what survived: each
collection walks only what the last second made, and none runs inside a stage. A real-time loop
has this time to spare: a tick is 50 ms, and the stages take about half of it. The collections'
times are reported (run.json ``between_ticks``, and a track of the trace), not hidden: they
count toward the drive's wall clock, not toward a stage's latency. Frozen objects that die later
are freed by reference counting as before; cycles among them wait for the drive's end, when
everything is unfrozen and the collector runs again (openpilot's real-time processes turn the
collector off altogether).

OpenCV's threads. The simulator's renderer and the overlays call OpenCV, whose worker threads
keep spinning for a while after each parallel call; on two cores they took the CPU from the
perception stage that ran next. In 30 s measured drives of the whole rig on a 2-core AMD EPYC the
stage's stacking of three frames (``preprocess``, p50 0.65 ms) reached 24.0 ms at p99 beside
OpenCV's default threads and 3.2 ms with OpenCV on one thread, which the drive therefore uses
(the stage's own OpenCV calls are small; the evaluation's workers and the simulator's benchmark
run OpenCV on one thread as well).
"""

from __future__ import annotations

import gc
import time

import cv2
import numpy as np

from stagepilot.core.messages import Event
from stagepilot.perception.operating import STEP_EVENT, PointGuard

COLLECT_EVERY = 20  # ticks between collections: 1 s at 20 Hz


class BetweenTicks:
    """The collector's work and the operating-point guard, run by `StagedRuntime.run` at the top
    of each tick, when no stage runs (the pipelined worker is idle there too)."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.collect_ms: list[float] = []
        self.events: dict[int, Event] = {}  # frame -> the step-down event recorded on it
        self._seen = 0  # perception calls the guard has looked at
        self._was_enabled = True
        self._cv2_threads = cv2.getNumThreads()
        stage = runtime.stack.perception
        point = getattr(stage, "point", None)
        watched = (runtime.runtime.time_model == "measured" and hasattr(stage, "step_down")
                   and point is not None and point.lower() is not None)
        self.guard = PointGuard(runtime.telemetry["perception"].budget_ms) if watched else None

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)

    def end(self) -> None:
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()
        cv2.setNumThreads(self._cv2_threads)

    def tick(self, frame: int, t: float) -> None:
        """Between frame ``frame`` (at sim time ``t``) and the next one."""
        if self.guard is not None:
            self._watch(frame, t)
        if frame % COLLECT_EVERY == 0:
            start = time.perf_counter()
            gc.collect()
            gc.freeze()
            took = time.perf_counter() - start
            self.collect_ms.append(took * 1e3)
            self.runtime.trace.stage("between ticks", start - self.runtime.wall0, took, frame,
                                     {"what": "garbage collection"})

    def _watch(self, frame: int, t: float) -> None:
        """Feed the guard the perception calls since the last tick; step down when it says so,
        from the next frame on."""
        samples = self.runtime.telemetry["perception"].samples_ms
        why = None
        for ms in samples[self._seen:]:
            why = self.guard.observe(ms) or why
        self._seen = len(samples)
        if why is None:
            return
        stage = self.runtime.stack.perception
        start = time.perf_counter()
        lower = stage.step_down(frame + 1, why)
        if lower is None:
            self.guard = None  # nothing lower: the stage stays where it is
            return
        took = time.perf_counter() - start
        self.runtime.trace.stage("between ticks", start - self.runtime.wall0, took, frame,
                                 {"what": f"operating point down to {lower}"})
        self.events[frame + 1] = Event(t + self.runtime.dt, STEP_EVENT, f"{lower}: {why}")
        if stage.point.lower() is None:
            self.guard = None

    def summary(self) -> dict:
        """For run.json: the collections between ticks and the operating point's steps."""
        ms = np.array(self.collect_ms) if self.collect_ms else np.zeros(1)
        out = {"garbage_collections": {
            "every_ticks": COLLECT_EVERY, "count": len(self.collect_ms),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "max_ms": round(float(ms.max()), 3),
            "total_ms": round(float(ms.sum()), 1)}}
        steps = getattr(getattr(self.runtime.stack.perception, "point", None), "steps", None)
        if steps:
            out["operating_point_steps"] = list(steps)
        return out

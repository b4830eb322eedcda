"""Named parts of one stage call, timed on the wall clock, for the trace and the latency table.

A stage that has parts worth telling apart (the learned perception stage: network, decode,
placement, tracking, ...) keeps a `Spans` as its `spans` attribute and wraps each part in
`spans.part(name)`; the runtime reads them after each call (pipeline/runtime.py) and puts them
in the trace, nested in the stage's own span, and in the latency table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Spans:
    """(name, offset from the call's start [s], duration [s]) of each part of the last call.
    `sync` runs before a part's end is read (CUDA work is asynchronous)."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self.sync = sync
        self.parts: list[tuple[str, float, float]] = []
        self._start = time.perf_counter()

    def restart(self) -> None:
        """A new call begins: forget the last one's parts."""
        self.parts = []
        self._start = time.perf_counter()

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.parts.append((name, begin - self._start, time.perf_counter() - begin))

"""Signals that end a drive: SIGINT (Ctrl-C), SIGTERM (`kill`, a job scheduler) and SIGHUP (a
closed terminal) all stop it the same way, and none of them cuts the run folder's writes short.

A `SignalHold` records these signals instead of acting on them. The driver holds them for a
whole drive when asked to (the CLI) and stops after the frame in progress, so the video, the
records and metrics.json agree on the frames; it always holds them while observers write
their outputs, and hands a signal held then to the handler it was meant for afterwards.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

STOP_SIGNALS: tuple[int, ...] = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class Interrupted(KeyboardInterrupt):
    """A drive stopped by a signal; `signum` says which. A KeyboardInterrupt, so whatever ends
    a drive on Ctrl-C ends it on SIGTERM and SIGHUP too."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_status(signum: int) -> int:
    """The status a shell reports for a process ended by `signum`: 130 SIGINT, 143 SIGTERM, 129 SIGHUP."""
    return 128 + signum


class SignalHold:
    """While active, `signums` are recorded in `received` instead of acted on. A signal the
    process ignores stays ignored (a background job's SIGINT, SIGHUP under nohup), and outside
    the main thread, where Python cannot install handlers, the hold does nothing. On exit the
    old handlers come back; with `redeliver` each signal received is then raised again, so the
    old handler acts on it once the held work is done."""

    def __init__(self, signums: tuple[int, ...] = STOP_SIGNALS, redeliver: bool = False):
        self.signums, self.redeliver = signums, redeliver
        self.received: list[int] = []
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalHold:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self.signums:
            old = signal.getsignal(signum)
            if old not in (signal.SIG_IGN, None):  # None: a handler from C that Python could not restore
                self._old[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        old, self._old = self._old, {}
        for signum, handler in old.items():
            signal.signal(signum, handler)
        if self.redeliver:
            for signum in dict.fromkeys(self.received):
                signal.raise_signal(signum)

    def _record(self, signum: int, frame) -> None:
        self.received.append(signum)

    @property
    def first(self) -> int | None:
        """The first signal received, or None."""
        return self.received[0] if self.received else None

    def stop_if_received(self) -> None:
        """Raise `Interrupted` for the first signal received; call it where stopping is safe."""
        if self.received:
            raise Interrupted(self.received[0])


class SignalsInterrupt:
    """While active, SIGTERM and SIGHUP raise `Interrupted` in the main thread as Ctrl-C raises
    KeyboardInterrupt, so that whatever cleans up after Ctrl-C (a worker pool terminating its
    processes) also runs when a job scheduler stops the command; the old handlers come back on
    exit. Off the main thread it does nothing (Python delivers signals to the main thread only)."""

    def __init__(self):
        self.signums = tuple(s for s in STOP_SIGNALS if s != signal.SIGINT)  # SIGINT raises by itself
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalsInterrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                old = signal.getsignal(signum)
                if old not in (signal.SIG_IGN, None):
                    self._old[signum] = signal.signal(signum, self._raise)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old.clear()

    @staticmethod
    def _raise(signum, frame) -> None:
        raise Interrupted(signum)


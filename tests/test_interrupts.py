"""`stagepilot drive` stopped by a signal, as a user or a job scheduler stops it, and run folders
that are never overwritten by accident. The drives run as subprocesses, the way users run them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import av
import cv2
import pytest

from stagepilot.core.config import ConfigError
from stagepilot.pipeline.interrupts import SignalHold
from stagepilot.pipeline.writer import RUN_FILES, claim_run_dir

from conftest import default_signals

DRIVE = [sys.executable, "-m", "stagepilot.pipeline.cli", "drive", "--scenario", "pedestrian_crossing",
         "--perception", "perfect", "--quiet"]


def _start(out, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*DRIVE, "--out", str(out), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_signals)


def _wait_until_under_way(proc: subprocess.Popen, out) -> None:
    """Until the video holds frames, then a second more: the drive is running."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (out / "video.mp4").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    assert proc.poll() is None, proc.communicate()


def _decoded_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def _complete_run(out) -> dict:
    """metrics.json of a run folder that holds every output, whole and readable."""
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)  # no temporary file left
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "trace.json").read_text())["traceEvents"]
    assert cv2.imread(str(out / "summary.png")) is not None
    assert metrics["frames"] > 0 and _decoded_frames(out / "video.mp4") == metrics["frames"]
    return metrics


@pytest.mark.parametrize("signals, status", [
    ((signal.SIGTERM,), 143),
    ((signal.SIGHUP,), 129),
    ((signal.SIGINT, signal.SIGINT), 130),  # the second comes while the run folder is written
], ids=["SIGTERM", "SIGHUP", "double-SIGINT"])
def test_a_signal_ends_the_drive_with_a_complete_run_folder(tmp_path, signals, status):
    out = tmp_path / "run"
    started = time.monotonic()
    proc = _start(out, "scenario.duration_s=30")
    _wait_until_under_way(proc, out)
    time.sleep(max(0.0, 5.0 - (time.monotonic() - started)))  # 5 s into the drive
    assert proc.poll() is None, "the drive ended before the signal"
    for i, signum in enumerate(signals):
        if i:
            time.sleep(0.3)
        proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    outcome = _complete_run(out)["outcome"]
    assert outcome["interrupted"] is True and not outcome["completed"]
    assert outcome["signal"] == signal.Signals(signals[0]).name


def test_an_existing_run_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"old": true}')
    refused = subprocess.run([*DRIVE, "--out", str(out), "scenario.duration_s=0.5"], capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "already holds a run" in refused.stderr and "--overwrite" in refused.stderr
    assert (out / "metrics.json").read_text() == '{"old": true}'
    accepted = subprocess.run([*DRIVE, "--out", str(out), "--overwrite", "scenario.duration_s=0.5"],
                              capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    assert _complete_run(out)["outcome"]["interrupted"] is False


def test_an_empty_out_is_refused():
    proc = subprocess.run([*DRIVE, "--out", ""], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--out" in proc.stderr


@pytest.mark.parametrize("present, refused", [
    ((), None),
    (("run.json",), "already holds a run (run.json)"),
    (("notes.txt",), "is not empty (notes.txt)"),
])
def test_a_run_folder_must_be_empty(tmp_path, present, refused):
    out = tmp_path / "run"
    out.mkdir()
    for name in present:
        (out / name).write_text("old")
    if refused is None:
        assert claim_run_dir(out) == out
        return
    with pytest.raises(ConfigError, match=re.escape(f"{out}: {refused}")):
        claim_run_dir(out)
    claim_run_dir(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(set(present) - set(RUN_FILES))  # only run files go


def test_a_file_is_not_a_run_folder(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file"):
        claim_run_dir(tmp_path / "run", overwrite=True)


def test_a_hold_defers_a_signal_and_hands_it_on():
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with SignalHold(redeliver=True) as hold:
            signal.raise_signal(signal.SIGTERM)
            assert seen == [] and hold.first == signal.SIGTERM
        assert seen == [signal.SIGTERM]  # after the held work, to the handler it was meant for
        with SignalHold() as hold:
            signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM] and hold.received == [signal.SIGTERM]  # kept, not handed on
    finally:
        signal.signal(signal.SIGTERM, previous)

"""The run folder every drive writes (DESIGN.md, Runs and outputs), as an observer of the driver.

    config.yaml   the resolved config            run.json      hash, seeds, versions, commit
    video.mp4     camera + overlays, H.264       metrics.json  outcome, events, comfort, latency
    summary.png   path, speed, stage latencies   trace.json    stage timings for Perfetto
    drive.mcap    the recording (pipeline/recorder.py, another observer; `--no-record` leaves it out)

`start` writes config.yaml and run.json, `frame` streams one video frame, and `end` writes the
rest from the drive's result. `end` runs after Ctrl-C or a fault too, finishes every part it
can and then raises if one failed, so everything recorded up to that point stays readable.
Every file but the video is written atomically (a temporary file, then `os.replace`).
A run folder is never reused by accident: `claim_run_dir` refuses one that holds anything.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import yaml

from stagepilot.core.config import ConfigError, StackConfig
from stagepilot.core.messages import Observation
from stagepilot.pipeline.driver import DriveResult
from stagepilot.pipeline.overlay import FrameDrawer
from stagepilot.pipeline.plots import plot_summary
from stagepilot.pipeline.provenance import run_info, write_json
from stagepilot.pipeline.records import FrameRecord, frame_events
from stagepilot.sim.scenario import Scenario
from stagepilot.sim.video import VideoWriter


def default_run_dir(root: Path, scenario_name: str, now: datetime.datetime | None = None) -> Path:
    """runs/<YYYYmmdd-HHMMSS>-<scenario>/, with a suffix if that folder exists already."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    path, n = Path(root) / f"{stamp}-{scenario_name}", 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{scenario_name}-{n}"
    return path


RUN_FILES = ("config.yaml", "run.json", "video.mp4", "metrics.json", "trace.json", "summary.png", "drive.mcap")


def claim_run_dir(path: Path, overwrite: bool = False) -> Path:
    """Check that `path` may take a new run: absent or an empty folder, or with `overwrite` a
    folder whose run files are then removed (nothing else in it is touched). Raises ConfigError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: is a file, not a run folder; choose a new --out")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if entries and not overwrite:
        held = next((name for name in ("metrics.json", "run.json", *RUN_FILES) if name in entries), None)
        what = f"already holds a run ({held})" if held else f"is not empty ({entries[0]}{', ...' if entries[1:] else ''})"
        raise ConfigError(f"{path}: {what}; choose a new --out, remove it, or pass --overwrite")
    for name in RUN_FILES if entries else ():
        (path / name).unlink(missing_ok=True)  # a half-written new run never passes for the old one
    return path


class RunWriter:
    """Writes one run folder; pass it to `driver.drive(..., observers=(writer,))`. `camera`
    names the camera the video shows (default: the observation's first)."""

    def __init__(self, out_dir: Path, config: StackConfig, scenario: Scenario, camera: str | None = None,
                 video: bool = True):
        self.out_dir = Path(out_dir)
        self.config, self.scenario, self.camera = config, scenario, camera
        self.with_video = video  # False: no video.mp4 (and no frame drawn), e.g. for suite evaluation
        self.started = False
        self.info: dict | None = None
        self.video: VideoWriter | None = None
        self._drawer: FrameDrawer | None = None
        self._sim = None
        self.written: set[str] = set()

    def start(self, sim, obs: Observation) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._sim = sim
        self.info = run_info(self.config, self.scenario, datetime.datetime.now(datetime.timezone.utc))
        describe = getattr(sim, "metadata", None)
        if describe is not None:
            self.info["simulator"] = describe()
        _write_text(self.out_dir / "config.yaml", yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        write_json(self.out_dir / "run.json", self.info)
        if self.with_video:
            self.video = VideoWriter(self.out_dir / "video.mp4", fps=1.0 / self.config.sim.dt_s)
        self.started = True

    def frame(self, obs: Observation, record: FrameRecord) -> None:
        """Append the frame's video frame (nothing image-sized is kept)."""
        if self.video is None:
            return
        if self._drawer is None:
            camera = self.camera or next(iter(obs.cameras), None)
            self._drawer = FrameDrawer(self._sim, camera, self.config.vehicle)
        self.video.write(self._drawer.draw(obs, record, frame_events(obs, record)))

    def end(self, result: DriveResult) -> None:
        """Finalise the video and write metrics.json, trace.json and summary.png; raises after
        every part was tried if one failed."""
        if not self.started:  # the drive ended before it started: nothing to write
            return
        parts = [("video.mp4", self.video.close)] if self.video is not None else []
        # what is known only once the drive ran: the network's path, and what else took the CPU
        self.info.update({k: v for k, v in (("perception_path", result.perception_path),
                                            ("host_cpu", result.host_cpu),
                                            ("between_ticks", result.between_ticks)) if v is not None})
        parts.append(("run.json", lambda: write_json(self.out_dir / "run.json", self.info)))
        parts += [("metrics.json", lambda: write_json(self.out_dir / "metrics.json", result.metrics)),
                  ("trace.json", lambda: result.trace.write(self.out_dir / "trace.json")),
                  ("summary.png", lambda: self._summary(result))]
        errors = []
        for name, write in parts:
            try:
                write()
                self.written.add(name)
            except Exception as exc:  # the other parts are still worth writing
                errors.append(f"{name}: {exc!r}")
        if errors:
            raise OSError(f"{self.out_dir}: could not write " + "; ".join(errors))

    def _summary(self, result: DriveResult) -> None:
        budgets = {name: row.get("budget_ms") for name, row in result.latency.items()}
        title = f"{self.scenario.name}   seed {self.scenario.seed}   config {self.info['config_hash']}"
        plot_summary(self.out_dir / "summary.png", result.series, np.asarray(result.route_points), budgets, title)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""The replay diff report: a planner changed by a lattice weight is named with its first
divergence, plotted, and shown side by side over the window's frames; a replay that matches
says so and writes no video; a cut recording, a replay without perception and a recording
without camera images still make a whole report."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import pytest

from stagepilot.core.config import load_stack
from stagepilot.pipeline import recording as recording_module
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.recorder import Recorder
from stagepilot.pipeline.replay import replay
from stagepilot.pipeline.replay_report import PLOT, VIDEO, write_report
from stagepilot.sim.scenario import load_scenario

from conftest import PERFECT

HEAVIER_JERK = "planner.lattice.weights.longitudinal_jerk=0.5"  # default 0.05: the planner picks other speed profiles
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("replay-report") / "drive.mcap"
    config, scenario = load_stack([], [*PERFECT]), load_scenario("pedestrian_crossing", [], ())
    drive(config, scenario, observers=(Recorder(path, config, scenario),), max_time_s=3.0)
    return path


def _video_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_report_names_the_planners_first_divergence_and_shows_its_window(recording, tmp_path):
    result = replay(recording, overrides=[HEAVIER_JERK])
    planner = result.stages["planner"]
    assert planner.first is not None, "the heavier jerk weight should change the plan"
    assert result.stages["perception"].first is None and result.stages["controller"].first is None

    page = write_report(tmp_path / "report", result)

    text = page.read_text()
    assert page == tmp_path / "report" / "report.md"
    assert f"### planner: diverges at frame {planner.first.frame}" in text
    assert f"frame **{planner.first.frame}**" in text
    assert f"`{planner.first.difference.field}`" in text
    assert "### perception: matches" in text and "### controller: matches" in text
    assert result.stages["planner"].first.difference.line() in text  # the summary table
    assert f"({PLOT})" in text and f"({VIDEO})" in text
    assert (page.parent / PLOT).read_bytes()[:8] == PNG_MAGIC
    assert _video_frames(page.parent / VIDEO) == len(planner.window) > 0


def test_a_matching_replay_says_every_stage_matches_and_writes_no_video(recording, tmp_path):
    result = replay(recording)
    assert result.ok
    (tmp_path / VIDEO).write_bytes(b"an earlier report's video")

    text = write_report(tmp_path, result).read_text()

    assert "Every stage matches the recording" in text
    assert all(f"### {name}: matches" in text for name in ("perception", "planner", "controller"))
    assert "No video" in text
    assert not (tmp_path / VIDEO).exists()
    assert (tmp_path / PLOT).read_bytes()[:8] == PNG_MAGIC


def _cut(recording: Path, tmp_path: Path) -> Path:
    data = recording.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    return cut


def _without_images(monkeypatch) -> None:
    read = recording_module.Recording.observation

    def observation(self, frame):
        obs = read(self, frame)
        return dataclasses.replace(obs, cameras={name: None for name in obs.cameras})

    monkeypatch.setattr(recording_module.Recording, "observation", observation)


@pytest.mark.parametrize("case", ["truncated", "without perception", "without camera images"])
def test_the_report_is_whole_for_a_cut_recording_no_perception_or_no_images(case, recording, tmp_path, monkeypatch):
    path = _cut(recording, tmp_path) if case == "truncated" else recording
    stages = ("planner", "controller") if case == "without perception" else ("perception", "planner", "controller")
    if case == "without camera images":
        _without_images(monkeypatch)
    result = replay(path, stages, overrides=[HEAVIER_JERK])

    text = write_report(tmp_path / "report", result).read_text()

    assert ("**Truncated:**" in text) == (case == "truncated")
    assert ("### perception" in text) == (case != "without perception")
    assert "### planner: diverges" in text
    assert _video_frames(tmp_path / "report" / VIDEO) == len(result.stages["planner"].window)

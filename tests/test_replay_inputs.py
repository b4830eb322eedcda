"""Bad recordings get one clear line and exit 2; a killed drive leaves a readable file; the
reference outputs change only through --update-golden."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcap.writer import Writer

from stagepilot.core.config import load_stack
from stagepilot.pipeline.cli import main
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.recorder import Recorder
from stagepilot.pipeline.recording import Recording
from stagepilot.pipeline.replay import replay
from stagepilot.pipeline.replay_golden import update_golden
from stagepilot.planning.planner import LatticePlannerStage
from stagepilot.sim.scenario import load_scenario


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "drive.mcap"
    config = load_stack([], ["perception.kind=perfect"])
    scenario = load_scenario("lead_vehicle_braking", ["duration_s=3"])
    drive(config, scenario, observers=(Recorder(path, config, scenario),))
    return path


def _copy(src: Path, dst: Path, *, drop_topic: str | None = None, meta: dict | None = None) -> Path:
    """A rewritten copy of a recording: without one channel, or with changed metadata."""
    rec = Recording(src)
    with open(dst, "wb") as out:
        writer = Writer(out)
        writer.start(profile="stagepilot", library="test")
        for name, data in rec.meta.items():
            writer.add_metadata(name, {**data, **(meta or {}).get(name, {})})
        for name, data in rec.attachments.items():
            writer.add_attachment(0, 0, name, "application/zstd", data)
        schemas = {sid: writer.register_schema(s.name, s.encoding, s.data) for sid, s in rec.schemas.items()}
        channels = {c.topic: writer.register_channel(c.topic, c.message_encoding, schemas[c.schema_id])
                    for c in rec.channels.values() if c.topic != drop_topic}
        for frame in rec.frames():
            for topic, log_time, data in frame.records:
                if topic in channels:
                    writer.add_message(channels[topic], log_time, data, log_time, sequence=frame.frame)
        writer.finish()
    rec.close()
    return dst


def _replay_cli(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["replay", "--quiet", *args])
    out, err = capsys.readouterr()
    return status, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_a_recording_cut_in_the_middle_replays_up_to_the_cut_and_exits_2(recording, tmp_path, capsys):
    data = recording.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 2])
    status, out, err = _replay_cli(capsys, str(cut))
    line = _one_error_line(err)
    assert status == 2 and "cut short" in line and "replayed the" in line
    frames = int(line.split("replayed the ")[1].split()[0])
    assert 0 < frames < 61 and f"{frames} frames in" in out  # it did replay what was there


def test_a_file_that_is_not_mcap(tmp_path, capsys):
    path = tmp_path / "notes.mcap"
    path.write_text("these are notes, not a recording\n")
    status, _, err = _replay_cli(capsys, str(path))
    assert status == 2 and "not an MCAP file" in _one_error_line(err)


def test_a_recording_that_lacks_a_stage_channel(recording, tmp_path, capsys):
    path = _copy(recording, tmp_path / "no-plan.mcap", drop_topic="/stagepilot/plan")
    status, _, err = _replay_cli(capsys, str(path), "--stages", "planner")
    line = _one_error_line(err)
    assert status == 2 and "lacks channel /stagepilot/plan" in line and "planner" in line


def test_a_recording_from_an_incompatible_message_version(recording, tmp_path, capsys):
    path = _copy(recording, tmp_path / "v99.mcap", meta={"stagepilot": {"message_version": "99"}})
    status, _, err = _replay_cli(capsys, str(path))
    line = _one_error_line(err)
    assert status == 2 and "message version 99" in line


def test_a_drive_killed_part_way_leaves_a_file_that_reads_to_its_last_whole_chunk(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "stagepilot.pipeline.cli", "drive", "--scenario", "town_loop", "--perception",
               "perfect", "--quiet", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mcap = out / "drive.mcap"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not mcap.exists() or mcap.stat().st_size < 8_000_000):  # ~40 frames of 3 cameras
            time.sleep(0.2)
        assert process.poll() is None, "the drive ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    with Recording(mcap) as rec:
        frames = [f.frame for f in rec.frames()]
        assert rec.truncated and not rec.complete
    assert len(frames) > 20 and frames == list(range(len(frames)))  # every whole frame, in order
    result = replay(mcap, ("planner", "controller"))
    assert result.truncated and result.ok and result.frames == len(frames)
    assert result.exit_status() == 2


def test_update_golden_changes_the_references_only_when_asked(recording, tmp_path, monkeypatch):
    path = tmp_path / "golden.mcap"
    path.write_bytes(recording.read_bytes())
    original = LatticePlannerStage.step

    def nudged(self, *args):  # a deliberate change to the planner: every plan 1 cm further left
        import dataclasses

        plan = original(self, *args)
        return dataclasses.replace(plan, y=plan.y + 0.01)

    monkeypatch.setattr(LatticePlannerStage, "step", nudged)
    before = replay(path, ("planner", "controller"))
    assert before.stages["planner"].first is not None and before.stages["controller"].first is None
    assert path.read_bytes() == recording.read_bytes()  # a replay never writes
    update = update_golden(path)
    assert update.changed["planner"] == before.stages["planner"].frames and "Plan.y[0]" in update.first["planner"]
    assert "perception" not in update.changed and "controller" not in update.changed
    after = replay(path)
    assert after.ok, after.table()  # the new references, and the controller still gets the recorded plans
    monkeypatch.setattr(LatticePlannerStage, "step", original)
    assert not replay(path, ("planner",)).ok
    assert update_golden(path).changed == {"planner": before.stages["planner"].frames}
    assert replay(path).ok

"""Recording every drive (drive.mcap) and replaying it stage by stage, against the real stages.

Fresh recordings are made here, in-process, through the one driver and the recorder: replay on
the same install must give outputs bitwise equal to the recorded ones, a deliberate change must
be caught in its stage only, re-simulation must reproduce an unchanged drive, and the file must
be what Foxglove expects.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcap.reader import make_reader
from mcap_protobuf.decoder import DecoderFactory

from stagepilot.core.config import load_stack
from stagepilot.pipeline import codec
from stagepilot.pipeline.cli import main
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.recorder import Recorder
from stagepilot.pipeline.recording import Recording
from stagepilot.pipeline.replay import replay
from stagepilot.pipeline.replay_compare import load_tolerances
from stagepilot.pipeline.resim import resim
from stagepilot.sim.scenario import load_scenario

CHANGE = "planner.lattice.weights.longitudinal_jerk=0.5"  # one lattice weight, 10x


def record(path: Path, scenario: str, seconds: float, *overrides: str):
    config = load_stack([], list(overrides))
    loaded = load_scenario(scenario, [f"duration_s={seconds}"])
    result = drive(config, loaded, observers=(Recorder(path, config, loaded),))
    return result


@pytest.fixture(scope="module")
def perfect_recording(tmp_path_factory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("perfect") / "drive.mcap"
    return path, record(path, "pedestrian_crossing", 4.0, "perception.kind=perfect")


@pytest.fixture(scope="module")
def learned_recording(tmp_path_factory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("learned") / "drive.mcap"
    return path, record(path, "town_loop", 2.0, "perception.kind=learned")


def _bitwise(path: Path):
    """Replay every stage with every tolerance zero; also check each output bit for bit."""
    unequal = []

    def check(stage, frame, recorded, now):
        if not codec.same(recorded, now):
            unequal.append((stage, frame.frame))

    result = replay(path, tolerances=load_tolerances(exact=True), on_output=check)
    return result, unequal


@pytest.mark.parametrize("which", ["perfect_recording", "learned_recording"])
def test_replay_of_a_fresh_recording_is_bit_exact_for_every_stage(which, request):
    path, drove = request.getfixturevalue(which)
    result, unequal = _bitwise(path)
    assert result.frames == len(drove.records) and not result.truncated
    assert drove.config.runtime.time_model == "budget"
    for name, stage in result.stages.items():
        assert stage.frames == len(drove.records), name  # every stage ran on every frame of these drives
        assert stage.first is None, stage.first.line()
    assert unequal == []


def test_a_changed_lattice_weight_fails_the_planner_replay_and_only_the_planner(perfect_recording, capsys):
    path, _ = perfect_recording
    status = main(["replay", str(path), "--quiet", "--stages", "planner,controller", CHANGE])
    out, err = capsys.readouterr()
    assert status == 1
    first = next(line for line in out.splitlines() if line.startswith("planner: first divergence"))
    assert "at frame " in first and "Plan." in first  # the stage, the first frame and the field
    assert "controller: matches on all" in out  # fed the recorded plans, it does not move
    assert "regression" in err and "planner" in err


def test_resim_reproduces_an_unchanged_drive_and_finds_where_a_changed_one_parts(perfect_recording):
    path, drove = perfect_recording
    same = resim(path)
    assert same.ok and same.frames_now == len(drove.records) and same.max_distance_m == 0.0
    changed = resim(path, overrides=[CHANGE])
    assert not changed.ok and changed.parted is not None
    assert 0 < changed.parted["frame"] < len(drove.records)
    assert "part at frame" in changed.table()


def test_the_recording_speaks_foxglove(perfect_recording):
    path, _ = perfect_recording
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        schemas = {c.topic: summary.schemas[c.schema_id].name for c in summary.channels.values()}
        assert schemas["/camera/front"] == "foxglove.CompressedImage"
        assert schemas["/perception/detections"] == "foxglove.ImageAnnotations"
        assert schemas["/perception/segmentation"] == "foxglove.CompressedImage"
        assert schemas["/tf"] == "foxglove.FrameTransform"
        assert {schemas[t] for t in ("/scene/objects", "/scene/plan", "/scene/route")} == {"foxglove.SceneUpdate"}
        parents: dict[str, str] = {}
        counts: dict[str, int] = {}
        for schema, channel, message in reader.iter_messages():
            if channel.message_encoding == "json":
                json.loads(message.data)
            else:
                decoded = DecoderFactory().decoder_for(channel.message_encoding, schema)(message.data)
                if schema.name == "foxglove.FrameTransform":
                    assert parents.setdefault(decoded.child_frame_id, decoded.parent_frame_id) == decoded.parent_frame_id
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
    assert counts["/camera/front"] > 0 and counts["/stagepilot/runtime"] == counts["/camera/front"]
    # A tree: one root ("world"), every frame reaches it, no frame has two parents (checked above).
    for child in parents:
        seen, node = set(), child
        while node in parents:
            assert node not in seen, f"cycle at {node}"
            seen.add(node)
            node = parents[node]
        assert node == "world"
    assert {"ego", "camera_front"} <= set(parents)


def test_metadata_names_config_scenario_seeds_versions_commit(perfect_recording, learned_recording):
    for path, drove in (perfect_recording, learned_recording):
        with Recording(path) as recording:
            info = recording.meta["stagepilot"]
            assert info["config_hash"] == drove.metrics["config_hash"]
            assert info["scenario"] == drove.scenario.name and info["scenario_seed"] == str(drove.scenario.seed)
            assert json.loads(info["versions"])["numpy"]
            assert "git_commit" in info and recording.config().model_dump() == drove.config.model_dump()
            assert recording.map_text() is not None
            learned = drove.config.perception.kind == "learned"
            assert (len(info["checkpoint_sha256"]) == 64) == learned
    with Recording(learned_recording[0]) as recording:
        for _ in recording.frames():
            pass
        assert recording.complete and json.loads(recording.meta["outcome"]["outcome"])["frames"] == 41


def test_a_faulty_camera_is_recorded_as_the_stage_saw_it_and_replays_exactly(tmp_path):
    """Blank frames from 1 s: perception sees them (recorded inline, not the camera stream),
    flags them unusable, and the planner and controller do not run on those frames."""
    path = tmp_path / "drive.mcap"
    drove = record(path, "lead_vehicle_braking", 2.0, "perception.kind=perfect", "faults.blank_images_from_s=1.0")
    assert drove.outcome["failsafe_frames"] > 0
    result, unequal = _bitwise(path)
    assert unequal == [] and result.ok
    perception, planner = result.stages["perception"], result.stages["planner"]
    assert perception.frames == len(drove.records)
    assert planner.frames == len(drove.records) - drove.outcome["failsafe_frames"]
    with Recording(path) as rec:
        last = list(rec.frames())[-1]
        assert last.ran == ("perception",)
        assert not rec.perception(last).usable and rec.observation(last).cameras["front"].rgb.max() == 0

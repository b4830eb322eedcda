"""The replay regression suite: every recorded drive in tests/replays/, stage by stage.

Each drive x stage is one test: the stage, built from today's code and the recorded config, is
fed the recorded inputs and must give the recorded outputs within configs/replay.yaml's
tolerances. When a change to a stage is deliberate, read the report
(`stagepilot replay tests/replays/NAME.mcap --report DIR`) and then accept the new outputs:
`stagepilot replay --update-golden tests/replays/*.mcap`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stagepilot.pipeline.recording import Recording
from stagepilot.pipeline.replay import STAGES, replay

REPLAYS = Path(__file__).parent / "replays"
RECORDINGS = sorted(REPLAYS.glob("*.mcap"))
MAX_SUITE_BYTES = 25_000_000  # three recordings of the three-camera rig, JPEG q60 (scripts/record_replays.py)


def test_the_suite_covers_every_stage_with_both_perceptions_and_stays_small():
    kinds = set()
    for path in RECORDINGS:
        with Recording(path) as rec:
            kinds.add(rec.info("perception"))
            assert rec.info("time_model") == "budget"
            rec.require(STAGES)
    assert kinds == {"perfect", "learned"}
    assert sum(p.stat().st_size for p in RECORDINGS) < MAX_SUITE_BYTES


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("path", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_replay(path: Path, stage: str):
    result = replay(path, (stage,))
    replayed = result.stages[stage]
    assert not result.truncated and replayed.frames > 0
    assert replayed.first is None, (
        f"{replayed.first.line()} ({replayed.diverged} of {replayed.frames} frames differ). If the change is "
        f"deliberate: stagepilot replay --update-golden {path}")

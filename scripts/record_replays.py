"""Record the replay regression suite (tests/replays/*.mcap) from scratch.

    .venv/bin/python scripts/record_replays.py            # all of them
    .venv/bin/python scripts/record_replays.py NAME ...   # some

Each is a short drive through the one driver with the recorder, under the `budget` time model.
Learned perception records with `precision: fp32`, the path every CPU runs the same way to the
last few bits (bf16 kernels differ between CPUs with and without native bf16). After a
deliberate change to a stage, update the references instead of re-recording:
`stagepilot replay --update-golden tests/replays/*.mcap`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stagepilot.core.config import load_stack
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.recorder import Recorder
from stagepilot.sim.scenario import load_scenario

OUT = Path(__file__).resolve().parents[1] / "tests" / "replays"

# Perfect perception reads no pixels beyond its frame check (its coverage comes from the
# renderer's boxes), so its drives send smaller JPEGs and the suite stays small.
SMALL_FRAMES = ["sim.cameras.front.jpeg_quality=60", "sim.cameras.front_left.jpeg_quality=60",
                "sim.cameras.front_right.jpeg_quality=60"]

# name: (scenario, seconds, stack overrides)
SUITE = {
    "town_loop_learned": ("town_loop", 2.0, ["perception.kind=learned", "perception.learned.precision=fp32"]),
    "pedestrian_crossing_perfect": ("pedestrian_crossing", 6.0, ["perception.kind=perfect", *SMALL_FRAMES]),
    "lead_vehicle_braking_perfect": ("lead_vehicle_braking", 3.0, ["perception.kind=perfect", *SMALL_FRAMES]),
}


def main(names: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names or SUITE:
        scenario_name, seconds, overrides = SUITE[name]
        config = load_stack([], overrides)
        scenario = load_scenario(scenario_name, [f"duration_s={seconds}"])
        path = OUT / f"{name}.mcap"
        result = drive(config, scenario, observers=(Recorder(path, config, scenario),))
        print(f"{path.relative_to(OUT.parents[1])}: {len(result.records)} frames, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])

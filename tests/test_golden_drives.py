"""Short drives through the one driver against their golden metrics.json.

The golden files hold what `stagepilot drive` wrote for the same scenario, config and seed
under the `budget` time model:

    stagepilot drive --scenario town_loop --quiet --out DIR scenario.duration_s=4 perception.learned.backend=torch \
        perception.learned.precision=fp32 perception.learned.operating_point=full
    stagepilot drive --scenario pedestrian_crossing --perception perfect --quiet --out DIR scenario.duration_s=6

Everything must match but the wall-clock figures (stage latency percentiles and wall-clock
overruns), which the budget time model keeps out of the drive. Updating a golden file is a
deliberate copy of a new run's metrics.json, never a side effect of a test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stagepilot.core.config import load_stack
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.writer import RunWriter
from stagepilot.sim.scenario import load_scenario

GOLDEN = Path(__file__).parent / "golden"
WALL_CLOCK = {"p50_ms", "p95_ms", "p99_ms", "max_ms", "over_budget", "parts"}  # per stage, in "latency"


def without_wall_clock(metrics: dict) -> dict:
    latency = {stage: {k: v for k, v in row.items() if k not in WALL_CLOCK} for stage, row in metrics["latency"].items()}
    return {**metrics, "latency": latency}


def differences(golden, actual, path: str = "") -> list[str]:
    """Key paths where two JSON trees differ; floats agree to 1e-6 (ULP-level differences
    between CPUs' vector math libraries, not behaviour)."""
    if isinstance(golden, dict) and isinstance(actual, dict):
        keys = sorted(set(golden) | set(actual))
        return [d for k in keys for d in differences(golden.get(k, "<missing>"), actual.get(k, "<missing>"), f"{path}.{k}")]
    if isinstance(golden, list) and isinstance(actual, list) and len(golden) == len(actual):
        return [d for i, (g, a) in enumerate(zip(golden, actual)) for d in differences(g, a, f"{path}[{i}]")]
    if isinstance(golden, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return [] if math.isclose(golden, actual, rel_tol=1e-6, abs_tol=1e-6) else [f"{path}: golden {golden}, now {actual}"]
    return [] if golden == actual else [f"{path}: golden {golden!r}, now {actual!r}"]


@pytest.mark.parametrize("scenario, perception, duration_s, golden", [
    ("town_loop", "learned", 4.0, "town_loop_4s.metrics.json"),
    ("pedestrian_crossing", "perfect", 6.0, "pedestrian_crossing_6s.metrics.json"),
])
def test_a_short_drive_matches_its_golden_metrics(tmp_path, scenario, perception, duration_s, golden):
    # The golden learned drive ran the network in torch fp32 on the whole rig: pinned, so that the
    # path and the operating point `auto` would time on this machine do not change the numbers.
    # bf16 is not portable: AMX and AVX-512 BF16 kernels round differently (0.07 m of progress in
    # 4 s); fp32 gave the same figures with oneDNN at AVX-512 and pinned to AVX2.
    pinned = (["perception.learned.backend=torch", "perception.learned.precision=fp32",
               "perception.learned.operating_point=full"] if perception == "learned" else [])
    config = load_stack([], [f"perception.kind={perception}", *pinned])
    loaded = load_scenario(scenario, [f"duration_s={duration_s}"])
    result = drive(config, loaded, observers=(RunWriter(tmp_path, config, loaded),))
    written = json.loads((tmp_path / "metrics.json").read_text())
    expected = json.loads((GOLDEN / golden).read_text())
    assert not differences(without_wall_clock(expected), without_wall_clock(written))
    # The run folder is written from the same result the tests read.
    assert not differences(json.loads(json.dumps(result.metrics)), written)


def test_the_comparison_catches_a_changed_figure():
    expected = json.loads((GOLDEN / "pedestrian_crossing_6s.metrics.json").read_text())
    changed = json.loads(json.dumps(expected))
    changed["outcome"]["route_progress_m"] += 0.01
    changed["latency"]["planner"]["p99_ms"] += 100.0  # wall clock: ignored
    assert differences(without_wall_clock(expected), without_wall_clock(changed)) == [
        f".outcome.route_progress_m: golden {expected['outcome']['route_progress_m']}, "
        f"now {changed['outcome']['route_progress_m']}"]

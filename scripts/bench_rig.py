"""The learned stage's cost per frame with the default camera rig against the front camera alone,
measured in one run on the same frames.

    .venv/bin/python scripts/bench_rig.py [--scenario town_loop] [--frames 120] [--json]

Renders the scenario's first frames with the rig (the ego following the reference follower),
then times the whole learned stage (`LearnedPerception.step`: frame checks, network, placement,
fusion, tracking, road, light) on each frame with the rig and with the front camera alone,
alternating the two so that both see the same machine load. Prints p50 / p99 per frame and the
ratio, with the CPU's flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from stagepilot.core.config import load_stack
from results import machine_info  # scripts/results.py: CPU, cores, flags, GPU, date
from stagepilot.pipeline.stack import build_perception
from stagepilot.sim.follower import make_follower
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.world import EmbeddedSimulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="town_loop")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = load_stack([], ["perception.kind=learned"])
    front_only = load_stack([], ["perception.kind=learned", "sim.cameras.front_left=null", "sim.cameras.front_right=null"])
    sim = EmbeddedSimulator(config)
    obs = sim.reset(load_scenario(args.scenario))
    follower = make_follower(sim)
    frames = []
    for _ in range(args.frames + args.warmup):
        frames.append(obs)
        obs = sim.step(follower(obs))
    stages = {"rig": build_perception(config, sim.road_map, sim.signal_heads),
              "front": build_perception(front_only, sim.road_map, sim.signal_heads)}
    times: dict[str, list[float]] = {name: [] for name in stages}
    for k, frame in enumerate(frames):
        for name, stage in stages.items():
            seen = frame if name == "rig" else dataclasses.replace(frame, cameras={"front": frame.cameras["front"]})
            start = time.perf_counter()
            stage.step(seen)
            if k >= args.warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    result = {name: {"p50_ms": round(float(np.percentile(t, 50)), 2), "p99_ms": round(float(np.percentile(t, 99)), 2)}
              for name, t in times.items()}
    result["rig_over_front_p50"] = round(result["rig"]["p50_ms"] / result["front"]["p50_ms"], 2)
    result["cameras"] = {name: list(c.sim.cameras) for name, c in (("rig", config), ("front", front_only))}
    result["frames"], result["scenario"] = args.frames, args.scenario
    result["rig_path"] = stages["rig"].path  # the network's path and the rig's operating point
    result["machine"] = machine_info()
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"rig ({', '.join(result['cameras']['rig'])}): p50 {result['rig']['p50_ms']} ms, p99 {result['rig']['p99_ms']} ms")
        print(f"front camera alone: p50 {result['front']['p50_ms']} ms, p99 {result['front']['p99_ms']} ms")
        print(f"rig / front at p50: {result['rig_over_front_p50']}x ({args.frames} frames of {args.scenario})")


if __name__ == "__main__":
    main()

"""`stagepilot bench sim`: simulator throughput on one CPU core.

steps_per_s: world steps (ego dynamics, traffic, events) with cameras off.
frames_per_s: one 640x360 camera rendering RGB + semantic + depth, timed alone.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence

import cv2
import numpy as np

from stagepilot.core.config import StackConfig
from stagepilot.core.messages import Control
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.sensors import dynamic_boxes
from stagepilot.sim.world import EmbeddedSimulator


def _pin_one_core() -> str:
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"cpu {core}"
    return "unpinned"


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3)}


def bench_sim(config: StackConfig, scenario_name: str, overrides: list[str], steps: int, frames: int,
              maps_dirs: Sequence[str] = ()) -> dict:
    pinned = _pin_one_core()
    scenario = load_scenario(scenario_name, overrides, maps_dirs)
    camera = config.sim.cameras.get("front") or next(iter(config.sim.cameras.values()))
    config = config.model_copy(update={"sim": config.sim.model_copy(update={"cameras": {"front": camera}})})
    cruise = Control(throttle=0.35)

    # Physics and traffic only.
    sim = EmbeddedSimulator(config, render=False)
    sim.reset(scenario)
    step_times = []
    for _ in range(steps):
        start = time.perf_counter()
        sim.step(cruise)
        step_times.append(time.perf_counter() - start)

    # One camera: render each world state of a drive, timing the render call alone.
    sim = EmbeddedSimulator(config, render=True)
    sim.reset(scenario)
    renderer = sim.sensors.renderers["front"]
    frame_times = []
    for _ in range(frames):
        sim.step(cruise)
        state = sim.ego.state
        boxes = dynamic_boxes(sim)
        start = time.perf_counter()
        renderer.render((state.x, state.y, state.yaw), boxes, sim.sensors.lighting, frame_index=sim.frame)
        frame_times.append(time.perf_counter() - start)

    return {
        "steps_per_s": round(len(step_times) / sum(step_times), 1),
        "frames_per_s": round(len(frame_times) / sum(frame_times), 1),
        "step": _percentiles(step_times),
        "frame": _percentiles(frame_times),
        "camera": f"{camera.width}x{camera.height} rgb+semantic+depth",
        "scenario": scenario.name,
        "actors": len(sim.agents()),
        "static_boxes": len(sim.sensors.statics),
        "threads": pinned,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }

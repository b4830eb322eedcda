"""What the side cameras find whole, as their band (perception/operating.py) and as their band
at half scale (tried for a cheaper point and rejected), against the renderer's ground truth.

    .venv/bin/python scripts/bench_points.py [--scenarios town_traffic junction_cross_traffic] [--frames 120] [--json]

Drives each scenario with the reference follower and takes every `--every`th tick's side-camera
frames. Each frame goes through the network whole (`full`), as its band at full scale
(`band`) and as its band at half scale (`band_half`); a vehicle or pedestrian whose
box is at least half visible counts as found when a detection of its class overlaps it at IoU
>= 0.5 (score over the stage's threshold). Prints recall by the box's height in the whole frame,
and the detections that match nothing.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from results import machine_info  # scripts/results.py: CPU, cores, flags, GPU, date
from stagepilot.core.config import load_stack
from stagepilot.perception import operating
from stagepilot.perception.runner import NetworkRunner
from stagepilot.sim.follower import make_follower
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.world import EmbeddedSimulator

BANDS = ((0, 12), (12, 24), (24, 48), (48, 10_000))  # [px] box height in the whole frame
POINTS = {"full": 1.0, "band": 1.0, "band_half": 0.5}  # name: scale of the band


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=["town_traffic", "junction_cross_traffic"])
    parser.add_argument("--frames", type=int, default=120, help="ticks taken per scenario")
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = load_stack([], ["perception.kind=learned"])
    learned = config.perception.learned
    runner = NetworkRunner(learned, batch=1)
    sides = list(config.sim.cameras)[1:]
    found = {p: {b: [0, 0] for b in BANDS} for p in POINTS}  # point -> band -> [found, total]
    spurious = dict.fromkeys(POINTS, 0)
    frames = 0
    for name in args.scenarios:
        sim = EmbeddedSimulator(config)
        obs = sim.reset(load_scenario(name))
        follower = make_follower(sim)
        for tick in range(args.frames * args.every):
            if tick % args.every == 0:
                for cam in sides:
                    image = obs.cameras[cam]
                    h, w = image.rgb.shape[:2]
                    truth = [(o.kind, o.boxes_2d[cam]) for o in obs.ground_truth.objects
                             if o.kind in ("vehicle", "pedestrian") and cam in o.boxes_2d
                             and o.boxes_2d[cam].visible_fraction >= 0.5]
                    for point, scale in POINTS.items():
                        view = operating.view(operating.BY_NAME["full" if point == "full" else "side_band"], False,
                                              h, w, image.K, image.T_ego_cam, runner.input_size,
                                              learned.side_band_elevation_deg)
                        size = (int(round(view.size[0] * scale)), int(round(view.size[1] * scale)))
                        out = runner.run([image.rgb[view.top:]], sizes=[size])[0]
                        dets = [(label, box + np.array([0, view.top, 0, view.top]))
                                for box, score, label in zip(out.boxes, out.scores, out.labels)
                                if label in ("vehicle", "pedestrian") and score >= learned.score_threshold[label]]
                        used = set()
                        for kind, b in truth:
                            box = (b.x0, b.y0, b.x1, b.y1)
                            band = next(x for x in BANDS if x[0] <= b.y1 - b.y0 < x[1])
                            match = [i for i, (label, d) in enumerate(dets) if label == kind and iou(box, d) >= 0.5]
                            found[point][band][1] += 1
                            if match:
                                found[point][band][0] += 1
                                used.add(match[0])
                        spurious[point] += len(dets) - len(used)
                frames += len(sides)
            obs = sim.step(follower(obs))
    result = {"frames": frames, "scenarios": args.scenarios, "points": {
        p: {"recall_by_height_px": {f"{lo}-{hi if hi < 10_000 else 'up'}": (round(f / t, 3) if t else None, t)
                                    for (lo, hi), (f, t) in found[p].items()},
            "unmatched_detections": spurious[p]} for p in POINTS},
        "path": runner.path, "machine": machine_info()}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{frames} side-camera frames of {', '.join(args.scenarios)}; recall (objects) by box height:")
    for p, r in result["points"].items():
        cells = ", ".join(f"{k} px {v[0]} ({v[1]})" for k, v in r["recall_by_height_px"].items())
        print(f"  {p:15s} {cells}; unmatched detections {r['unmatched_detections']}")


if __name__ == "__main__":
    main()

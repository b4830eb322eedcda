"""Parallel speed-up of `stagepilot evaluate`: the same suite with 1 worker, then 2, in one run.

    .venv/bin/python scripts/evaluate_speedup.py [--suite default] [--workers 2] [key.path=value ...]

Prints the wall time of each, the speed-up, and whether the scores are identical. Perfect
perception by default (pass perception.kind=learned to measure the network's suite).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

from stagepilot.pipeline.evaluation import SCORE_FIELDS, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="default")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*", default=[])
    args = parser.parse_args()
    overrides = args.overrides or ["perception.kind=perfect"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, args.workers):
            runs[workers] = evaluate(args.suite, workers=workers, overrides=overrides,
                                     out_dir=Path(tmp) / f"w{workers}", show_progress=True)
    one, many = runs[1], runs[args.workers]
    scores = [[json.dumps(s.get(k), sort_keys=True) for k in ("id", *SCORE_FIELDS)] for s in one.scenarios]
    same = scores == [[json.dumps(s.get(k), sort_keys=True) for k in ("id", *SCORE_FIELDS)] for s in many.scenarios]
    print(json.dumps({"suite": args.suite, "scenarios": len(one.scenarios), "overrides": overrides,
                      "wall_s_1_worker": round(one.wall_s, 1), f"wall_s_{args.workers}_workers": round(many.wall_s, 1),
                      "speedup": round(one.wall_s / many.wall_s, 2), "identical_scores": same,
                      "mean_driving_score": round(one.mean_driving_score, 2), "cpu": platform.processor() or None}))


if __name__ == "__main__":
    main()

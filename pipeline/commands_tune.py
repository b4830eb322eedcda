"""What `stagepilot tune` does, given its parsed arguments (pipeline/tuning.py does the work)."""

from __future__ import annotations

import json
from pathlib import Path


def tune(args) -> int:
    from stagepilot.pipeline.tuning import TuneOptions
    from stagepilot.pipeline.tuning import tune as run_tune

    overrides = list(args.overrides)
    if args.perception:
        overrides.append(f"perception.kind={args.perception}")
    options = TuneOptions(space=args.space, suite=args.suite, trials=args.trials, study=args.study,
                          storage=args.storage, workers=args.workers, backend=args.backend,
                          ray_address=args.ray_address, objective=args.objective,
                          comfort_penalty=args.comfort_penalty, config_files=list(args.config), overrides=overrides,
                          out_dir=Path(args.out) if args.out else None, holdout=args.holdout, seed=args.seed,
                          prune_startup=args.prune_startup, prune_warmup=args.prune_warmup, pruner=args.pruner,
                          maps_dirs=list(args.maps), keep_runs=args.keep_runs, show_progress=not args.quiet)
    result = run_tune(options)
    print(json_summary(result) if args.json else summary(result))
    return 0


def summary(result) -> str:
    lines = [f"study {result.study_name}: {result.finished} trials finished ({result.pruned} pruned), "
             f"storage {result.storage}"]
    if result.baseline_score is not None:
        lines.append(f"baseline mean driving score {result.baseline_score:.2f}")
    if result.best_score is not None:
        lines.append(f"best trial {result.best_number}: mean driving score {result.best_score:.2f} "
                     f"(objective {', '.join(f'{v:.2f}' for v in result.best_values or [])})")
    if result.holdout:
        lines.append(f"held-out suite: baseline {result.holdout['baseline']:.2f} -> tuned {result.holdout['best']:.2f}")
    for name, path in result.paths.items():
        lines.append(f"{name}: {path}")
    return "\n".join(lines)


def json_summary(result) -> str:
    return json.dumps({"study": result.study_name, "finished": result.finished, "pruned": result.pruned,
                       "best_trial": result.best_number, "best_score": result.best_score,
                       "baseline_score": result.baseline_score, "holdout": result.holdout,
                       "paths": {k: str(v) for k, v in result.paths.items()}})

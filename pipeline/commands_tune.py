"""What `stagepilot tune` does, given its parsed arguments (pipeline/tuning.py does the work)."""

from __future__ import annotations

from pathlib import Path


def tune(args) -> int:
    from stagepilot.pipeline.tuning import TuneOptions, json_summary, summary
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

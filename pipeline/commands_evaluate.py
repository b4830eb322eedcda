"""What `stagepilot evaluate` does, given its parsed arguments: run the suite, print the tables,
write results.json and the report."""

from __future__ import annotations

from pathlib import Path

from stagepilot.core.config import ConfigError

SHORT = {"collision_pedestrian": "ped", "collision_vehicle": "veh", "collision_static": "static",
         "red_light": "red", "stop_sign": "stop", "timeout": "timeout", "route_deviation": "deviation",
         "blocked": "blocked"}


def _infractions(entry: dict) -> str:
    counts = entry.get("infractions") or {}
    parts = [f"{SHORT.get(k, k)} {v}" for k, v in counts.items() if v]
    if entry.get("outside_route_lanes_pct"):
        parts.append(f"outside {entry['outside_route_lanes_pct']:.1f}%")
    return ", ".join(parts) or "-"


def _comfort(entry: dict) -> str:
    comfort = entry.get("comfort") or {}
    within = comfort.get("within_bounds")
    return "-" if within is None else ("ok" if within else "out")


def scenario_table(evaluation, deltas: dict | None = None) -> str:
    head = f"{'scenario':26s} {'score':>6s} {'compl.':>6s}  {'status':15s} {'comfort':7s} {'p99 ms (p/pl/c)':17s}  infractions"
    if deltas is not None:
        head += "   vs compared"
    lines = [head]
    for entry in evaluation.scenarios:
        p99 = entry.get("latency_p99_ms") or {}
        lat = "/".join(f"{p99[s]:.0f}" for s in ("perception", "planner", "controller") if s in p99) or "-"
        status = entry.get("status", "?")
        line = (f"{entry['id']:26s} {entry['driving_score']:6.1f} {entry.get('route_completion', 0.0):6.1f}  "
                f"{status:15s} {_comfort(entry):7s} {lat:17s}  {_infractions(entry)}")
        if status == "failed":
            line += f"  ERROR {entry.get('error', '')[:120]}"
        if deltas is not None:
            delta = deltas.get(entry["id"])
            line += "   (new)" if delta is None else f"   {delta:+.1f}"
        lines.append(line)
    return "\n".join(lines)


def family_table(evaluation) -> str:
    counts: dict[str, int] = {}
    for entry in evaluation.scenarios:
        counts[entry["family"] or "explicit"] = counts.get(entry["family"] or "explicit", 0) + 1
    lines = [f"{'family':26s} {'n':>3s} {'mean score':>10s}"]
    for family, mean in evaluation.families.items():
        lines.append(f"{family:26s} {counts[family]:3d} {mean:10.1f}")
    lines.append(f"{'overall':26s} {len(evaluation.scenarios):3d} {evaluation.mean_driving_score:10.1f}")
    return "\n".join(lines)


def evaluate(args) -> int:
    from stagepilot.pipeline.evaluation import compare_scores, evaluate, load_results, write_results
    from stagepilot.pipeline.evaluation_report import write_report

    overrides = list(args.overrides)
    if args.perception:
        overrides.append(f"perception.kind={args.perception}")
    other = load_results(args.compare) if args.compare else None  # a bad file fails before any drive
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"{out}: not empty; choose a new --out, remove it, or pass --overwrite")
    evaluation = evaluate(args.suite, config_files=args.config, overrides=overrides, workers=args.workers,
                          backend=args.backend, ray_address=args.ray_address, out_dir=out, video=args.video,
                          record=not args.no_record, maps_dirs=args.maps, show_progress=not args.quiet)
    deltas = compare_scores(evaluation, other) if other is not None else None
    print(scenario_table(evaluation, deltas))
    print()
    print(family_table(evaluation))
    results = write_results(evaluation)
    report = write_report(evaluation, deltas, args.compare)
    failed = [e["id"] for e in evaluation.scenarios if e.get("status") == "failed"]
    print(f"\nmean driving score {evaluation.mean_driving_score:.2f} over {len(evaluation.scenarios)} scenarios "
          f"({evaluation.backend}, {evaluation.workers} worker(s), {evaluation.wall_s:.1f} s)")
    if deltas is not None:
        before = other.get("mean_driving_score")
        if isinstance(before, (int, float)):
            print(f"compared with {args.compare}: {evaluation.mean_driving_score - before:+.2f}")
    print(f"results: {results}")
    print(f"report: {report}")
    print(f"run folders: {evaluation.out_dir / 'scenarios'}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 0

"""What each `stagepilot` command does, given its parsed arguments (pipeline/cli.py parses)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stagepilot.core.config import ConfigError, load_stack
from stagepilot.core.roadmap import MapError


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    stack = [o for o in overrides if not o.startswith("scenario.")]
    scenario = [o[len("scenario."):] for o in overrides if o.startswith("scenario.")]
    return stack, scenario


def _run_dir(out: str | None, overwrite: bool, scenario_name: str) -> Path:
    from stagepilot.pipeline.writer import claim_run_dir, default_run_dir

    if out is None:
        return default_run_dir(Path("runs"), scenario_name)
    if not out.strip():
        raise ConfigError("--out: empty; name a run folder, or leave --out out for runs/<time>-<scenario>/")
    return claim_run_dir(Path(out), overwrite)


def drive(args) -> int:
    from stagepilot.pipeline.driver import drive
    from stagepilot.pipeline.interrupts import exit_status, signal_name
    from stagepilot.pipeline.writer import RunWriter
    from stagepilot.sim.scenario import load_scenario

    stack_overrides, scenario_overrides = _split_overrides(args.overrides)
    if args.time_model:
        stack_overrides.append(f"runtime.time_model={args.time_model}")
    if args.pipelined:
        stack_overrides.append("runtime.pipelined=true")
    if args.perception:
        stack_overrides.append(f"perception.kind={args.perception}")
    config = load_stack(args.config, stack_overrides)
    scenario = load_scenario(args.scenario, scenario_overrides, args.maps, server_maps=config.sim.source == "carla")
    out_dir = _run_dir(args.out, args.overwrite, scenario.name)
    observers = [RunWriter(out_dir, config, scenario)]
    if not args.no_record:
        from stagepilot.pipeline.recorder import Recorder

        observers.append(Recorder(out_dir / "drive.mcap", config, scenario))
    if args.live:
        observers.append(_live_view(config, args.live_port))
    result = drive(config, scenario, observers=tuple(observers), show_progress=not args.quiet, stop_on_signals=True)
    outcome = result.outcome
    print(f"run folder: {out_dir}")
    print(f"video: {out_dir / 'video.mp4'}")
    if not args.no_record:
        print(f"recording: {out_dir / 'drive.mcap'} (stagepilot replay, or open it in Foxglove)")
    print(f"outcome: completed={outcome['completed']} collisions={outcome['collisions']} "
          f"red_lights={outcome['red_lights']} failsafe_frames={outcome['failsafe_frames']}")
    if result.host_cpu is not None and config.runtime.time_model == "measured":  # the stage times depend on it
        cpu = result.host_cpu
        print(f"host CPU during the drive: busy {cpu['busy_percent']} %, idle {cpu['idle_percent']} %, "
              f"taken by the hypervisor (steal) {cpu['steal_percent']} % (run.json host_cpu)")
    if result.perception_path:
        print(_path_line(result.perception_path))
    for step in (result.between_ticks or {}).get("operating_point_steps", ()):
        print(f"perception stepped down from {step['from']} to {step['to']} at frame {step['frame']}: {step['why']}; "
              "this machine starts there next time (run.json between_ticks)")
    if result.stop_signal is None:
        return 0
    name = signal_name(result.stop_signal)
    if result.interrupted:
        print(f"stagepilot: interrupted ({name}); the run folder holds everything up to the interruption",
              file=sys.stderr)
    else:
        print(f"stagepilot: {name} while writing the run folder; the drive and its run folder are complete",
              file=sys.stderr)
    return exit_status(result.stop_signal)


def _path_line(path: dict) -> str:
    """What ran the learned stage's network and at which operating point, and how each was chosen."""
    line = f"perception: {path.get('backend')} {path.get('dtype')} on {path.get('device')} ({path.get('chosen_by')})"
    point = path.get("operating_point") or {}
    if point:
        line += f", operating point {point.get('name')} ({point.get('chosen_by')}"
        timed = (point.get("network_ms") or {}).get(point.get("name"))
        if timed is not None and point.get("network_target_ms") is not None:
            line += f": network {timed:g} ms against a target of {point['network_target_ms']:g} ms"
        line += ")"
    if "remembered" in (path.get("chosen_by"), point.get("chosen_by")):
        line += "; `stagepilot paths` lists what this machine remembers"
    return line


def _live_view(config, port: int):
    from stagepilot.pipeline.live import LiveView

    if not 0 <= port <= 65535:
        raise ConfigError(f"--live-port {port}: expected a port number from 0 to 65535")
    vehicle = config.vehicle
    view = LiveView(next(iter(config.sim.cameras), "front"), vehicle.length_m, vehicle.width_m,
                    vehicle.rear_overhang_m, port=port)
    print("live: open Foxglove, then Open connection -> Foxglove WebSocket -> the URL it prints when the drive starts",
          file=sys.stderr)
    return view


def render(args) -> int:
    from stagepilot.pipeline.render import render_scenario

    stack_overrides, scenario_overrides = _split_overrides(args.overrides)
    config = load_stack(args.config, stack_overrides)
    video = render_scenario(config, args.scenario, scenario_overrides, args.out, args.duration, args.maps)
    print(f"wrote {video}")
    return 0


def list_scenarios(args) -> int:
    from stagepilot.sim.scenario import SCENARIO_DIR, load_scenario

    for path in sorted(SCENARIO_DIR.glob("*.yaml")):
        try:
            line = load_scenario(path, maps_dirs=args.maps).description
        except MapError as exc:  # a town that is not on the search path: list it, say why
            line = f"(cannot run here) {exc}"
        print(f"{path.stem:24s} {line}")
    return 0


def bench_sim(args) -> int:
    from stagepilot.sim.bench import bench_sim

    stack_overrides, scenario_overrides = _split_overrides(args.overrides)
    config = load_stack(args.config, stack_overrides)
    _print_result(bench_sim(config, args.scenario, scenario_overrides, args.steps, args.frames, args.maps), args.json)
    return 0


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24s} {value}")


def bench_plan(args) -> int:
    from stagepilot.planning.bench import bench_plan

    config = load_stack(args.config, args.overrides)
    _print_result(bench_plan(config.planner.lattice, config.vehicle, calls=args.calls,
                             behaviour=config.planner.behaviour), args.json)
    return 0


def bench_control(args) -> int:
    from stagepilot.control.bench import bench_control
    from stagepilot.pipeline.stack import vehicle_geometry

    config = load_stack(args.config, args.overrides)
    result = bench_control(config.controller, vehicle_geometry(config), config.sim.dt_s, calls=args.calls)
    _print_result(result, args.json)
    return 0


def bench_perception(args) -> int:
    from stagepilot.perception.bench import bench_perception

    config = load_stack(args.config, args.overrides)
    _print_result(bench_perception(config.perception.learned, iters=args.iters, warmup=args.warmup,
                                   threads=args.threads, architecture=args.architecture,
                                   input_size=tuple(args.input_size) if args.input_size else None,
                                   camera=next(iter(config.sim.cameras.values()), None)), args.json)
    return 0


def _collect_command(args) -> str:
    """The command with every option that shapes the dataset spelt out (not --workers/--quiet)."""
    import shlex

    options = {"--out": args.out, "--frames": args.frames, "--split": args.split, "--seed": args.seed,
               "--val-fraction": args.val_fraction, "--frames-per-scene": args.frames_per_scene,
               "--interval": args.interval, "--image-format": args.image_format}
    if args.first_yellow:
        options["--first-yellow"] = args.first_yellow
    if args.crowd:
        options["--crowd"] = args.crowd
    words = [word for key, value in options.items() for word in (key, str(value))]
    words += ["--depth"] * args.depth + [word for path in args.config for word in ("--config", path)]
    words += [word for folder in args.maps for word in ("--maps", folder)]
    return shlex.join(["stagepilot", "collect", *words, *args.overrides])


def collect(args) -> int:
    from stagepilot.pipeline.collect import collect_dataset

    config = load_stack(args.config, args.overrides)
    manifest = collect_dataset(
        config, args.out, args.frames, args.split, args.seed, val_fraction=args.val_fraction,
        frames_per_scene=args.frames_per_scene, interval_s=args.interval, image_format=args.image_format,
        depth=args.depth, workers=args.workers, show_progress=not args.quiet, command=_collect_command(args),
        maps_dirs=args.maps, first_yellow=args.first_yellow, crowd=args.crowd,
    )
    for name, split in manifest["splits"].items():
        print(f"{name}: {split['frames']} frames, {split['images']} images, {split['annotations']} boxes, "
              f"maps {', '.join(split['maps'])}")
    print(f"wrote {args.out / 'manifest.json'}")
    return 0


def train(args) -> int:
    import shlex

    from stagepilot.perception.train import load_train_config, train

    words = ["stagepilot", "train", "--config", str(args.config)]
    words += ["--resume", str(args.resume)] if args.resume else []
    config = load_train_config(args.config, args.overrides)
    result = train(config, resume=args.resume, command=shlex.join(words + args.overrides),
                   show_progress=not args.quiet)
    print(f"wrote {result['checkpoint']}" + (f" and {result['model']}" if result["model"] else ""))
    return 0


def train_refiner(args) -> int:
    import shlex

    from stagepilot.perception.runner import resolve_checkpoint
    from stagepilot.perception.train_refiner import train_refiner as run

    checkpoint = resolve_checkpoint(str(args.checkpoint) if args.checkpoint else None)
    if not (Path(args.data) / "annotations" / "train.json").is_file():
        raise ConfigError(f"{args.data}: no train split (annotations/train.json); make one with `stagepilot collect`")
    words = ["stagepilot", "train-refiner", "--data", str(args.data), "--out", str(args.out),
             "--epochs", str(args.epochs), "--seed", str(args.seed)]
    words += ["--checkpoint", str(args.checkpoint)] if args.checkpoint else []
    words += [w for path in args.config for w in ("--config", str(path))] + list(args.overrides)
    config = load_stack(args.config, args.overrides)
    meta = run(args.data, args.out, checkpoint, config, epochs=args.epochs, seed=args.seed,
               show_progress=not args.quiet, command=shlex.join(words))
    print(json.dumps({"wrote": str(args.out), **{k: meta.get(k) for k in ("pairs", "minutes", "loss", "val")}}))
    return 0


def eval_perception(args) -> int:
    from stagepilot.perception.evaluate import evaluate_checkpoint

    if not args.checkpoint.is_file():
        raise ConfigError(f"{args.checkpoint}: checkpoint not found")
    config = load_stack(args.config, args.overrides)
    print(json.dumps(evaluate_checkpoint(args.checkpoint, args.data, args.split, config=config)))
    return 0


def export_onnx(args) -> int:
    from stagepilot.perception.export import export_checkpoint

    print(json.dumps(export_checkpoint(args.checkpoint, args.out, opset=args.opset)))
    return 0


def config_show(args) -> int:
    import yaml

    from stagepilot.core.config import config_hash

    config = load_stack(args.config, args.overrides)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    print(f"# hash: {config_hash(config)}")
    return 0


def paths_list(args) -> int:
    """``stagepilot paths``: what this machine remembers of its timings (perception/paths.py)."""
    from stagepilot.perception import paths

    try:
        if args.forget:
            count = paths.forget()
            print(f"forgot {count} remembered choice{'s' if count != 1 else ''} ({paths.memory_file()}); "
                  "the next drive times its network paths and operating points again")
            return 0
        found = paths.entries()
    except paths.MemoryFileError as exc:
        print(f"stagepilot: error: {exc}; `stagepilot paths --forget` removes it", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"stagepilot: error: {paths.memory_file()}: {exc.strerror}", file=sys.stderr)
        return 2
    cpu = paths.cpu_identity()
    rows = [_remembered_row(key, entry, cpu) for key, entry in sorted(found.items(), key=lambda kv: (
        "point" in kv[1], kv[1].get("date", ""), kv[0]))]
    if args.json:
        print(json.dumps({"file": str(paths.memory_file()), "cpu": cpu, "choices": rows}, indent=1))
        return 0
    if not rows:
        print(f"nothing remembered in {paths.memory_file()}: the next drive with learned perception times "
              "its network paths and operating points")
        return 0
    print(f"{paths.memory_file()}: {len(rows)} remembered choice{'s' if len(rows) != 1 else ''}; this CPU: {cpu}")
    for row in rows:
        order = row.get("ladder") or sorted(row["timed_ms"], key=row["timed_ms"].get)  # a point's ladder, or fastest first
        timed = ", ".join(f"{name} {row['timed_ms'][name]:g}" for name in
                          [*(n for n in order if n in row["timed_ms"]), *(n for n in row["timed_ms"] if n not in order)])
        what = f"{row['kind']}: {row['chosen']}"
        where = "" if row["this_cpu"] else f" (another CPU: {row['cpu']})"
        print(f"- {what}, {row['date']}{where}")
        if timed:
            target = f" against a target of {row['target_ms']:g} ms" if row.get("target_ms") is not None else ""
            on = f" on {row['timed_on']}" if row.get("timed_on") else ""
            print(f"    timed{on} (median ms){target}: {timed}")
        for step in row.get("steps", ()):
            print(f"    stepped down from {step.get('from')} to {step.get('to')} in a drive: {step.get('why')}")
    print("`stagepilot paths --forget` has the next drive time them again (after the machine's load or setup changed)")
    return 0


def _remembered_row(key: str, entry: dict, cpu: str) -> dict:
    """One remembered choice, in the words `stagepilot paths` prints."""
    point = "point" in entry
    ms = entry.get("ms") if isinstance(entry.get("ms"), dict) else {}
    row = {
        "key": key,
        "kind": "operating point" if point else "network path",
        "chosen": str(entry["point"]) if point else f"{entry.get('backend')} {entry.get('dtype')}",
        "date": entry.get("date", "?"), "cpu": entry.get("cpu", "?"), "this_cpu": entry.get("cpu") == cpu,
        "timed_ms": {str(k): float(v) for k, v in ms.items() if isinstance(v, (int, float))},
    }
    for name, kind in (("target_ms", (int, float)), ("timed_on", str), ("ladder", list)):
        if isinstance(entry.get(name), kind):
            row[name] = entry[name]
    steps = [s for s in entry.get("steps") or () if isinstance(s, dict)] if isinstance(entry.get("steps"), list) else []
    if steps:
        row["steps"] = steps
    return row

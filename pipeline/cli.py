"""The `stagepilot` command line.

    stagepilot drive [--scenario NAME] [--time-model budget] [--out DIR] [--no-record] [--live] [key.path=value ...]
    stagepilot replay RECORDING [--stages perception,planner,controller] [--report DIR] [key.path=value ...]
    stagepilot replay RECORDING --resim [--report DIR] [key.path=value ...]
    stagepilot replay --update-golden RECORDING ...
    stagepilot recording info FILE
    stagepilot evaluate --suite default [--workers N] [--backend local|ray] [--perception perfect] [--compare RESULTS]
    stagepilot tune --space planner --suite default --trials 30 [--workers N] [--backend local|ray] [--holdout SUITE]
    stagepilot recording export FILE --frames A:B --out DIR
    stagepilot sim render --scenario NAME --out DIR [key.path=value ...]
    stagepilot sim list
    stagepilot bench sim|plan|control|perception --json
    stagepilot collect --out DIR --frames N [--split train|val|both] [--seed S]
    stagepilot config show [--config FILE] [key.path=value ...]
    stagepilot train --config configs/training/default.yaml [--resume CKPT] [key.path=value ...]
    stagepilot eval perception --checkpoint CKPT --data DIR [--split val] [--json]

Trailing `key.path=value` arguments override the stack config; those that start with
`scenario.` override the scenario file (`scenario.seed=3`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from stagepilot import __version__
from stagepilot.core.config import ConfigError
from stagepilot.core.roadmap import MapError
from stagepilot.pipeline.codec import RecordingError
from stagepilot.pipeline import commands as handlers
from stagepilot.pipeline import commands_evaluate as evaluate_handlers
from stagepilot.pipeline import commands_replay as replay_handlers
from stagepilot.pipeline import commands_tune as tune_handlers
from stagepilot.pipeline.cli_args import (add_maps_arg, add_sim_args, add_stack_args, finite_positive_float,
                                          positive_int, sim_overrides)
from stagepilot.pipeline.cli_model import add_model_commands
from stagepilot.pipeline.interrupts import exit_status
from stagepilot.sim.interface import SimulatorError


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake as one line (`--help` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stagepilot",
        description="A camera-based driving stack for CARLA and its embedded simulator.",
    )
    parser.add_argument("--version", action="version", version=f"stagepilot {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    drive = commands.add_parser(
        "drive", help="drive a scenario with the stack and write a run folder",
        description="Drive a scenario closed loop through the staged runtime (perception -> planner -> "
        "controller, with budgets and fail-safes) and write a run folder: config, metrics.json, video.mp4, "
        "summary.png, trace.json (opens in Perfetto). Ctrl-C, SIGTERM or SIGHUP ends the drive and still writes "
        "the folder (exit status 130, 143, 129).",
    )
    drive.add_argument("--scenario", default="town_loop",
                       help="a name from configs/scenarios/ or a path to a YAML file (default: town_loop)")
    drive.add_argument("--perception", default=None, choices=["learned", "perfect"],
                       help="perception stage: learned (the trained network, the default from configs/stack.yaml) "
                            "or perfect (the ground-truth stand-in); overrides perception.kind")
    drive.add_argument("--time-model", choices=["ideal", "budget", "measured"], default=None,
                       help="when commands take effect (default: runtime.time_model from config, budget)")
    drive.add_argument("--pipelined", action="store_true", help="overlap perception of frame n+1 with planning of frame n")
    drive.add_argument("--out", default=None, metavar="DIR",
                       help="run folder, absent or empty (default: runs/<time>-<scenario>/)")
    drive.add_argument("--overwrite", action="store_true",
                       help="let --out name a folder that holds a run; its run files are replaced")
    drive.add_argument("--quiet", action="store_true", help="no progress line")
    drive.add_argument("--no-record", action="store_true",
                       help="do not write drive.mcap (the recording that `stagepilot replay` and Foxglove open)")
    drive.add_argument("--live", action="store_true",
                       help="stream the drive to Foxglove over a WebSocket on localhost while it runs")
    drive.add_argument("--live-port", type=int, default=8765, metavar="PORT",
                       help="port of the --live WebSocket server (default: 8765; 0 picks a free one)")
    add_maps_arg(drive)
    add_sim_args(drive)
    add_stack_args(drive)
    drive.set_defaults(handler=handlers.drive)

    replay = commands.add_parser(
        "replay", help="replay a recorded drive, stage by stage, as a regression test",
        description="Feed each chosen stage the recorded inputs of every frame, in order, through the real stage "
        "classes built from the recorded config (trailing key.path=value overrides on top), and compare its "
        "outputs with the recorded ones under the tolerances of configs/replay.yaml. Prints the first divergence "
        "per stage and a summary table. --resim drives the recorded scenario again, closed loop, and says where "
        "the drives part. --update-golden rewrites the recordings' reference outputs with what the stages give "
        "now. Exit status: 0 everything matches, 1 a regression, 2 bad input (a recording cut short replays up "
        "to the cut and exits 2).")
    replay.add_argument("items", nargs="*", metavar="RECORDING|key.path=value",
                        help="a drive.mcap (or a run folder holding one), then overrides of the recorded config")
    replay.add_argument("--stages", default="perception,planner,controller",
                        help="comma-separated stages to replay (default: all three)")
    replay.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="stack YAML laid over the recorded config (repeatable)")
    replay.add_argument("--tolerances", action="append", default=[], metavar="FILE",
                        help="tolerance YAML laid over configs/replay.yaml (repeatable)")
    replay.add_argument("--exact", action="store_true", help="every tolerance zero: outputs must be bitwise equal")
    replay.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="write a diff report: report.md, differences.png, side_by_side.mp4")
    replay.add_argument("--resim", action="store_true",
                        help="closed-loop re-simulation with the recorded scenario, seed and config")
    replay.add_argument("--update-golden", action="store_true",
                        help="replace the recordings' reference outputs with the outputs now, and say what changed")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(handler=replay_handlers.replay)

    evaluate_suite = commands.add_parser(
        "evaluate", help="drive a scenario suite in parallel and score it (CARLA Leaderboard driving score)",
        description="Sample the suite's scenarios from their families (configs/suites/, configs/scenarios/families/), "
        "drive each through the same driver as `stagepilot drive`, score it with the CARLA Leaderboard 2.0 driving "
        "score, print a table per scenario and the mean per family and overall, and write results.json, a report "
        "and a run folder per scenario.")
    evaluate_suite.add_argument("--suite", default="default", help="a suite name from configs/suites/ or a path")
    evaluate_suite.add_argument("--workers", type=positive_int, default=1, help="scenarios in parallel (default 1)")
    evaluate_suite.add_argument("--backend", choices=["local", "ray"], default="local",
                                help="local processes, or Ray tasks (default: local)")
    evaluate_suite.add_argument("--ray-address", default=None, metavar="ADDR",
                                help="join this Ray cluster (HOST:PORT or ray://HOST:PORT); default: a local Ray")
    evaluate_suite.add_argument("--perception", choices=["learned", "perfect"], default=None,
                                help="perception stage (overrides perception.kind)")
    evaluate_suite.add_argument("--out", default=None, metavar="DIR",
                                help="output folder (default: runs/eval-<time>-<suite>/)")
    evaluate_suite.add_argument("--overwrite", action="store_true", help="let --out name a folder that is not empty")
    evaluate_suite.add_argument("--video", action="store_true", help="write each scenario's video.mp4 too")
    evaluate_suite.add_argument("--no-record", action="store_true", help="no drive.mcap per scenario")
    evaluate_suite.add_argument("--compare", default=None, metavar="RESULTS",
                                help="a previous results.json (or its folder): add the score difference per scenario")
    evaluate_suite.add_argument("--quiet", action="store_true", help="no progress bar")
    add_maps_arg(evaluate_suite)
    add_sim_args(evaluate_suite)
    add_stack_args(evaluate_suite)
    evaluate_suite.set_defaults(handler=evaluate_handlers.evaluate)

    tune = commands.add_parser(
        "tune", help="tune config keys with Optuna against a scenario suite; writes best.yaml",
        description="Search the space's config keys (configs/tuning/) with a seeded TPE sampler, each trial driving "
        "the suite's scenarios in order and reporting the running mean so that hopeless trials are pruned. Writes "
        "best.yaml (an overlay of the tuned keys), trials.csv, plots and report.md in the study folder; the same "
        "command resumes an interrupted study from its SQLite storage.")
    tune.add_argument("--space", required=True, metavar="FILE", help="a space from configs/tuning/ or a path")
    tune.add_argument("--suite", default="default", help="the suite to score trials on (default: default)")
    tune.add_argument("--trials", type=positive_int, required=True, help="finished trials the study ends with")
    tune.add_argument("--study", default=None, metavar="NAME", help="study name (default: <space>-<suite>)")
    tune.add_argument("--storage", default=None, metavar="URL",
                      help="an RDB URL that several tuners share (postgresql://..., sqlite:///...); "
                           "default: sqlite in the study folder")
    tune.add_argument("--workers", type=positive_int, default=1, help="trials in parallel (default 1)")
    tune.add_argument("--backend", choices=["local", "ray"], default="local",
                      help="scenario drives on local processes or as Ray tasks (default: local)")
    tune.add_argument("--ray-address", default=None, metavar="ADDR",
                      help="join this Ray cluster (HOST:PORT or ray://HOST:PORT); default: a local Ray")
    tune.add_argument("--objective", choices=["score", "multi"], default="score",
                      help="score: mean driving score less a comfort penalty; multi: score and comfort, a Pareto front")
    tune.add_argument("--comfort-penalty", type=float, default=10.0, metavar="POINTS",
                      help="points a drive that breaks every nuPlan comfort bound loses (default 10)")
    tune.add_argument("--perception", choices=["learned", "perfect"], default=None,
                      help="perception stage (overrides perception.kind)")
    tune.add_argument("--holdout", default=None, metavar="SUITE",
                      help="after the search, score the base config and best.yaml on this suite too")
    tune.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    tune.add_argument("--pruner", choices=["median", "none"], default="median", help="default: median")
    tune.add_argument("--prune-startup", type=int, default=5, metavar="N",
                      help="complete trials before pruning starts (default 5)")
    tune.add_argument("--prune-warmup", type=int, default=None, metavar="K",
                      help="scenarios a trial drives before it can be pruned (default: a quarter of the suite)")
    tune.add_argument("--out", default=None, metavar="DIR", help="study folder (default: runs/tune-<study>/)")
    tune.add_argument("--keep-runs", action="store_true", help="keep every scenario's run folder")
    tune.add_argument("--json", action="store_true", help="print the summary as JSON")
    tune.add_argument("--quiet", action="store_true", help="no progress bar")
    add_maps_arg(tune)
    add_sim_args(tune)
    add_stack_args(tune)
    tune.set_defaults(handler=tune_handlers.tune)

    recording = commands.add_parser("recording", help="inspect or export a drive recording (drive.mcap)")
    recording_commands = recording.add_subparsers(dest="recording_command", metavar="SUBCOMMAND", required=True)
    info = recording_commands.add_parser("info", help="channels, duration, frames, config hash and versions")
    info.add_argument("file", type=Path, help="a drive.mcap")
    info.set_defaults(handler=replay_handlers.recording_info)
    export_frames = recording_commands.add_parser(
        "export", help="frames as PNG (camera, segmentation) and JSON (ego, detections, plan, control)")
    export_frames.add_argument("file", type=Path, help="a drive.mcap")
    export_frames.add_argument("--frames", required=True, metavar="A:B", help="frame numbers A to B, inclusive")
    export_frames.add_argument("--out", required=True, type=Path, help="output folder")
    export_frames.set_defaults(handler=replay_handlers.recording_export)

    sim = commands.add_parser("sim", help="the embedded simulator", description="Work with the embedded simulator.")
    sim_commands = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", required=True)
    render = sim_commands.add_parser(
        "render",
        help="look at a scenario: drive it with the reference follower and write a video",
        description="Drive a scenario's route with the ground-truth reference follower and write an "
        "mp4: RGB | semantic | depth, with bird's-eye views. `stagepilot drive` drives with the stack.",
    )
    render.add_argument("--scenario", default="town_loop",
                        help="a name from configs/scenarios/ or a path to a YAML file (default: town_loop)")
    render.add_argument("--out", required=True, type=Path, help="output folder for render.mp4 and still.png")
    render.add_argument("--duration", type=finite_positive_float, default=None, metavar="S",
                        help="stop after S simulated seconds (default: the scenario's duration)")
    add_maps_arg(render)
    add_stack_args(render)
    render.set_defaults(handler=handlers.render)

    listing = sim_commands.add_parser("list", help="list the shipped scenarios")
    add_maps_arg(listing)
    listing.set_defaults(handler=handlers.list_scenarios)

    bench = commands.add_parser("bench", help="benchmarks that print figures",
                                description="Benchmarks. Each prints latency or throughput figures.")
    bench_commands = bench.add_subparsers(dest="bench_command", metavar="STAGE", required=True)
    bench_sim = bench_commands.add_parser(
        "sim", help="simulator steps/s and camera frames/s on one core",
        description="Measure the embedded simulator on one CPU core: steps_per_s (physics and "
        "traffic only) and frames_per_s (one 640x360 camera: RGB + semantic + depth).",
    )
    bench_sim.add_argument("--json", action="store_true", help="print one JSON object")
    bench_sim.add_argument("--scenario", default="town_traffic", help="scenario to measure (default: town_traffic)")
    bench_sim.add_argument("--steps", type=positive_int, default=400, help="simulation steps to time")
    bench_sim.add_argument("--frames", type=positive_int, default=300, help="camera frames to time")
    add_maps_arg(bench_sim)
    add_stack_args(bench_sim)
    bench_sim.set_defaults(handler=handlers.bench_sim)

    bench_plan = bench_commands.add_parser(
        "plan", help="lattice planner latency per call",
        description="Time the Frenet lattice planner on generated situations (10 obstacles): "
        "p50/p99/max per call and the candidates it evaluates.",
    )
    bench_plan.add_argument("--json", action="store_true", help="print one JSON object")
    bench_plan.add_argument("--calls", type=positive_int, default=300, help="planner calls to time")
    add_stack_args(bench_plan)
    bench_plan.set_defaults(handler=handlers.bench_plan)

    bench_control = bench_commands.add_parser(
        "control", help="controller latency per call",
        description="Time the configured controller (controller.kind, default mpc) on generated "
        "situations: p50/p99/max per call.",
    )
    bench_control.add_argument("--json", action="store_true", help="print one JSON object")
    bench_control.add_argument("--calls", type=positive_int, default=2000, help="controller calls to time")
    add_stack_args(bench_control)
    bench_control.set_defaults(handler=handlers.bench_control)

    bench_perception = bench_commands.add_parser(
        "perception", help="perception network latency against the torchvision pair",
        description="Time what the learned stage runs per frame (scale the 640x360 frame to the network's "
        "input, forward, decode) against ssdlite320 + lraspp (MobileNetV3) on the same frame, same device, "
        "dtype (bf16 autocast where the device runs it natively), channels_last and threads: p50/p99 and the p50 speedup.",
    )
    bench_perception.add_argument("--json", action="store_true", help="print one JSON object")
    bench_perception.add_argument("--iters", type=positive_int, default=30, help="timed frames per model")
    bench_perception.add_argument("--warmup", type=positive_int, default=5, help="untimed frames first")
    bench_perception.add_argument("--threads", type=positive_int, default=None,
                                  help="torch threads (default: all CPU cores)")
    bench_perception.add_argument("--architecture", default=None,
                                  help="our network (random weights unless it is the shipped one; default: the "
                                       "shipped one), e.g. mtl_mbv3large_fpn64_s48_seg4")
    bench_perception.add_argument("--input-size", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                                  help="our network's input size (default: the shipped checkpoint's)")
    add_stack_args(bench_perception)
    bench_perception.set_defaults(handler=handlers.bench_perception)

    add_model_commands(commands)

    remembered = commands.add_parser(
        "paths", help="the network paths and operating points this machine timed and remembers",
        description="List what learned perception timed on this machine and remembers in the cache folder "
        "(paths.json): the path that runs the network (backend, dtype) and the operating point, with every "
        "candidate's median time, the date and the CPU. A drive uses a remembered choice instead of timing "
        "again, and a measured drive that stepped down starts at the lower point next time. --forget has the "
        "next drive time them again, e.g. after the machine was busy when they were timed.")
    remembered.add_argument("--forget", action="store_true", help="forget every remembered choice")
    remembered.add_argument("--json", action="store_true", help="print one JSON object")
    remembered.set_defaults(handler=handlers.paths_list)

    config = commands.add_parser("config", help="inspect the stack config")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = config_commands.add_parser("show", help="print the resolved config and its hash")
    add_stack_args(show)
    show.set_defaults(handler=handlers.config_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "replay" and not any(e.startswith("-") for e in extra):
        args.items += extra  # `replay REC --quiet key=value`: recordings and overrides around the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if hasattr(args, "sim_source"):
        args.overrides = [*sim_overrides(args), *args.overrides]  # later overrides win
    try:
        return args.handler(args)
    except (ConfigError, MapError, RecordingError) as exc:
        print(f"stagepilot: error: {exc}", file=sys.stderr)
        return 2
    except SimulatorError as exc:  # no CARLA server, a lost connection, an actor that would not spawn
        print(f"stagepilot: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `stagepilot sim list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as exc:  # an unwritable output folder, a full disk
        print(f"stagepilot: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C outside a drive (a drive ends itself and returns)
        print("stagepilot: interrupted", file=sys.stderr)
        return exit_status(getattr(exc, "signum", signal.SIGINT))


if __name__ == "__main__":
    sys.exit(main())

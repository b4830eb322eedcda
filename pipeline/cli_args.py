"""Arguments that several `stagepilot` commands share: the stack config and its overrides, the
map search path, the world source (embedded or a CARLA server), and checked number types."""

from __future__ import annotations

import argparse
import math


def add_stack_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="stack YAML laid over configs/stack.yaml (repeatable; later files win)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="override a config value, e.g. sim.dt_s=0.02 or scenario.seed=3")


def add_maps_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--maps", action="append", default=[], metavar="DIR",
                        help="a folder of OpenDRIVE maps, searched first for a scenario's `map: NAME` (NAME.xodr; "
                             "repeatable); then $STAGEPILOT_MAPS (folders separated like PATH), configs/maps and "
                             "$CARLA_ROOT/CarlaUE4/Content/Carla/Maps/OpenDrive")


def add_sim_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("world source (docs/carla.md)")
    group.add_argument("--sim", dest="sim_source", default=None, choices=["embedded", "carla"],
                       help="the embedded simulator (no server) or a running CARLA server; overrides sim.source "
                            "(default: embedded)")
    group.add_argument("--host", default=None, help="CARLA server host (carla.host, default: localhost)")
    group.add_argument("--port", type=int, default=None, help="CARLA server RPC port (carla.port, default: 2000)")
    group.add_argument("--tm-port", type=int, default=None, help="Traffic Manager port (carla.tm_port, default: 8000)")
    group.add_argument("--timeout", type=float, default=None, metavar="S",
                       help="seconds to wait for the server when connecting, loading a map and each tick "
                            "(carla.timeout_s, default: 10)")
    group.add_argument("--carla-recorder", action="store_true",
                       help="also run CARLA's own recorder (carla.recorder); the recording's metadata names its file")


def sim_overrides(args: argparse.Namespace) -> list[str]:
    """The world-source options as config overrides, so that every worker of a command sees them."""
    pairs = [("sim.source", args.sim_source), ("carla.host", args.host), ("carla.port", args.port),
             ("carla.tm_port", args.tm_port), ("carla.timeout_s", args.timeout),
             ("carla.recorder", "true" if args.carla_recorder else None)]
    return [f"{key}={value}" for key, value in pairs if value is not None]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def finite_positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0.0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text[:80]!r}")
    return value

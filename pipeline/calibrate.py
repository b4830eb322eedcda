"""Measure a vehicle's settled longitudinal response and write an actuator table.

Drives the embedded simulator's vehicle model (sim/vehicle.py) straight on a level road:
for each speed of a grid and each throttle (or brake) value, the command is held until its
first-order lag has settled, starting from the speed that makes the car arrive at the grid
speed just then, and the acceleration is read over one short step. The inverse of this
table is control/actuator.py's ActuatorMap. Rerun after changing the vehicle model or the
`vehicle:` config:

    .venv/bin/python -m stagepilot.pipeline.calibrate --out configs/actuators/embedded_sedan.yaml
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import yaml

from stagepilot.core.config import load_stack
from stagepilot.core.messages import Control
from stagepilot.sim.vehicle import DynamicBicycle, VehicleParams

SPEEDS_MPS = (0.0, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5, 20.0, 22.5, 25.0, 27.5, 30.0, 35.0, 40.0)
THROTTLE = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BRAKE = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# [m/s] the row for standstill is measured rolling at this speed: parked, brake and rolling
# resistance hold the car (static friction), so there is no acceleration to read
MIN_MEASURE_SPEED_MPS = 0.5
SETTLE_TIME_CONSTANTS = 7.0  # the lag is within e^-7 ~ 0.1 % of the command
STEP_S = 0.01  # [s] simulation step while settling
MEASURE_STEP_S = 0.005  # [s] the acceleration is read over one step this long


def settled_accel(params: VehicleParams, command: Control, speed_mps: float) -> tuple[float, float]:
    """(speed [m/s], acceleration [m/s^2]) with `command` settled, as close to `speed_mps` as
    the car can be: a large throttle from rest passes a low speed before its lag settles."""
    target = max(speed_mps, MIN_MEASURE_SPEED_MPS)
    settle_s = SETTLE_TIME_CONSTANTS * max(params.throttle_time_constant_s, params.brake_time_constant_s)
    steps = math.ceil(settle_s / STEP_S)
    start = target
    for _ in range(20):  # fixed point on the start speed; it converges in 2-3 rounds
        car = DynamicBicycle(params, 0.0, 0.0, 0.0, speed=start)
        for _ in range(steps):
            car.step(command, STEP_S)
        if car.state.speed <= 0.0:  # braked to a stop on the way: start much faster
            start = 2.0 * start + 5.0
            continue
        miss = target - car.state.speed
        if abs(miss) < 1e-4 or (start == 0.0 and miss < 0.0):
            break
        start = max(start + miss, 0.0)
    speed = car.state.speed
    car.step(command, MEASURE_STEP_S)
    return speed, car.state.accel


def response_table(params: VehicleParams, name: str) -> dict:
    """The actuator table (ActuatorTable fields) of `params`."""
    throttle_rows, brake_rows = [], []
    for speed in SPEEDS_MPS:
        throttle_rows.append([round(settled_accel(params, Control(throttle=u), speed)[1], 4) for u in THROTTLE])
        brake_rows.append([round(settled_accel(params, Control(brake=u), speed)[1], 4) for u in BRAKE])
    return {
        "name": name,
        "speeds_mps": list(SPEEDS_MPS),
        "throttle": list(THROTTLE),
        "accel_at_throttle_mps2": throttle_rows,
        "brake": list(BRAKE),
        "accel_at_brake_mps2": brake_rows,
    }


HEADER = """\
# Settled longitudinal response of the embedded simulator's sedan (sim/vehicle.py with the
# `vehicle:` section of configs/stack.yaml): acceleration [m/s^2] on a level road once the
# throttle / brake lag has settled, per speed (rows) and pedal value (columns). Read by
# control/actuator.py (ActuatorMap), which inverts it. Generated; do not edit by hand:
#   .venv/bin/python -m stagepilot.pipeline.calibrate --out configs/actuators/{name}.yaml
# The 0 m/s row is measured rolling at {floor} m/s; a large throttle passes the low speeds
# before its lag settles and is measured at the lowest speed it settles at (below the power
# limit, only drag depends on speed there, < 0.02 m/s^2).
"""


def write_table(table: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(table, sort_keys=False, default_flow_style=None, width=120)
    out.write_text(HEADER.format(name=table["name"], floor=MIN_MEASURE_SPEED_MPS) + body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stagepilot.pipeline.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="YAML file to write")
    parser.add_argument("--name", default=None, help="table name (default: the file's stem)")
    parser.add_argument("--config", action="append", default=[], help="stack YAML overlay (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key.path=value, e.g. vehicle.mass_kg=1500")
    args = parser.parse_args(argv)
    config = load_stack(args.config, args.overrides)
    params = VehicleParams(**config.vehicle.model_dump())
    write_table(response_table(params, args.name or args.out.stem), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

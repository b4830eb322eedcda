"""build_controller: the configured controller kind, by name (`controller.kind`)."""

from __future__ import annotations

from stagepilot.control.actuator import ActuatorMap
from stagepilot.control.geometry import VehicleGeometry
from stagepilot.control.lateral import PurePursuit, Stanley
from stagepilot.control.longitudinal import LongitudinalPid
from stagepilot.control.mpc import MpcTracker
from stagepilot.control.tracker import PidTracker
from stagepilot.core.config_control import ControllerConfig
from stagepilot.core.stages import Controller

KINDS = ("pid_pure_pursuit", "pid_stanley", "mpc")


def build_controller(config: ControllerConfig, vehicle: VehicleGeometry, dt_s: float,
                     actuator: ActuatorMap | None = None) -> Controller:
    """The controller named by `config.kind`, stepping every `dt_s` [s].

    `actuator` overrides the table named by `config.actuator_map` (tests, other vehicles).
    """
    if not dt_s > 0.0:
        raise ValueError(f"dt_s must be > 0, got {dt_s!r}")
    actuator = actuator or ActuatorMap.load(config.actuator_map)
    longitudinal = LongitudinalPid(config.longitudinal, config.standstill, actuator, dt_s)
    if config.kind == "pid_stanley":
        return PidTracker("pid_stanley", Stanley(config.stanley, vehicle), longitudinal, vehicle)
    pure_pursuit = PidTracker("pid_pure_pursuit", PurePursuit(config.pure_pursuit, vehicle), longitudinal,
                              vehicle)
    if config.kind == "pid_pure_pursuit":
        return pure_pursuit
    if config.kind == "mpc":
        return MpcTracker(config.mpc, config.standstill, vehicle, actuator, dt_s, fallback=pure_pursuit)
    raise ValueError(f"unknown controller kind {config.kind!r}; known: {', '.join(KINDS)}")

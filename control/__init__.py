"""PID and MPC trackers, vehicle models and actuator mapping.

`build_controller(config, vehicle, dt_s)` returns the controller named by `controller.kind`:
an object with `name`, `reset()` and `step(ego, plan, t) -> Control`.
"""

from stagepilot.control.actuator import ActuatorMap
from stagepilot.control.geometry import VehicleGeometry
from stagepilot.control.registry import KINDS, build_controller
from stagepilot.core.stages import Controller

__all__ = ["KINDS", "ActuatorMap", "Controller", "VehicleGeometry", "build_controller"]

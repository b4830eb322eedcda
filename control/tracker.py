"""The PID trackers: a longitudinal PID + a geometric lateral law, behind `core.stages.Controller`.

t is the current sim time [s]; the plan's times are relative to plan.t.
"""

from __future__ import annotations

import math
from typing import Protocol

from stagepilot.control.geometry import VehicleGeometry
from stagepilot.control.longitudinal import LongitudinalPid
from stagepilot.control.reference import PlanReference
from stagepilot.core.messages import Control, EgoState, Plan


class LateralLaw(Protocol):
    name: str

    def steer_angle(self, ego: EgoState, ref: PlanReference) -> float: ...


def usable(ego: EgoState, plan: Plan) -> bool:
    """An ego state with finite numbers and a plan with at least one sample."""
    numbers = (ego.x, ego.y, ego.yaw, ego.speed, ego.steer_angle, ego.accel)
    return all(math.isfinite(v) for v in numbers) and len(plan.times) > 0


class PidTracker:
    """Longitudinal PID + a lateral law (pure pursuit or Stanley)."""

    def __init__(self, name: str, lateral: LateralLaw, longitudinal: LongitudinalPid,
                 vehicle: VehicleGeometry, hold_brake: float):
        self.name = name
        self.lateral = lateral
        self.longitudinal = longitudinal
        self.vehicle = vehicle
        self.hold = Control(brake=hold_brake)  # a state or plan it cannot track: stand still
        self.last_steer_angle_rad = 0.0  # [rad] the front-wheel angle last asked for

    def reset(self) -> None:
        self.longitudinal.reset()
        self.last_steer_angle_rad = 0.0

    def step(self, ego: EgoState, plan: Plan, t: float) -> Control:
        if not usable(ego, plan):
            return self.hold
        ref = PlanReference(plan)
        # a plan standing at one point has no path to follow: keep the wheels as they are
        angle = self.lateral.steer_angle(ego, ref) if ref.has_path else ego.steer_angle
        self.last_steer_angle_rad = angle
        throttle, brake = self.longitudinal.step(ego, ref, t - plan.t, emergency=plan.decision == "emergency_stop")
        return Control(steer=self.vehicle.steer_command(angle), throttle=throttle, brake=brake)

"""The PID trackers: a longitudinal PID + a geometric lateral law, behind `core.stages.Controller`.

t is the current sim time [s]; the plan's times are relative to plan.t.
"""

from __future__ import annotations

from typing import Protocol

from stagepilot.control.geometry import VehicleGeometry
from stagepilot.control.longitudinal import LongitudinalPid
from stagepilot.control.reference import PlanReference
from stagepilot.core.finite import ego_is_finite
from stagepilot.core.messages import Control, EgoState, Plan


class LateralLaw(Protocol):
    name: str

    def steer_angle(self, ego: EgoState, ref: PlanReference) -> float: ...


def check_inputs(ego: EgoState, plan: Plan) -> None:
    """A controller tracks a finite ego state along a plan with samples; anything else is a
    broken contract (the runtime fails safe before it calls a controller with such input)."""
    if not ego_is_finite(ego):
        raise ValueError(f"controller: the ego state is not finite: {ego}")
    if len(plan.times) == 0:
        raise ValueError(f"controller: the plan of frame {plan.frame} has no samples")


class PidTracker:
    """Longitudinal PID + a lateral law (pure pursuit or Stanley)."""

    def __init__(self, name: str, lateral: LateralLaw, longitudinal: LongitudinalPid,
                 vehicle: VehicleGeometry):
        self.name = name
        self.lateral = lateral
        self.longitudinal = longitudinal
        self.vehicle = vehicle
        self.last_steer_angle_rad = 0.0  # [rad] the front-wheel angle last asked for

    def reset(self) -> None:
        self.longitudinal.reset()
        self.last_steer_angle_rad = 0.0

    def step(self, ego: EgoState, plan: Plan, t: float) -> Control:
        check_inputs(ego, plan)
        ref = PlanReference(plan)
        # a plan standing at one point has no path to follow: keep the wheels as they are
        angle = self.lateral.steer_angle(ego, ref) if ref.has_path else ego.steer_angle
        self.last_steer_angle_rad = angle
        throttle, brake = self.longitudinal.step(ego, ref, t - plan.t, emergency=plan.decision == "emergency_stop")
        return Control(steer=self.vehicle.steer_command(angle), throttle=throttle, brake=brake)

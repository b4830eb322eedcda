"""The planning stage: behaviour layer + Frenet lattice -> Plan.

One method, `step(ego, route, perception) -> Plan`. The reference path is rebuilt only
when the route changes. An emergency stop, or perception that flags its input unusable,
bypasses the lattice for a bounded braking trajectory along the current path.
"""

from __future__ import annotations

import numpy as np

from stagepilot.pipeline.config import PlannerConfig
from stagepilot.pipeline.messages import EgoState, Perception, Plan, Route
from stagepilot.pipeline.roadmap import RoadMap
from stagepilot.planning.behaviour import BehaviourLayer, VehicleShape
from stagepilot.planning.lattice import FrenetLatticePlanner
from stagepilot.planning.route import ReferencePath, reference_from_route

BRAKE_HORIZON_S = 5.0


class PlannerStage:
    name = "planner"

    def __init__(self, config: PlannerConfig, vehicle: VehicleShape, road_map: RoadMap | None = None):
        self.config = config
        self.vehicle = vehicle
        self.behaviour = BehaviourLayer(config.behaviour, vehicle, road_map)
        self.lattice = FrenetLatticePlanner(
            config.lattice, vehicle.length_m, vehicle.width_m,
            rear_axle_to_center_m=vehicle.length_m / 2 - vehicle.rear_overhang_m,
        )
        self._route: Route | None = None
        self.reference: ReferencePath | None = None
        self._ego_s: float | None = None
        self.last_candidates = 0

    def step(self, ego: EgoState, route: Route, perception: Perception) -> Plan:
        if self._route is not route:
            self._route = route
            self.reference = reference_from_route(route)
            self._ego_s = None
        ref = self.reference
        ego_s, _ = ref.path.project(ego.x, ego.y, s_hint=self._ego_s)
        self._ego_s = ego_s
        if not perception.usable:
            return self._braking_plan(ego, ref, ego_s, perception, "emergency_stop",
                                      f"failsafe: perception unusable ({perception.reason})")
        decision = self.behaviour.decide(ego, ref, ego_s, perception)
        if decision.decision == "emergency_stop":
            return self._braking_plan(ego, ref, ego_s, perception, decision.decision, decision.reason)
        result = self.lattice.plan(ego, ref.path, ego_s, decision.target, list(decision.obstacles))
        self.last_candidates = result.candidates
        reason = decision.reason if not result.fallback else f"{decision.reason}; fallback stop: {result.reason}"
        return Plan(t=perception.t, frame=perception.frame, times=result.times, x=result.x, y=result.y,
                    yaw=result.yaw, v=result.v, a=result.a, curvature=result.curvature,
                    decision=decision.decision if not result.fallback else "emergency_stop", reason=reason)

    def _braking_plan(self, ego, ref: ReferencePath, ego_s, perception, decision, reason) -> Plan:
        """Brake at the behaviour layer's emergency deceleration along the reference."""
        decel = self.config.behaviour.max_decel
        dt = self.config.lattice.dt_s
        times = np.arange(0.0, BRAKE_HORIZON_S + 1e-9, dt)
        v0 = max(ego.speed, 0.0)
        v = np.maximum(v0 - decel * times, 0.0)
        travelled = np.where(v > 0, v0 * times - 0.5 * decel * times**2, v0**2 / (2 * decel))
        x, y, yaw = ref.path.interpolate(ego_s + travelled)
        a = np.where(v > 0, -decel, 0.0)
        return Plan(t=perception.t, frame=perception.frame, times=times, x=np.asarray(x), y=np.asarray(y),
                    yaw=np.asarray(yaw), v=v, a=a, curvature=ref.path.curvature_at(ego_s + travelled),
                    decision=decision, reason=reason)

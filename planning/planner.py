"""The planning stage: behaviour layer + Frenet lattice -> Plan.

One method, `step(ego, route, perception) -> Plan`. The reference path is rebuilt only
when the route changes. An emergency stop bypasses the lattice for a bounded braking
trajectory along the current path. Perception that flags its frame unusable never reaches
the planner: the runtime's fail-safe takes that frame. The lattice predicts other vehicles
along the stage's road map (prediction.py); without one, at constant velocity.
"""

from __future__ import annotations

import math

import numpy as np

from stagepilot.core.config import PlannerConfig
from stagepilot.core.messages import EgoState, Perception, Plan, Route
from stagepilot.core.roadmap import RoadMap
from stagepilot.planning.behaviour import BehaviourLayer, VehicleShape
from stagepilot.planning.lattice import FrenetLatticePlanner
from stagepilot.planning.route import ReferencePath, reference_from_route

BRAKE_HORIZON_S = 5.0
HOLD_SPEED_MPS = 0.2  # standing this slowly at a stop point: hold, do not re-plan a start
HOLD_DISTANCE_M = 0.5


class LatticePlannerStage:
    name = "planner"

    def __init__(self, config: PlannerConfig, vehicle: VehicleShape, road_map: RoadMap | None = None,
                 wheelbase_m: float = 2.6):
        self.config = config
        self.vehicle = vehicle
        self.behaviour = BehaviourLayer(config.behaviour, vehicle, road_map)
        self.lattice = FrenetLatticePlanner(
            config.lattice, vehicle.length_m, vehicle.width_m,
            rear_axle_to_center_m=vehicle.length_m / 2 - vehicle.rear_overhang_m, road_map=road_map,
        )
        self._route: Route | None = None
        self.reference: ReferencePath | None = None
        self._ego_s: float | None = None
        self._last_plan: Plan | None = None
        self.last_candidates = 0
        self.wheelbase_m = wheelbase_m

    def step(self, ego: EgoState, route: Route, perception: Perception, t: float | None = None) -> Plan:
        """The plan at time t (default: the perception's time; a held perception is older)."""
        t = perception.t if t is None else t
        if self._route is not route:
            self._route = route
            self.reference = reference_from_route(route)
            self._ego_s = None
        ref = self.reference
        ego_s, _ = ref.path.project(ego.x, ego.y, s_hint=self._ego_s)
        self._ego_s = ego_s
        if not perception.usable:
            raise ValueError(f"planner: perception of frame {perception.frame} is unusable ({perception.reason}); "
                             "the runtime's fail-safe handles such frames")
        decision = self.behaviour.decide(ego, ref, ego_s, perception)
        if decision.decision == "emergency_stop":
            return self._braking_plan(ego, ref, ego_s, t, perception.frame, decision.decision, decision.reason)
        front_s = ego_s + self.vehicle.front_m
        target = decision.target
        if ego.speed < HOLD_SPEED_MPS and target.stop_s is not None and target.stop_s - front_s < HOLD_DISTANCE_M:
            return self._braking_plan(ego, ref, ego_s, t, perception.frame, decision.decision, decision.reason)
        start = self._stitched(ego, t)
        result = self.lattice.plan(start, ref.path, ego_s, target, list(decision.obstacles))
        self.last_candidates = result.candidates
        reason = decision.reason if not result.fallback else f"{decision.reason}; fallback stop: {result.reason}"
        self._last_plan = plan = Plan(t=t, frame=perception.frame, times=result.times, x=result.x, y=result.y,
                    yaw=result.yaw, v=result.v, a=result.a, curvature=result.curvature,
                    decision=decision.decision if not result.fallback else "emergency_stop", reason=reason)
        return plan

    def _stitched(self, ego: EgoState, t: float) -> EgoState:
        """Where the last plan says the ego is now, if the ego is close to it; else the ego.

        Starting each plan from the previous one (Apollo's trajectory stitching) keeps plans
        consistent: a small tracking error is the controller's to correct, not a new offset
        for the planner to keep."""
        plan = self._last_plan
        if plan is None or not plan.times[0] <= t - plan.t <= plan.times[-1]:
            return ego
        dt = t - plan.t
        at = {k: float(np.interp(dt, plan.times, getattr(plan, k))) for k in ("x", "y", "v", "a", "curvature")}
        yaw = float(np.interp(dt, plan.times, np.unwrap(plan.yaw)))
        cfg = self.config
        off = math.hypot(at["x"] - ego.x, at["y"] - ego.y)
        if off > cfg.stitch_tolerance_m or abs(math.remainder(yaw - ego.yaw, math.tau)) > cfg.stitch_heading_tolerance_rad:
            return ego
        return EgoState(x=at["x"], y=at["y"], yaw=yaw, speed=max(at["v"], 0.0), yaw_rate=at["v"] * at["curvature"],
                        accel=at["a"], steer_angle=math.atan(self.wheelbase_m * at["curvature"]))

    def _braking_plan(self, ego, ref: ReferencePath, ego_s, t, frame, decision, reason) -> Plan:
        """Brake at the behaviour layer's emergency deceleration, keeping the ego's present
        offset from the reference (mid-pass, it does not steer back towards what it passes)."""
        self._last_plan = None
        decel = self.config.behaviour.max_decel
        dt = self.config.lattice.dt_s
        times = np.arange(0.0, BRAKE_HORIZON_S + 1e-9, dt)
        v0 = max(ego.speed, 0.0)
        v = np.maximum(v0 - decel * times, 0.0)
        travelled = np.where(v > 0, v0 * times - 0.5 * decel * times**2, v0**2 / (2 * decel))
        _, offset = ref.path.project(ego.x, ego.y, s_hint=ego_s)
        x, y, yaw = ref.path.interpolate(ego_s + travelled)
        x, y = x - np.sin(yaw) * offset, y + np.cos(yaw) * offset
        a = np.where(v > 0, -decel, 0.0)
        return Plan(t=t, frame=frame, times=times, x=np.asarray(x), y=np.asarray(y),
                    yaw=np.asarray(yaw), v=v, a=a, curvature=ref.path.curvature_at(ego_s + travelled),
                    decision=decision, reason=reason)

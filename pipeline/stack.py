"""The driving stack: perception -> planner -> controller, and a closed-loop drive log.

Each stage has one method from its input message to its output message; the runtime
(pipeline/runtime.py) times them and applies the time model, budgets and fail-safes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stagepilot.control import VehicleGeometry, build_controller
from stagepilot.perception.perfect import PerfectPerception
from stagepilot.core.config import StackConfig
from stagepilot.core.messages import Control, Event, Observation, Perception, Plan
from stagepilot.pipeline.metrics import comfort, tracking_error
from stagepilot.core.paths import Polyline
from stagepilot.core.roadmap import RoadMap
from stagepilot.planning.behaviour import VehicleShape
from stagepilot.planning.planner import PlannerStage

HOLD = Control(brake=1.0)  # what the actuators do before the first command arrives


def vehicle_geometry(config: StackConfig) -> VehicleGeometry:
    vehicle = config.vehicle
    return VehicleGeometry(wheelbase_m=vehicle.cg_to_front_axle_m + vehicle.cg_to_rear_axle_m,
                           max_steer_angle_rad=vehicle.max_steer_angle_rad,
                           max_steer_rate_rad_s=vehicle.max_steer_rate_rad_s)


def build_perception(config: StackConfig, road_map: RoadMap | None = None):
    """The perception stage ``config.perception.kind`` names: the trained network (``learned``)
    or the ground-truth stand-in (``perfect``)."""
    if config.perception.kind == "perfect":
        return PerfectPerception(config.perception.perfect, config.sim.dt_s)
    from stagepilot.perception.learned import LearnedPerception  # torch loads only when it is used

    vehicle = config.vehicle
    reach = vehicle.length_m - vehicle.rear_overhang_m + config.planner.behaviour.stop_line_margin_m
    return LearnedPerception(config.perception.learned, road_map, stop_reach_m=reach)


class DrivingStack:
    """The configured perception stage, behaviour + lattice planner, and the configured controller."""

    def __init__(self, config: StackConfig, road_map: RoadMap | None = None):
        self.config = config
        vehicle = config.vehicle
        self.perception = build_perception(config, road_map)
        self.planner = PlannerStage(
            config.planner, VehicleShape(vehicle.length_m, vehicle.width_m, vehicle.rear_overhang_m), road_map,
            wheelbase_m=vehicle.cg_to_front_axle_m + vehicle.cg_to_rear_axle_m)
        self.controller = build_controller(config.controller, vehicle_geometry(config), config.sim.dt_s)

    def step(self, obs: Observation) -> tuple[Control, Perception, Plan]:
        perception = self.perception.step(obs)
        plan = self.planner.step(obs.ego, obs.route, perception, obs.t)
        control = self.controller.step(obs.ego, plan, obs.t)
        return control, perception, plan


@dataclass
class DriveLog:
    """Per-tick record of a closed-loop drive (arrays built on demand)."""

    dt: float
    t: list[float] = field(default_factory=list)
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    yaw: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    yaw_rate: list[float] = field(default_factory=list)
    route_progress: list[float] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    controls: list[Control] = field(default_factory=list)
    route: Polyline | None = None
    runtime: object = None  # the StagedRuntime that drove (telemetry, records)

    def record(self, obs: Observation, plan: Plan | None, control: Control) -> None:
        ego = obs.ego
        self.t.append(obs.t)
        self.x.append(ego.x)
        self.y.append(ego.y)
        self.yaw.append(ego.yaw)
        self.speed.append(ego.speed)
        self.yaw_rate.append(ego.yaw_rate)
        self.route_progress.append(obs.route_progress)
        self.decisions.append(plan.decision if plan else "")
        self.reasons.append(plan.reason if plan else "")
        self.controls.append(control)
        self.events.extend(obs.events)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def lateral_errors(self) -> np.ndarray:
        """Rear-axle distance from the route centre line [m], signed, positive left; samples
        that project beyond either end of the route are left out."""
        errors, hint = [], None
        for x, y in zip(self.x, self.y):
            s, d = self.route.project(x, y, s_hint=hint)
            hint = s
            if 0.0 < s < self.route.length:
                errors.append(d)
        return np.array(errors)

    def comfort(self) -> dict[str, float]:
        return comfort(np.array(self.speed), np.array(self.yaw_rate), self.dt)

    def tracking(self) -> dict[str, float]:
        return tracking_error(self.lateral_errors())


def drive(sim, stack: DrivingStack, scenario, max_time_s: float | None = None) -> DriveLog:
    """Run `scenario` closed loop through the staged runtime (the config's time model and
    policies) until it ends, or `max_time_s`; return the drive log."""
    from stagepilot.pipeline.runtime import StagedRuntime

    obs = sim.reset(scenario)
    runtime = StagedRuntime(stack.config, sim.road_map, stack=stack)
    log = DriveLog(dt=sim.dt, route=Polyline(obs.route.points))
    runtime.run(sim, obs, on_frame=lambda o, r: log.record(o, r.plan, r.control), max_time_s=max_time_s)
    log.runtime = runtime
    return log


def first_time(log: DriveLog, kind: str) -> float:
    for event in log.events:
        if event.kind == kind:
            return event.t
    return math.inf

"""`stagepilot bench control`: wall time of the configured controller's `step`.

Situations are generated, seeded: short episodes on random curved roads (curvature up to
1/40 m, changing along the road), at random speeds with random initial lateral, heading and
speed errors. Within an episode the car moves by a kinematic bicycle under the controller's
own commands and the plan is re-generated from the car's position every tick, as a planner
would, so the solver's warm start sees realistic tick-to-tick changes. Only `step` is timed.
"""

from __future__ import annotations

import math
import time

import numpy as np

from stagepilot.control.actuator import ActuatorMap
from stagepilot.control.geometry import VehicleGeometry
from stagepilot.control.registry import build_controller
from stagepilot.core.messages import Control, EgoState, Plan
from stagepilot.core.paths import Polyline
from stagepilot.core.config_control import ControllerConfig

EPISODE_TICKS = 50
PLAN_HORIZON_S = 5.0  # [s]
PLAN_STEP_S = 0.1  # [s]
ROAD_STEP_M = 0.5  # [m]
SEED = 0


class _Road:
    """A random road: curvature a sum of a constant and a slow sine, integrated to a path."""

    def __init__(self, rng: np.random.Generator, length_m: float):
        s = np.arange(0.0, length_m, ROAD_STEP_M)
        wavelength = rng.uniform(60.0, 200.0)
        self.curvature_samples = (rng.uniform(-1.0, 1.0) / 80.0
                                  + rng.uniform(-1.0, 1.0) / 80.0 * np.sin(2 * np.pi * s / wavelength))
        yaw = np.concatenate([[0.0], np.cumsum(self.curvature_samples[:-1] * ROAD_STEP_M)])
        x = np.concatenate([[0.0], np.cumsum(np.cos(yaw[:-1]) * ROAD_STEP_M)])
        y = np.concatenate([[0.0], np.cumsum(np.sin(yaw[:-1]) * ROAD_STEP_M)])
        self.s, self.yaw = s, yaw
        self.path = Polyline(np.stack([x, y], axis=1))

    def plan(self, s0: float, speed: float, t: float) -> Plan:
        times = np.arange(0.0, PLAN_HORIZON_S + 1e-9, PLAN_STEP_S)
        s = s0 + speed * times
        x, y, _ = self.path.interpolate(s)
        return Plan(t=t, frame=0, times=times, x=x, y=y, yaw=np.interp(s, self.s, self.yaw),
                    v=np.full_like(times, speed), a=np.zeros_like(times),
                    curvature=np.interp(s, self.s, self.curvature_samples), decision="cruise", reason="bench")


def _move(ego: EgoState, control: Control, vehicle: VehicleGeometry, actuator: ActuatorMap, dt: float) -> EgoState:
    """Kinematic bicycle (rear axle) under `control` for dt; steering rate-limited."""
    target = -control.steer * vehicle.max_steer_angle_rad
    change = vehicle.max_steer_rate_rad_s * dt
    angle = ego.steer_angle + min(max(target - ego.steer_angle, -change), change)
    accel = actuator.accel(control.throttle, control.brake, ego.speed)
    speed = max(ego.speed + accel * dt, 0.0)
    yaw_rate = speed * math.tan(angle) / vehicle.wheelbase_m
    return EgoState(x=ego.x + speed * math.cos(ego.yaw) * dt, y=ego.y + speed * math.sin(ego.yaw) * dt,
                    yaw=ego.yaw + yaw_rate * dt, speed=speed, yaw_rate=yaw_rate, accel=accel,
                    steer_angle=angle)


def bench_control(config: ControllerConfig, vehicle: VehicleGeometry, dt_s: float, calls: int = 2000) -> dict:
    """Time `calls` steps of the controller that `config` (the loaded stack's `controller`
    section) builds for `vehicle`, ticking every dt_s [s]."""
    actuator = ActuatorMap.load(config.actuator_map)
    controller = build_controller(config, vehicle, dt_s, actuator=actuator)
    rng = np.random.default_rng(SEED)
    samples_s: list[float] = []
    fallbacks = 0  # MPC ticks that fell back to pure pursuit + PID
    while len(samples_s) < calls:
        speed = rng.uniform(3.0, 25.0)
        road = _Road(rng, length_m=speed * (EPISODE_TICKS * dt_s + PLAN_HORIZON_S) + 50.0)
        x, y, _ = road.path.interpolate(5.0)
        offset, heading = rng.uniform(-1.0, 1.0), rng.uniform(-0.1, 0.1)
        ego = EgoState(x=float(x) - offset * math.sin(road.yaw[10]), y=float(y) + offset * math.cos(road.yaw[10]),
                       yaw=float(road.yaw[10]) + heading, speed=max(speed + rng.uniform(-2.0, 2.0), 0.0),
                       yaw_rate=0.0, accel=0.0, steer_angle=0.0)
        fallbacks += int(getattr(controller, "fallback_count", 0))
        controller.reset()
        s_hint = 5.0
        for tick in range(min(EPISODE_TICKS, calls - len(samples_s))):
            t = tick * dt_s
            s_hint, _ = road.path.project(ego.x, ego.y, s_hint=s_hint)
            plan = road.plan(s_hint, speed, t)
            start = time.perf_counter()
            control = controller.step(ego, plan, t)
            samples_s.append(time.perf_counter() - start)
            ego = _move(ego, control, vehicle, actuator, dt_s)
    ms = np.array(samples_s) * 1e3
    return {
        "controller": config.kind,
        "horizon": config.mpc.horizon_steps if config.kind == "mpc" else None,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "calls": len(samples_s),
        "fallbacks": fallbacks + int(getattr(controller, "fallback_count", 0)),
    }

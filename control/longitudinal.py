"""Longitudinal control: speed PID with plan feed-forward, and the hold at a planned stop.

Acceleration command = feed-forward of the plan's acceleration + kp(v) e + ki(v) integral(e),
with e the speed error against the plan a `preview_s` ahead; gains scheduled on speed as
openpilot's `common/pid.py` does (breakpoint/value tables through np.interp). The command
goes through the vehicle's ActuatorMap to throttle / brake.
"""

from __future__ import annotations

import numpy as np

from stagepilot.control.actuator import ActuatorMap
from stagepilot.control.reference import PlanReference
from stagepilot.core.messages import EgoState
from stagepilot.core.config_control import LongitudinalPidConfig, StandstillConfig


def planned_stop(ref: PlanReference, tau_s: float, config: StandstillConfig) -> bool:
    """True when the plan stays below `stop_speed_mps` over the stop preview and travels less
    than `stop_distance_m` from now to its end."""
    ahead = np.linspace(tau_s, tau_s + config.stop_preview_s, 5)
    if np.max(ref.speed_at(ahead)) >= config.stop_speed_mps:
        return False
    return float(ref.s_of_sample[-1] - ref.station_at(tau_s)) < config.stop_distance_m


def hold_still(ego: EgoState, ref: PlanReference, tau_s: float, config: StandstillConfig) -> bool:
    """A planned stop and the car (nearly) stopped: hold it with the brake."""
    return abs(ego.speed) < config.standstill_speed_mps and planned_stop(ref, tau_s, config)


def emergency_pedals(actuator: ActuatorMap, accel_mps2: float, plan_accel_mps2: float,
                     speed_mps: float) -> tuple[float, float, float]:
    """(acceleration, throttle, brake) of an emergency stop: at least as hard as the plan's
    deceleration, and never throttle (the map's 0 m/s^2 at a standstill is a little throttle
    against rolling resistance). Every controller ends an emergency stop through here: the stop
    is planned afresh from the car's own speed each tick, which hides it from a tracker's error
    (the speed PID sees none; the MPC's linear model lets the speed go below zero and lets off
    ahead of a predicted standstill)."""
    accel = min(accel_mps2, plan_accel_mps2)
    return accel, 0.0, actuator.command(accel, speed_mps)[1]


class LongitudinalPid:
    """Plan speed / acceleration -> acceleration command [m/s^2] -> (throttle, brake)."""

    def __init__(self, config: LongitudinalPidConfig, standstill: StandstillConfig,
                 actuator: ActuatorMap, dt_s: float):
        self.config = config
        self.standstill = standstill
        self.actuator = actuator
        self.dt_s = dt_s
        self.integral_mps2 = 0.0  # the ki part of the command [m/s^2]
        self.last_accel_mps2 = 0.0

    def reset(self) -> None:
        self.integral_mps2 = 0.0
        self.last_accel_mps2 = 0.0

    def step(self, ego: EgoState, ref: PlanReference, tau_s: float,
             emergency: bool = False) -> tuple[float, float]:
        """(throttle, brake) for this tick; tau_s is now relative to the plan's time. ``emergency``:
        the plan is an emergency stop, which brakes at least as hard as it asks and never throttles."""
        if hold_still(ego, ref, tau_s, self.standstill):
            self.reset()
            return 0.0, self.standstill.hold_brake
        # the feed-forward is read ahead to cover the actuator lag; the speed error is for now
        plan_accel = float(ref.accel_at(tau_s + self.config.preview_s))
        accel = self.accel_command(ego.speed, float(ref.speed_at(tau_s)), plan_accel)
        if not emergency:
            return self.actuator.command(accel, ego.speed)
        # The stop's deceleration is read now, not at the preview: in its last tenths of a second
        # the stop ends inside the preview, which then reads 0, and the car crept on at 0.6 m/s.
        self.last_accel_mps2, throttle, brake = emergency_pedals(self.actuator, accel, float(ref.accel_at(tau_s)),
                                                                 ego.speed)
        return throttle, brake

    def accel_command(self, speed_mps: float, target_speed_mps: float, plan_accel_mps2: float) -> float:
        """One PID update [m/s^2], clipped to the config's and the vehicle's range."""
        cfg = self.config
        error = target_speed_mps - speed_mps
        kp = float(np.interp(speed_mps, cfg.kp_bp_mps, cfg.kp_v))
        ki = float(np.interp(speed_mps, cfg.ki_bp_mps, cfg.ki_v))
        brake_limit, drive_limit = self.actuator.accel_range(speed_mps)
        low, high = max(cfg.accel_min_mps2, brake_limit), min(cfg.accel_max_mps2, drive_limit)
        feedforward = cfg.feedforward_gain * plan_accel_mps2
        integral = float(np.clip(self.integral_mps2 + ki * error * self.dt_s,
                                 -cfg.integral_limit_mps2, cfg.integral_limit_mps2))
        unsaturated = feedforward + kp * error + integral
        # Don't allow windup if already clipping
        if not ((unsaturated > high and error > 0.0) or (unsaturated < low and error < 0.0)):
            self.integral_mps2 = integral
        self.last_accel_mps2 = float(np.clip(feedforward + kp * error + self.integral_mps2, low, high))
        return self.last_accel_mps2

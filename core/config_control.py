"""Config schema of the controllers (`controller:` in configs/stack.yaml).

Defaults are the tuned values (tests/test_control.py drives them on the curvy road).
Speed-dependent gains are breakpoint/value tables interpolated on the ego speed, as in
openpilot's `kpBP`/`kpV`: `kp_bp_mps` are the speeds [m/s], `kp_v` the gains there.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from stagepilot.core.config_base import MAX_SPEED_MPS, MAX_WEIGHT, Strict

SpeedBreakpoint = Annotated[float, Field(ge=0.0, le=MAX_SPEED_MPS)]  # [m/s]
Gain = Annotated[float, Field(le=MAX_WEIGHT)]  # a gain or weight (the sign is checked per table)


def _check_schedule(name: str, breakpoints: tuple[float, ...], values: tuple[float, ...]) -> None:
    """`<name>_bp_mps` and `<name>_v` form one table: same length, speeds increasing."""
    if len(breakpoints) != len(values):
        raise ValueError(f"{name}_bp_mps and {name}_v must have the same length "
                         f"(got {len(breakpoints)} and {len(values)})")
    if any(b1 <= b0 for b0, b1 in zip(breakpoints, breakpoints[1:])):
        raise ValueError(f"{name}_bp_mps must be strictly increasing speeds")


class LongitudinalPidConfig(Strict):
    """Speed PID: acceleration = feed-forward of the plan's accel + kp e + ki integral(e)."""

    kp_bp_mps: tuple[SpeedBreakpoint, ...] = Field((0.0, 10.0, 30.0), min_length=1)  # [m/s] speeds
    kp_v: tuple[Gain, ...] = Field((2.0, 1.5, 1.2), min_length=1)  # [(m/s^2)/(m/s)] = [1/s]
    ki_bp_mps: tuple[SpeedBreakpoint, ...] = Field((0.0, 30.0), min_length=1)  # [m/s] speeds
    ki_v: tuple[Gain, ...] = Field((0.1, 0.05), min_length=1)  # [(m/s^2)/m] = [1/s^2]
    feedforward_gain: float = Field(1.0, ge=0.0, le=2.0)  # [-] on the plan's acceleration
    # [s] the plan's acceleration (feed-forward) is read this far ahead of now, to cover the
    # throttle lag (0.25 s on the embedded sedan)
    preview_s: float = Field(0.25, ge=0.0, le=2.0)
    integral_limit_mps2: float = Field(1.0, ge=0.0, le=5.0)  # [m/s^2] |ki part| at most this
    accel_min_mps2: float = Field(-6.0, ge=-15.0, lt=0.0)  # [m/s^2] hardest braking asked for
    accel_max_mps2: float = Field(3.0, gt=0.0, le=10.0)  # [m/s^2]

    @model_validator(mode="after")
    def _schedules(self) -> LongitudinalPidConfig:
        _check_schedule("kp", self.kp_bp_mps, self.kp_v)
        _check_schedule("ki", self.ki_bp_mps, self.ki_v)
        if any(v < 0.0 for v in self.kp_v + self.ki_v):
            raise ValueError("kp_v and ki_v must be >= 0")
        return self


class StandstillConfig(Strict):
    """Holding the car at a planned stop; every controller kind uses it."""

    # [m/s] the plan asks to stand still when its speed stays below this over the preview ...
    stop_speed_mps: float = Field(0.2, gt=0.0, le=2.0)
    stop_preview_s: float = Field(1.0, ge=0.0, le=5.0)  # [s]
    # [m] ... and it travels less than this from now to its end: a slow, jerk-limited launch
    # (under 0.2 m/s for its first second) must release the brake, or it never gets going
    stop_distance_m: float = Field(0.5, gt=0.0, le=10.0)
    standstill_speed_mps: float = Field(0.5, gt=0.0, le=3.0)  # [m/s] ego slower: hold it
    hold_brake: float = Field(0.6, gt=0.0, le=1.0)  # [0, 1] brake while held


class PurePursuitConfig(Strict):
    """Look-ahead Ld = lookahead_gain_s * v + lookahead_min_m along the plan, from the rear axle.

    PythonRobotics uses 0.1 s and 2.0 m; on the dynamic sedan at 15 m/s that weaves, a
    longer look-ahead does not.
    """

    lookahead_gain_s: float = Field(0.3, ge=0.0, le=3.0)  # [s]
    lookahead_min_m: float = Field(3.0, gt=0.0, le=50.0)  # [m]


class StanleyConfig(Strict):
    """delta = heading error + atan2(k e, v + softening) at the front axle (Hoffmann et al.)."""

    cross_track_gain_per_s: float = Field(1.0, gt=0.0, le=20.0)  # k [1/s]; PythonRobotics 0.5
    softening_mps: float = Field(1.0, gt=0.0, le=20.0)  # [m/s] keeps the gain finite at standstill
    # [rad per m/s^2] front tyre slip angle per lateral acceleration, fed forward from the
    # plan's curvature (v^2 kappa): m_front / C_front = 603 kg / 130 kN/rad on the sedan.
    # Without it the car settles outside the curve until atan(k e / v) makes up the slip.
    front_slip_rad_per_mps2: float = Field(0.0046, ge=0.0, le=0.1)
    # [s] damps the yaw rate against the path's (v kappa), the yaw-damping term of the paper.
    # Stanley sees only the plan's first metres; a plan re-anchored at the car every tick
    # (the lattice planner's) makes it weave off the road at 15 m/s without this term.
    yaw_rate_damping_s: float = Field(0.2, ge=0.0, le=2.0)


class OsqpConfig(Strict):
    max_iter: int = Field(200, ge=1, le=100000)
    eps_abs: float = Field(1e-4, gt=0.0, le=1.0)
    eps_rel: float = Field(1e-4, gt=0.0, le=1.0)
    polishing: bool = False  # OSQP's solution polishing; costs time, rarely changes the command


class MpcConfig(Strict):
    """Linear time-varying kinematic bicycle in path-error form, lateral and longitudinal.

    States: lateral error [m], heading error [rad], front-wheel angle [rad], station error [m],
    speed error [m/s], acceleration [m/s^2]. Inputs: steer rate [rad/s], acceleration
    command [m/s^2]. Weights are per squared unit of each quantity, summed over the horizon.
    """

    horizon_steps: int = Field(25, ge=5, le=200)  # N
    step_s: float = Field(0.1, ge=0.001, le=0.5)  # [s] MPC step; N * step_s is the horizon
    weight_lateral: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)  # [1/m^2]
    # The kinematic model ignores the tyres' lag, which grows with speed: heading error and
    # steering away from the feed-forward cost more the faster the car goes, or it weaves.
    weight_heading_bp_mps: tuple[SpeedBreakpoint, ...] = Field((5.0, 15.0, 20.0, 25.0), min_length=1)  # [m/s]
    weight_heading_v: tuple[Gain, ...] = Field((10.0, 50.0, 200.0, 400.0), min_length=1)  # [1/rad^2]
    weight_steer_bp_mps: tuple[SpeedBreakpoint, ...] = Field((5.0, 15.0), min_length=1)  # [m/s]
    # [1/rad^2] wheel angle off the curvature feed-forward atan(L kappa)
    weight_steer_v: tuple[Gain, ...] = Field((10.0, 50.0), min_length=1)
    weight_steer_rate: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)  # [s^2/rad^2]
    weight_station: float = Field(0.05, ge=0.0, le=MAX_WEIGHT)  # [1/m^2] behind or ahead of the plan's timing
    weight_speed: float = Field(0.5, ge=0.0, le=MAX_WEIGHT)  # [s^2/m^2]
    weight_accel: float = Field(0.2, ge=0.0, le=MAX_WEIGHT)  # [s^4/m^2] command off the plan's acceleration
    terminal_factor: float = Field(5.0, ge=1.0, le=1000.0)  # terminal state weights = factor x stage
    accel_min_mps2: float = Field(-6.0, ge=-15.0, lt=0.0)  # [m/s^2]
    accel_max_mps2: float = Field(3.0, gt=0.0, le=10.0)  # [m/s^2]
    # [s] first-order lag from acceleration command to acceleration (throttle lag of the sedan)
    accel_time_constant_s: float = Field(0.25, ge=0.0, le=2.0)
    # [s] lag between a command's tick and the car's response that the runtime does not
    # charge: the tyres' lag that the kinematic model leaves out. The MPC compensates the delay
    # the runtime charges under its time model (the command's tick after its frame) plus this,
    # by propagating the state through the commands already sent in that time (Autoware).
    # Tuned with the `budget` delay (one 0.05 s tick): 0.05 s more tracks best; too little
    # destabilises the loop, a tick too much costs little (tests/test_control.py).
    actuator_lag_s: float = Field(0.05, ge=0.0, le=1.0)
    # [m] the station error is clipped to this, so a plan that starts far from the car does
    # not ask for a violent catch-up
    station_error_limit_m: float = Field(5.0, gt=0.0, le=100.0)
    # [rad per m/s^2] steady-state sideslip of the rear axle per lateral acceleration (v^2 kappa),
    # m_rear / C_rear = 490 kg / 105 kN/rad on the sedan. In a curve the body points inside
    # the path by this much; the heading error is measured from there. (The measured slip
    # would do the same, but its fast transients destabilise the loop under a command delay.)
    rear_slip_rad_per_mps2: float = Field(0.0047, ge=0.0, le=0.1)
    osqp: OsqpConfig = OsqpConfig()

    @model_validator(mode="after")
    def _schedules(self) -> MpcConfig:
        _check_schedule("weight_heading", self.weight_heading_bp_mps, self.weight_heading_v)
        _check_schedule("weight_steer", self.weight_steer_bp_mps, self.weight_steer_v)
        if any(w < 0.0 for w in self.weight_heading_v + self.weight_steer_v):
            raise ValueError("weight_heading_v and weight_steer_v must be >= 0")
        return self


class ControllerConfig(Strict):
    """Which tracker turns the plan into a Control, and its parameters.

    pid_pure_pursuit and pid_stanley: longitudinal PID + the named lateral law.
    mpc: one MPC for steering and acceleration; pure pursuit + PID drive only the ticks
    where OSQP fails (counted).
    """

    kind: Literal["pid_pure_pursuit", "pid_stanley", "mpc"] = "mpc"
    # configs/actuators/<name>.yaml, or a path to a table: acceleration -> throttle / brake
    actuator_map: str = Field("embedded_sedan", min_length=1)
    longitudinal: LongitudinalPidConfig = LongitudinalPidConfig()
    standstill: StandstillConfig = StandstillConfig()
    pure_pursuit: PurePursuitConfig = PurePursuitConfig()
    stanley: StanleyConfig = StanleyConfig()
    mpc: MpcConfig = MpcConfig()

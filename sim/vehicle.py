"""Ego vehicle dynamics: a single-track (bicycle) model driven by CARLA-style commands.

Frames and units: SI inside; world frame x east, y north, yaw counter-clockwise from +x.
The pose is the REAR-AXLE centre (the ego frame origin, DESIGN.md). Body frame: x forward,
y left. A command's ``steer`` is positive to the RIGHT (CARLA); the front-wheel angle
``steer_angle`` is positive to the LEFT (right-handed frame), so settled
``steer_angle == -steer * max_steer_angle_rad``.

Model (REFERENCE.md, "Vehicle and traffic models"; CommonRoad vehicle models):
- steering: the wheel angle chases the command at most ``max_steer_rate_rad_s``;
- throttle and brake: first-order lags;
- longitudinal: drive force ``throttle * min(F_max, P_max / |v|)``, aerodynamic drag, and
  Coulomb-like brake and rolling resistance that stop the car but never move it;
- lateral: below ``kinematic_blend_low_speed_mps`` the kinematic bicycle (no slip at the rear
  axle); above ``kinematic_blend_high_speed_mps`` the dynamic single-track model with linear
  tyres (CommonRoad ``vehicle_dynamics_st.py``); in between a linear blend. Reversing is
  always kinematic (it is capped at ``max_reverse_speed_mps``).

Integration: fixed substeps of at most ``MAX_SUBSTEP_S``. The dynamic lateral states (vy, r)
are advanced with backward Euler, because explicit Euler is stiff at low speed (its
eigenvalues scale as (C_f + C_r) / (m v)); every other state uses explicit Euler.
Pure Python floats: identical inputs give bit-identical outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stagepilot.core.messages import Control
from stagepilot.core.vehicle_params import VehicleParams  # noqa: F401  (re-exported)

GRAVITY_MPS2 = 9.81  # [m/s^2]
MAX_SUBSTEP_S = 0.005  # [s] dt = 0.05 s runs as 10 substeps
_POWER_LIMIT_MIN_SPEED_MPS = 0.1  # [m/s] P/v is capped by the force limit well above this
_REVERSE_GOVERNOR_BAND_MPS = 0.5  # [m/s] reverse drive force fades out over this band


@dataclass(frozen=True)
class VehicleState:
    """The vehicle after a step. Pose of the rear-axle centre, world frame."""

    x: float  # [m]
    y: float  # [m]
    yaw: float  # [rad] in [-pi, pi]
    vx: float  # [m/s] body longitudinal velocity
    vy: float  # [m/s] body lateral velocity of the rear-axle centre, positive left
    yaw_rate: float  # [rad/s] positive counter-clockwise
    speed: float  # [m/s] signed, = vx
    accel: float  # [m/s^2] longitudinal, mean over the last step
    steer_angle: float  # [rad] front wheel, positive left
    throttle: float  # [0, 1] applied, after the actuator lag
    brake: float  # [0, 1] applied, after the actuator lag (hand brake counts as 1)


class DynamicBicycle:
    """Kinematic/dynamic single-track vehicle. ``step`` advances it by one command."""

    def __init__(
        self, params: VehicleParams, x: float, y: float, yaw: float, speed: float = 0.0
    ) -> None:
        self.params = params
        self._x = float(x)  # [m] rear axle
        self._y = float(y)  # [m]
        self._yaw = float(yaw)  # [rad]
        self._vx = float(speed)  # [m/s]
        self._vy_cg = 0.0  # [m/s] lateral velocity of the centre of gravity
        self._yaw_rate = 0.0  # [rad/s]
        self._steer_angle = 0.0  # [rad] positive left
        self._throttle = 0.0  # [0, 1] applied
        self._brake = 0.0  # [0, 1] applied
        self._accel = 0.0  # [m/s^2]

    @property
    def state(self) -> VehicleState:
        return VehicleState(
            x=self._x,
            y=self._y,
            yaw=self._yaw,
            vx=self._vx,
            vy=self._vy_cg - self.params.cg_to_rear_axle_m * self._yaw_rate,
            yaw_rate=self._yaw_rate,
            speed=self._vx,
            accel=self._accel,
            steer_angle=self._steer_angle,
            throttle=self._throttle,
            brake=self._brake,
        )

    def footprint(self) -> np.ndarray:
        """Body corners in the world frame, (4, 2) [m], counter-clockwise from rear right."""
        p = self.params
        rear, front, half_width = -p.rear_overhang_m, p.length_m - p.rear_overhang_m, p.width_m / 2
        cos_yaw, sin_yaw = math.cos(self._yaw), math.sin(self._yaw)
        body = ((rear, -half_width), (front, -half_width), (front, half_width), (rear, half_width))
        return np.array(
            [
                (self._x + bx * cos_yaw - by * sin_yaw, self._y + bx * sin_yaw + by * cos_yaw)
                for bx, by in body
            ]
        )

    def step(self, control: Control, dt: float) -> None:
        """Apply ``control`` (CARLA semantics, clipped; NaN counts as 0) for ``dt`` [s]."""
        if not (math.isfinite(dt) and dt > 0.0):
            raise ValueError(f"dt must be a positive finite number of seconds, got {dt!r}")
        p = self.params
        command = control.clipped()
        substeps = max(1, math.ceil(dt / MAX_SUBSTEP_S - 1e-9))
        h = dt / substeps
        steer_target = -command.steer * p.max_steer_angle_rad  # CARLA's right is our -yaw
        brake_target = 1.0 if command.hand_brake else command.brake
        direction = -1.0 if command.reverse else 1.0
        throttle_gain = _lag_gain(h, p.throttle_time_constant_s)
        brake_gain = _lag_gain(h, p.brake_time_constant_s)
        max_steer_change = p.max_steer_rate_rad_s * h
        vx_start = self._vx
        for _ in range(substeps):
            steer_error = steer_target - self._steer_angle
            self._steer_angle += min(max(steer_error, -max_steer_change), max_steer_change)
            self._throttle += (command.throttle - self._throttle) * throttle_gain
            self._brake += (brake_target - self._brake) * brake_gain
            self._substep(h, direction)
        self._accel = (self._vx - vx_start) / dt
        self._yaw = math.remainder(self._yaw, 2.0 * math.pi)

    def _substep(self, h: float, direction: float) -> None:
        p = self.params
        vx = self._vx
        weight = self._dynamic_weight(vx)
        # Body-frame coupling m (vx' - vy r) = Fx - Fyf sin(delta); it vanishes on a kinematic path
        coupling_n = 0.0
        if weight > 0.0:
            front_force_n = self._front_lateral_force_n(vx, self._vy_cg, self._yaw_rate)
            coupling_n = weight * (
                p.mass_kg * self._vy_cg * self._yaw_rate
                - front_force_n * math.sin(self._steer_angle)
            )
        self._vx = self._longitudinal_speed(h, direction, coupling_n)
        self._vy_cg, self._yaw_rate = self._lateral_states(h, self._vx)
        vy_rear_axle = self._vy_cg - p.cg_to_rear_axle_m * self._yaw_rate
        yaw_mid = self._yaw + 0.5 * h * self._yaw_rate
        cos_yaw, sin_yaw = math.cos(yaw_mid), math.sin(yaw_mid)
        self._x += h * (self._vx * cos_yaw - vy_rear_axle * sin_yaw)
        self._y += h * (self._vx * sin_yaw + vy_rear_axle * cos_yaw)
        self._yaw += h * self._yaw_rate

    def _dynamic_weight(self, vx: float) -> float:
        """0 = kinematic, 1 = dynamic single-track; linear in vx across the blend band."""
        p = self.params
        low, high = p.kinematic_blend_low_speed_mps, p.kinematic_blend_high_speed_mps
        if vx <= low:
            return 0.0
        if vx >= high:
            return 1.0
        return (vx - low) / (high - low)

    def _longitudinal_speed(self, h: float, direction: float, coupling_n: float) -> float:
        """vx after one substep. Brake and rolling resistance act as Coulomb friction."""
        p = self.params
        vx = self._vx
        drive_n = self._throttle * min(
            p.max_drive_force_n, p.max_power_w / max(abs(vx), _POWER_LIMIT_MIN_SPEED_MPS)
        )
        if direction < 0.0:
            band = (p.max_reverse_speed_mps + vx) / _REVERSE_GOVERNOR_BAND_MPS
            drive_n *= -min(max(band, 0.0), 1.0)
        drag_n = 0.5 * p.air_density_kg_m3 * p.drag_area_m2 * vx * abs(vx)
        accel = (drive_n - drag_n + coupling_n) / p.mass_kg
        resist = self._brake * p.max_brake_force_n / p.mass_kg + (
            p.rolling_resistance_coeff * GRAVITY_MPS2
        )
        if vx > 0.0:
            return max(vx + h * (accel - resist), 0.0)  # stops at exactly 0, never reverses
        if vx < 0.0:
            return min(vx + h * (accel + resist), 0.0)
        if abs(accel) <= resist:
            return 0.0  # static: resistance holds the car
        return h * (accel - math.copysign(resist, accel))

    def _front_lateral_force_n(self, vx: float, vy_cg: float, yaw_rate: float) -> float:
        """Linear tyre force, slip linearised about the kinematic path (needs vx > 0)."""
        p = self.params
        cos_steer = math.cos(self._steer_angle)
        # atan(u) ~ delta + (u - tan delta) cos^2 delta: zero slip exactly on the kinematic path
        slip_rad = cos_steer * cos_steer * (
            math.tan(self._steer_angle) - (vy_cg + p.cg_to_front_axle_m * yaw_rate) / vx
        )
        return p.cornering_stiffness_front_n_per_rad * slip_rad

    def _lateral_states(self, h: float, vx: float) -> tuple[float, float]:
        """(vy_cg, yaw_rate) after one substep: kinematic, dynamic or their blend."""
        p = self.params
        yaw_rate_kin = vx * math.tan(self._steer_angle) / p.wheelbase_m
        vy_kin = p.cg_to_rear_axle_m * yaw_rate_kin  # no slip at the rear axle
        weight = self._dynamic_weight(vx)
        if weight <= 0.0:
            return vy_kin, yaw_rate_kin
        vy_dyn, yaw_rate_dyn = self._single_track_implicit(h, vx)
        if weight >= 1.0:
            return vy_dyn, yaw_rate_dyn
        return (
            weight * vy_dyn + (1.0 - weight) * vy_kin,
            weight * yaw_rate_dyn + (1.0 - weight) * yaw_rate_kin,
        )

    def _single_track_implicit(self, h: float, vx: float) -> tuple[float, float]:
        """Backward-Euler step of the linear single-track lateral dynamics at fixed vx, delta.

        m (vy' + vx r) = Fyf cos(delta) + Fyr,  Iz r' = lf Fyf cos(delta) - lr Fyr, with
        Fyf = Cf cos^2(delta) (tan(delta) - (vy + lf r) / vx),  Fyr = -Cr (vy - lr r) / vx.
        """
        p = self.params
        lf, lr, m, iz = p.cg_to_front_axle_m, p.cg_to_rear_axle_m, p.mass_kg, p.yaw_inertia_kgm2
        cos_steer = math.cos(self._steer_angle)
        front_gain = p.cornering_stiffness_front_n_per_rad * cos_steer**3 / vx  # [N s/m]
        rear_gain = p.cornering_stiffness_rear_n_per_rad / vx  # [N s/m]
        front_force0_n = front_gain * vx * math.tan(self._steer_angle)  # lateral, body frame
        # [vy', r'] = A [vy, r] + b
        a11 = -(front_gain + rear_gain) / m
        a12 = -(front_gain * lf - rear_gain * lr) / m - vx
        a21 = (rear_gain * lr - front_gain * lf) / iz
        a22 = -(front_gain * lf * lf + rear_gain * lr * lr) / iz
        rhs1 = self._vy_cg + h * front_force0_n / m
        rhs2 = self._yaw_rate + h * lf * front_force0_n / iz
        # Solve (I - h A) [vy, r] = rhs by Cramer's rule
        m11, m12, m21, m22 = 1.0 - h * a11, -h * a12, -h * a21, 1.0 - h * a22
        det = m11 * m22 - m12 * m21
        return (rhs1 * m22 - m12 * rhs2) / det, (m11 * rhs2 - m21 * rhs1) / det


def _lag_gain(h: float, time_constant_s: float) -> float:
    """Exact first-order-lag update fraction for a substep of h seconds."""
    if time_constant_s <= 0.0:
        return 1.0
    return 1.0 - math.exp(-h / time_constant_s)

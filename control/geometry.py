"""The few vehicle figures a path tracker needs, filled by the caller from the `vehicle:` config."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class VehicleGeometry:
    """Wheelbase and steering limits of the controlled vehicle (front-wheel angle, left positive)."""

    wheelbase_m: float  # [m] rear axle to front axle (cg_to_front_axle_m + cg_to_rear_axle_m)
    max_steer_angle_rad: float  # [rad] front wheel at full lock; Control.steer = +-1
    max_steer_rate_rad_s: float  # [rad/s] front wheel

    def __post_init__(self) -> None:
        for name in ("wheelbase_m", "max_steer_angle_rad", "max_steer_rate_rad_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0.0):
                raise ValueError(f"VehicleGeometry.{name} must be a positive finite number, got {value!r}")
        if self.max_steer_angle_rad >= math.pi / 2:
            raise ValueError("VehicleGeometry.max_steer_angle_rad must be < pi/2")

    def steer_command(self, steer_angle_rad: float) -> float:
        """Front-wheel angle (positive left) -> Control.steer in [-1, 1] (positive right, CARLA)."""
        if not math.isfinite(steer_angle_rad):
            return 0.0
        return min(max(-steer_angle_rad / self.max_steer_angle_rad, -1.0), 1.0)

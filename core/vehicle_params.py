"""The ego vehicle's parameters: a mid-size sedan by default, every figure with its source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class VehicleParams:
    """A mid-size sedan. Chassis figures are CommonRoad's BMW 320i (``parameters_vehicle2``)."""

    mass_kg: float = 1093.0  # [kg] CommonRoad parameters_vehicle2 (BMW 320i)
    yaw_inertia_kgm2: float = 1792.0  # [kg m^2] CommonRoad parameters_vehicle2, I_z
    cg_to_front_axle_m: float = 1.156  # [m] CommonRoad parameters_vehicle2, a
    cg_to_rear_axle_m: float = 1.423  # [m] CommonRoad parameters_vehicle2, b
    # [N/rad] per axle: CommonRoad's normalised C_Sf = 20.89 /rad x mu 1.048 x front axle load
    cornering_stiffness_front_n_per_rad: float = 130000.0
    # [N/rad] per axle: C_Sr = 20.89 /rad x mu 1.048 x rear axle load. Equal normalised
    # stiffness makes this car almost exactly neutral-steer (understeer gradient ~ 0)
    cornering_stiffness_rear_n_per_rad: float = 105000.0
    max_steer_angle_rad: float = 1.066  # [rad] front wheel, CommonRoad parameters_vehicle2
    # [rad/s] front wheel. CommonRoad's 0.4 needs ~1 s to reach the ~0.4 rad of a 6 m radius
    # junction turn, which at 5 m/s is 5 m of road; 0.7 gets there in 0.6 s and is full lock
    # in 1.5 s, i.e. ~600 deg/s at the hand wheel with a ~15:1 ratio, a brisk EPS / driver
    max_steer_rate_rad_s: float = 0.7
    length_m: float = 4.6  # [m] bumper to bumper, mid-size sedan (BMW 3 series ~4.5-4.7)
    width_m: float = 1.8  # [m] body without mirrors, BMW 3 series ~1.8
    height_m: float = 1.45  # [m] BMW 3 series ~1.43-1.45
    rear_overhang_m: float = 0.9  # [m] rear axle to rear bumper; front overhang is 1.12 m
    # [N] traction-limited launch: rear axle load (RWD) 4.8 kN x mu ~0.85; ~3.7 m/s^2
    max_drive_force_n: float = 4000.0
    max_power_w: float = 93000.0  # [W] at the wheels: 110 kW (320i, 150 PS) x ~0.85 driveline
    max_brake_force_n: float = 9000.0  # [N] ~8.2 m/s^2 (0.84 g), ABS stop on dry asphalt
    drag_area_m2: float = 0.65  # [m^2] Cd*A, typical sedan: Cd ~0.29 x frontal area ~2.2 m^2
    air_density_kg_m3: float = 1.225  # [kg/m^3] ISA sea level, 15 degC
    rolling_resistance_coeff: float = 0.012  # [-] passenger-car tyre on asphalt, ~0.010-0.015
    throttle_time_constant_s: float = 0.25  # [s] engine torque build-up, first-order lag
    brake_time_constant_s: float = 0.12  # [s] hydraulic brake pressure build-up
    # [m/s] pure kinematic bicycle below (CommonRoad falls back below 0.1 m/s; the wider band
    # keeps slip angles away from 0/0 while stopping and starting)
    kinematic_blend_low_speed_mps: float = 1.0
    kinematic_blend_high_speed_mps: float = 3.0  # [m/s] pure dynamic single-track above
    max_reverse_speed_mps: float = 3.0  # [m/s] parking-manoeuvre speed, reverse gear governor

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(
                    f"VehicleParams.{item.name} must be a finite number, got {value!r}"
                )
            if item.name in _NON_NEGATIVE_FIELDS:
                if value < 0.0:
                    raise ValueError(f"VehicleParams.{item.name} must be >= 0, got {value!r}")
            elif value <= 0.0:
                raise ValueError(f"VehicleParams.{item.name} must be > 0, got {value!r}")
        if self.max_steer_angle_rad >= math.pi / 2:
            raise ValueError("VehicleParams.max_steer_angle_rad must be < pi/2")
        if self.kinematic_blend_high_speed_mps <= self.kinematic_blend_low_speed_mps:
            raise ValueError(
                "VehicleParams.kinematic_blend_high_speed_mps must exceed "
                "kinematic_blend_low_speed_mps"
            )
        if self.rear_overhang_m + self.wheelbase_m > self.length_m:
            raise ValueError(
                "VehicleParams.length_m must cover rear_overhang_m plus the wheelbase "
                f"({self.rear_overhang_m + self.wheelbase_m:.3f} m)"
            )

    @property
    def wheelbase_m(self) -> float:
        return self.cg_to_front_axle_m + self.cg_to_rear_axle_m

    @property
    def understeer_gradient_rad_per_mps2(self) -> float:
        """K in delta = L/R + K a_y (small angles): > 0 understeer, < 0 oversteer."""
        return (self.mass_kg / self.wheelbase_m) * (
            self.cg_to_rear_axle_m / self.cornering_stiffness_front_n_per_rad
            - self.cg_to_front_axle_m / self.cornering_stiffness_rear_n_per_rad
        )


_NON_NEGATIVE_FIELDS = frozenset(
    {
        "rear_overhang_m",
        "drag_area_m2",
        "rolling_resistance_coeff",
        "throttle_time_constant_s",
        "brake_time_constant_s",
    }
)

"""Config schema of the Frenet lattice planner (`planner.lattice:` in configs/stack.yaml).

Comfort limits default to nuPlan's comfort metric bounds (REFERENCE.md, Comfort: nuPlan).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from stagepilot.core.config_base import MAX_WEIGHT, Strict

PositiveSeconds = Annotated[float, Field(gt=0.0, le=20.0)]
Weight = Annotated[float, Field(ge=0.0, le=MAX_WEIGHT)]
SpeedFraction = Annotated[float, Field(ge=0.0, le=1.5)]


class LatticeLimits(Strict):
    """Hard limits on every normal candidate; a candidate that breaks one is discarded."""

    max_accel: float = Field(2.40, gt=0.0, le=10.0)  # [m/s^2] longitudinal, nuPlan comfort
    min_accel: float = Field(-4.05, lt=0.0, ge=-10.0)  # [m/s^2] longitudinal, nuPlan comfort
    max_lateral_accel: float = Field(4.89, gt=0.0, le=15.0)  # [m/s^2] |v^2 kappa|, nuPlan
    max_longitudinal_jerk: float = Field(4.13, gt=0.0, le=50.0)  # [m/s^3] |s'''|, nuPlan
    max_curvature: float = Field(0.25, gt=0.0, le=2.0)  # [1/m] |kappa| of the rear-axle path
    max_heading_error_rad: float = Field(1.0, gt=0.0, le=1.57)  # from the reference heading


class LatticeWeights(Strict):
    """Cost weights; every term is a mean over the common horizon unless it says otherwise."""

    offset: Weight = 0.5  # per m^2 of lateral offset d from the reference
    lateral_jerk: Weight = 0.05  # per (m/s^3)^2 of d'''
    longitudinal_jerk: Weight = 0.05  # per (m/s^3)^2 of s'''
    speed_error: Weight = 1.0  # per (m/s)^2 below/above the speed reference
    time: Weight = 0.1  # per s of lateral manoeuvre duration
    offset_change: Weight = 0.2  # per m^2 between target offset and last plan's
    proximity: Weight = 5.0  # times (1 - clearance / proximity_range_m)^2, worst step


class LatticeCollision(Strict):
    safety_margin_m: float = Field(0.3, ge=0.0, le=3.0)  # ego rectangle grown on every side
    # [m] obstacle rectangles grown on every side, by kind (on top of the ego margin)
    extra_margin_by_kind_m: dict[str, Annotated[float, Field(ge=0.0, le=3.0)]] = Field(
        default_factory=lambda: {"pedestrian": 0.5, "cyclist": 0.3}
    )
    # [s] margins grow linearly from 0 at t=0 to full at this time, so a present near miss
    # (a pedestrian passing 0.2 m away) is not an unavoidable "collision" of every candidate
    margin_ramp_s: float = Field(0.5, ge=0.0, le=5.0)
    proximity_range_m: float = Field(2.0, ge=0.0, le=10.0)  # bare-body gap that starts to cost


class LatticePrediction(Strict):
    """How obstacles move over the plan horizon (planning/prediction.py): moving vehicles along
    the road-map lanes they match, everything else at constant velocity."""

    kind: Literal["lanes", "constant_velocity"] = "lanes"  # lanes needs a road map, else CV
    max_offset_m: float = Field(1.5, gt=0.0, le=10.0)  # [m] vehicle centre to lane centre, to match
    max_heading_error_rad: float = Field(0.5, gt=0.0, le=1.57)  # course vs lane direction, to match
    # [m/s] slower obstacles stand: predicted in place with a margin that does not grow
    min_speed_mps: float = Field(1.0, ge=0.0, le=10.0)
    # [m/s] obstacle margins widen with prediction time t by these x t: lane-following vehicles
    # stay in their lane, constant-velocity ones (walkers, unmatched vehicles) may go anywhere
    lane_margin_growth_mps: float = Field(0.05, ge=0.0, le=5.0)
    constant_velocity_margin_growth_mps: float = Field(0.1, ge=0.0, le=5.0)


class LatticeFallback(Strict):
    """The stopping trajectory returned when no candidate is feasible."""

    decel: float = Field(6.0, gt=0.0, le=8.0)  # [m/s^2] strongest braking planned
    jerk: float = Field(10.0, gt=0.0, le=100.0)  # [m/s^3] how fast braking builds up


class LatticeConfig(Strict):
    """Sampling: num_offsets x len(speed_fractions) x len(horizons_s) candidates, plus
    num_offsets x len(horizons_s) x stop_candidates stopping candidates when a stop is set."""

    dt_s: float = Field(0.1, ge=0.001, le=0.5)  # trajectory sample step
    plan_horizon_s: float = Field(5.0, gt=0.0, le=20.0)  # common length of every candidate
    # lateral: offsets evenly spread over the behaviour layer's [d_min, d_max] band; the
    # nearest sample snaps to each lane centre (multiple of lane_width_m) and to the ego's
    # own offset, so keeping the lane or the present offset is always a candidate
    num_offsets: int = Field(9, ge=1, le=41)
    # lateral moves are laid out in arc length, horizon x max(speed, this), so that a car
    # that stops mid-move stops where it is
    lateral_min_speed_mps: float = Field(2.0, gt=0.0, le=10.0)
    lane_width_m: float = Field(3.5, gt=1.0, le=10.0)
    # longitudinal: target speeds as fractions of LatticeTarget.target_speed
    speed_fractions: tuple[SpeedFraction, ...] = Field(
        (0.0, 0.25, 0.5, 0.7, 0.85, 1.0), min_length=1, max_length=20
    )
    # durations of the lateral moves (at the present speed) and shortest speed changes
    horizons_s: tuple[PositiveSeconds, ...] = Field(
        (2.0, 3.0, 4.0, 5.0), min_length=1, max_length=10
    )
    # quintic stops at stop_s: durations tried, as multiples of distance / max(speed, 1 m/s)
    # (2.0 is the gentlest from cruise: peak decel 0.75 v^2 / distance; beyond ~2.5 a stop
    # from cruise would reverse), of which the stop_candidates smoothest within limits are kept
    stop_time_factors: tuple[Annotated[float, Field(ge=0.5, le=5.0)], ...] = Field(
        (1.2, 1.35, 1.5, 1.65, 1.8, 1.95, 2.1, 2.25, 2.4, 2.6, 2.8, 3.0),
        min_length=1,
        max_length=40,
    )
    stop_candidates: int = Field(3, ge=0, le=20)
    # [m/s^2] a velocity-keeping candidate must end able to stop by stop_s at this braking;
    # the speed reference near a stop is sqrt(2 * stop_decel * distance left)
    stop_decel: float = Field(3.0, gt=0.0, le=8.0)
    limits: LatticeLimits = LatticeLimits()
    weights: LatticeWeights = LatticeWeights()
    collision: LatticeCollision = LatticeCollision()
    prediction: LatticePrediction = LatticePrediction()
    fallback: LatticeFallback = LatticeFallback()

    @field_validator("plan_horizon_s")
    @classmethod
    def _enough_samples(cls, value: float, info: ValidationInfo) -> float:
        samples = round(value / info.data.get("dt_s", 0.1))
        if samples < 40:
            raise ValueError(f"plan_horizon_s / dt_s must give at least 40 samples, got {samples}")
        return value

    @field_validator("horizons_s")
    @classmethod
    def _within_plan(cls, value: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        plan = info.data.get("plan_horizon_s")
        if plan is not None and max(value) > plan + 1e-9:
            raise ValueError(f"{max(value)} s is longer than plan_horizon_s ({plan} s)")
        return value

    @property
    def num_samples(self) -> int:
        """Samples per trajectory, t = 0 .. plan_horizon_s inclusive."""
        return round(self.plan_horizon_s / self.dt_s) + 1

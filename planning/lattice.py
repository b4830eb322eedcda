"""Frenet lattice local planner: sample, check, cost, and pick the cheapest feasible trajectory.

Candidates are lateral offsets x target speeds x horizons (Werling et al. 2010, as in
PythonRobotics' frenet_optimal_trajectory, but vectorised over all candidates at once), plus
stops at stop_s when the behaviour layer sets one: lattice_sampling.py builds them,
lattice_checks.py judges them against the limits, lattice_cost.py costs them and picks the
cheapest collision-free one. Candidates start from the ego's measured state (not from the
previous plan), so a plan always begins where the car is.

The planned point is the rear-axle centre, as in EgoState. `ego_s` is that point's arc length
on the reference (`reference.project(ego.x, ego.y)`); it is refined by one projection step.
[d_min, d_max] bounds the target offsets of the rear axle, which is the body centre's offset
once the car runs parallel to the reference.

Obstacles are predicted by prediction.py: along the road map's lanes when the planner has one,
at constant velocity otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stagepilot.core.messages import EgoState
from stagepilot.core.paths import Polyline
from stagepilot.core.config_lattice import LatticeConfig
from stagepilot.core.roadmap import RoadMap
from stagepilot.planning.collision import Obstacle, margin_ramp
from stagepilot.planning.frenet import (
    FrenetState,
    ReferenceFrame,
    WorldTrajectories,
    braking_profiles,
)
from stagepilot.planning.lattice_checks import check_limits, infeasible_reason
from stagepilot.planning.lattice_cost import EgoBody, candidate_cost, choose
from stagepilot.planning.lattice_sampling import (
    Rollout,
    clip_accel,
    lay_out,
    rear_axle_stop,
    sample_lattice,
)
from stagepilot.planning.prediction import ObstaclePredictor

__all__ = ["FrenetLatticePlanner", "LatticeResult", "LatticeTarget"]


@dataclass(frozen=True)
class LatticeTarget:
    """What the behaviour layer asks for this tick."""

    target_speed: float  # [m/s] >= 0
    stop_s: float | None = None  # [m] arc length the FRONT BUMPER must stop by, or None
    d_min: float = -0.5  # [m] allowed target offsets of the ego from the reference, + left
    d_max: float = 0.5
    follow: int | None = None  # id of a lead vehicle; gap keeping is the behaviour layer's

    def __post_init__(self) -> None:
        if not np.isfinite(self.target_speed) or self.target_speed < 0.0:
            raise ValueError(f"target_speed must be finite and >= 0, got {self.target_speed}")
        if not (np.isfinite(self.d_min) and np.isfinite(self.d_max) and self.d_min <= self.d_max):
            raise ValueError(f"need finite d_min <= d_max, got ({self.d_min}, {self.d_max})")
        if self.stop_s is not None and not np.isfinite(self.stop_s):
            raise ValueError(f"stop_s must be finite or None, got {self.stop_s}")


@dataclass(frozen=True)
class LatticeResult:
    """The chosen trajectory of the rear axle in the world frame; arrays (T,) as in Plan."""

    times: np.ndarray  # [s] from now
    x: np.ndarray  # [m]
    y: np.ndarray  # [m]
    yaw: np.ndarray  # [rad]
    v: np.ndarray  # [m/s]
    a: np.ndarray  # [m/s^2] longitudinal
    curvature: np.ndarray  # [1/m]
    feasible: bool  # a candidate passed every check
    fallback: bool  # not feasible: this is the emergency stopping trajectory
    candidates: int  # generated and evaluated this call
    chosen_offset_m: float  # target lateral offset (the present one for the fallback)
    cost: float  # inf for the fallback
    reason: str  # one line; says why when blocked or falling back
    chosen_speed_mps: float = 0.0  # end speed of the chosen longitudinal profile
    chosen_horizon_s: float = 0.0  # duration of the lateral manoeuvre
    exact_checks: int = 0  # candidates that needed the exact shapely test


class FrenetLatticePlanner:
    """One `plan` call per tick. Keeps only the last plan's end point (offset hysteresis).
    Without a road map, obstacles are predicted at constant velocity."""

    def __init__(
        self,
        config: LatticeConfig,
        vehicle_length_m: float,
        vehicle_width_m: float,
        rear_axle_to_center_m: float,
        road_map: RoadMap | None = None,
    ):
        self.config = config
        self.length_m = vehicle_length_m
        self.width_m = vehicle_width_m
        self.rear_to_center_m = rear_axle_to_center_m
        self.rear_to_front_m = rear_axle_to_center_m + 0.5 * vehicle_length_m
        self.times = np.arange(config.num_samples) * config.dt_s  # (T,)
        self.margin_ramp = margin_ramp(self.times, config.collision.margin_ramp_s)  # (T,)
        margin = config.collision.safety_margin_m
        self.body = EgoBody.make(vehicle_length_m, vehicle_width_m, rear_axle_to_center_m, margin)
        self.use_road_map(road_map)
        self._last_end_xy: tuple[float, float] | None = None

    def use_road_map(self, road_map: RoadMap | None) -> None:
        """Predict obstacles on this road map from now on (None: at constant velocity)."""
        cfg = self.config
        self.predictor = ObstaclePredictor(cfg.prediction, cfg.collision, self.times, road_map)

    def reset(self) -> None:
        self._last_end_xy = None

    def plan(
        self,
        ego: EgoState,
        reference: Polyline,
        ego_s: float,
        target: LatticeTarget,
        obstacles: list[Obstacle],
    ) -> LatticeResult:
        """The cheapest feasible candidate, or the fallback stop when there is none."""
        cfg = self.config
        roll = self._rollout(ego, reference, ego_s, target)
        lattice = roll.lattice
        failed = check_limits(lattice.lon, lattice.lon_idx, roll.world, roll.s_stop, cfg)  # (C,)
        d_prev = self._previous_offset(reference, roll.state)
        cost = candidate_cost(roll, target.target_speed, d_prev, cfg)
        obs = self.predictor.predict(obstacles)
        chosen, collided, exact_checks = choose(
            roll.world, failed, cost, obs, self.body, cfg, self.margin_ramp
        )
        if chosen < 0:
            reason = infeasible_reason(len(cost), failed, collided, obs)
            result = self._fallback(roll, reason, len(cost), exact_checks)
        else:
            result = self._result(roll, chosen, cost, target, collided, obs, exact_checks)
        self._last_end_xy = (float(result.x[-1]), float(result.y[-1]))
        return result

    def rollout(
        self, ego: EgoState, reference: Polyline, ego_s: float, target: LatticeTarget
    ) -> WorldTrajectories:
        """Every candidate of this tick in the world frame, (C, T), unchecked (for benchmarks)."""
        return self._rollout(ego, reference, ego_s, target).world

    def _rollout(
        self, ego: EgoState, reference: Polyline, ego_s: float, target: LatticeTarget
    ) -> Rollout:
        cfg = self.config
        frame = ReferenceFrame(reference)
        state = clip_accel(frame.ego_state(ego, ego_s, cfg.limits.max_curvature), cfg)
        s_stop = rear_axle_stop(
            frame, target.stop_s, target.d_min, target.d_max, self.rear_to_front_m
        )
        lattice = sample_lattice(
            state, target.target_speed, target.d_min, target.d_max, s_stop, cfg, self.times
        )
        return lay_out(frame, state, s_stop, lattice)

    def _previous_offset(self, reference: Polyline, state: FrenetState) -> float | None:
        """Where the last plan was heading, as an offset [m] on this reference (None: no plan)."""
        if self._last_end_xy is None:
            return None
        x, y = self._last_end_xy
        ahead = float(np.hypot(*np.subtract(self._last_end_xy, reference.interpolate(state.s)[:2])))
        return reference.project(x, y, s_hint=state.s + ahead)[1]

    # ------------------------------------------------------------------ output

    def _result(
        self, roll: Rollout, chosen: int, cost, target, collided, obs, exact_checks: int
    ) -> LatticeResult:
        lattice, world = roll.lattice, roll.world
        offset = float(lattice.lat_offset[lattice.lat_idx[chosen]])
        horizon = float(lattice.lat_horizon[lattice.lat_idx[chosen]])
        speed = float(lattice.lon_speed[lattice.lon_idx[chosen]])
        v_end = float(world.v[chosen, -1])
        if lattice.lon_stop[lattice.lon_idx[chosen]]:
            reason = f"stop by s {target.stop_s:.1f} m, offset {offset:+.2f} m"
        else:
            reason = f"offset {offset:+.2f} m, speed {speed:.1f} m/s, lateral T {horizon:.0f} s"
        blocked = collided >= 0
        if target.target_speed > 0.5 and v_end < 0.5 * target.target_speed and blocked.any():
            worst = int(obs.ids[np.argmax(np.bincount(collided[blocked]))])
            reason = f"blocked by obstacle {worst}: slowing to {v_end:.1f} m/s"
        return LatticeResult(
            times=self.times.copy(),
            x=world.x[chosen],
            y=world.y[chosen],
            yaw=world.yaw[chosen],
            v=world.v[chosen],
            a=world.a[chosen],
            curvature=world.curvature[chosen],
            feasible=True,
            fallback=False,
            candidates=len(cost),
            chosen_offset_m=offset,
            cost=float(cost[chosen]),
            reason=reason,
            chosen_speed_mps=speed,
            chosen_horizon_s=horizon,
            exact_checks=exact_checks,
        )

    def _fallback(
        self, roll: Rollout, reason: str, candidates: int, exact_checks: int
    ) -> LatticeResult:
        """Brake as hard as config.fallback allows, holding the present lateral drift until the
        path runs parallel to the reference by the time the car stops."""
        fb, state = self.config.fallback, roll.state
        s, d = braking_profiles(state, self.times, fb.decel, fb.jerk)
        world = roll.frame.to_world(s, d, state.heading_error)  # (1, T)
        return LatticeResult(
            times=self.times.copy(),
            x=world.x[0],
            y=world.y[0],
            yaw=world.yaw[0],
            v=world.v[0],
            a=world.a[0],
            curvature=world.curvature[0],
            feasible=False,
            fallback=True,
            candidates=candidates,
            chosen_offset_m=state.d,
            cost=float("inf"),
            reason=reason,
            chosen_speed_mps=0.0,
            chosen_horizon_s=0.0,
            exact_checks=exact_checks,
        )

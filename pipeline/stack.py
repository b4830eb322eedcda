"""The driving stack: the configured perception stage, planner and controller.

Each stage has one `step` from its input message to its output message (core/stages.py);
the runtime (pipeline/runtime.py) calls them, times them and applies the time model, budgets
and the fail-safe.
"""

from __future__ import annotations

from stagepilot.control import VehicleGeometry, build_controller
from stagepilot.core.config import StackConfig
from stagepilot.core.roadmap import RoadMap
from stagepilot.core.stages import Controller, PerceptionStage, PlannerStage
from stagepilot.perception.perfect import PerfectPerception
from stagepilot.planning.behaviour import VehicleShape
from stagepilot.planning.planner import LatticePlannerStage


def vehicle_geometry(config: StackConfig) -> VehicleGeometry:
    vehicle = config.vehicle
    return VehicleGeometry(wheelbase_m=vehicle.cg_to_front_axle_m + vehicle.cg_to_rear_axle_m,
                           max_steer_angle_rad=vehicle.max_steer_angle_rad,
                           max_steer_rate_rad_s=vehicle.max_steer_rate_rad_s)


def build_perception(config: StackConfig, road_map: RoadMap | None = None, signal_heads=None) -> PerceptionStage:
    """The perception stage ``config.perception.kind`` names: the trained network (``learned``)
    or the ground-truth stand-in (``perfect``), over the rig ``config.sim.cameras``.
    ``signal_heads``: the signalised approaches of the world (default: the road map's)."""
    rig = tuple(config.sim.cameras)
    if config.perception.kind == "perfect":
        return PerfectPerception(config.perception.perfect, config.sim.dt_s, cameras=rig)
    from stagepilot.perception.learned import LearnedPerception  # torch loads only when it is used

    vehicle = config.vehicle
    reach = vehicle.length_m - vehicle.rear_overhang_m + config.planner.behaviour.stop_line_margin_m
    return LearnedPerception(config.perception.learned, road_map, cameras=rig, stop_reach_m=reach,
                             signal_heads=signal_heads, camera_specs=list(config.sim.cameras.values()),
                             budget_ms=config.runtime.stages.perception.budget_ms)


def build_planner(config: StackConfig, road_map: RoadMap | None = None) -> PlannerStage:
    """The behaviour layer + Frenet lattice planner."""
    vehicle = config.vehicle
    return LatticePlannerStage(
        config.planner, VehicleShape(vehicle.length_m, vehicle.width_m, vehicle.rear_overhang_m), road_map,
        wheelbase_m=vehicle.cg_to_front_axle_m + vehicle.cg_to_rear_axle_m)


class DrivingStack:
    """The three stages a drive runs, built from one config."""

    def __init__(self, config: StackConfig, road_map: RoadMap | None = None, signal_heads=None):
        self.config = config
        self.perception: PerceptionStage = build_perception(config, road_map, signal_heads)
        self.planner: PlannerStage = build_planner(config, road_map)
        self.controller: Controller = build_controller(config.controller, vehicle_geometry(config), config.sim.dt_s)

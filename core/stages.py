"""The stage interfaces: one `step` per stage, one input message in, one output message out.

The runtime (pipeline/runtime.py) times every call, applies budgets and miss policies, and
decides the fail-safe; a stage knows nothing of them. Times are sim time [s].
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from stagepilot.core.messages import Control, EgoState, Observation, Perception, Plan, Route


@runtime_checkable
class PerceptionStage(Protocol):
    """Camera frames (and, for the ground-truth stand-in, ground truth) to a `Perception`."""

    name: str

    def step(self, obs: Observation) -> Perception: ...


@runtime_checkable
class PlannerStage(Protocol):
    """The ego state, route and perception at time `t` to a trajectory `Plan` (world frame)."""

    name: str

    def step(self, ego: EgoState, route: Route, perception: Perception, t: float) -> Plan: ...


@runtime_checkable
class Controller(Protocol):
    """The ego state and plan at time `t` to a `Control` (CARLA VehicleControl semantics)."""

    name: str

    def reset(self) -> None: ...

    def step(self, ego: EgoState, plan: Plan, t: float) -> Control: ...

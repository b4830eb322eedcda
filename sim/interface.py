"""The simulator interface that every world source implements: embedded, CARLA, replay."""

from __future__ import annotations

from abc import ABC, abstractmethod

from stagepilot.core.messages import Control, Observation
from stagepilot.sim.scenario import Scenario


class SimulatorError(RuntimeError):
    """A world source that failed: no server, a lost connection, an actor that could not be
    spawned, a sensor frame that never came. The message names what was being done."""


class Simulator(ABC):
    """A world that runs in fixed steps: reset with a scenario, then step with a control."""

    dt: float  # [s] fixed step

    @abstractmethod
    def reset(self, scenario: Scenario) -> Observation:
        """Build the scenario's world and return the first observation (frame 0, t = 0)."""

    @abstractmethod
    def step(self, control: Control) -> Observation:
        """Apply `control` for one step and return the observation at the new time."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """True once the scenario has ended (duration reached or route completed)."""

    def close(self) -> None:
        """Release resources (server connections, files)."""

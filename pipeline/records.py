"""What the runtime knows about one frame, beyond the observation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stagepilot.core.messages import Control, EgoState, Event, Perception, Plan


@dataclass(frozen=True)
class FrameRecord:
    """What the runtime knows about one frame, beyond the observation."""

    t: float  # [s] sim time
    frame: int
    ego: EgoState
    control: Control
    plan: Plan | None
    perception: Perception | None
    events: tuple[Event, ...]  # sim and runtime events this frame (duplicates of obs.events are dropped)
    stage_ms: dict[str, float]  # measured latency of each stage this frame [ms]
    charged_delay_s: float  # [s] from the frame to its command's ready time, as the time model charged it
    misses: tuple[str, ...] = ()  # e.g. "planner: 23.1 ms > 15 ms budget (hold)"
    failsafe: str | None = None  # why the fail-safe was active, None when it was not
    # [s] from the capture of the camera frame the command was computed from (a held
    # perception's own frame) to the tick at which the command applies
    sensor_to_actuator_s: float = 0.0
    # [s] when the runtime told the controller its command would apply (its delay compensation)
    controller_delay_s: float = 0.0
    # Each stage that ran this frame: name -> (its input arguments, its output as it returned
    # it, before any miss policy). Observers see it (a recording is made of it); the runtime's
    # kept records drop it.
    calls: dict[str, tuple[tuple, Any]] = field(default_factory=dict)


def frame_events(obs, record: FrameRecord) -> list[Event]:
    """The frame's events once each: the observation's and the runtime's, in that order."""
    return list(dict.fromkeys((*obs.events, *record.events)))

"""Signal heads: where the light that governs each signalised junction approach stands.

A map says which approaches are signalised and where their heads stand; the simulators place
their lights there and perception reads a light's state only from the head that governs the
ego's lane (perception/lights.py). OpenDRIVE maps without signal records, and the embedded
simulator on any map, use one rule: every approach of a junction with two or more approaches
has a head on a pole 1.5 m right of the approach's right lane edge, at its stop line, its
housing centre 4.2 m up, facing the traffic that approaches it. Approaches roughly parallel
to the junction's first approach form phase group 0, the crossing ones group 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stagepilot.core.lanes import StopLine

HEAD_SIDE_OFFSET_M = 1.5  # [m] pole right of the approach's right lane edge
HEAD_HEIGHT_M = 4.2  # [m] housing centre above the road
FIRST_HEAD_ID = 1000  # heads are numbered from here, in stop-line order


@dataclass(frozen=True)
class SignalHead:
    """One signal head: the stop line it governs and how it stands."""

    id: int
    stop_line_index: int  # into RoadMap.stop_lines
    stop_line: StopLine
    position: tuple[float, float, float]  # housing centre, world frame [m]
    facing: float  # [rad] direction the lamps face (towards approaching traffic)
    group: int  # 0 or 1: heads of one group show green together


def signal_heads(stop_lines: list[StopLine]) -> tuple[SignalHead, ...]:
    """The heads of every signalised approach, in a stable order (junction, then stop line)."""
    by_junction: dict[int, list[tuple[int, StopLine]]] = {}
    for index, line in enumerate(stop_lines):
        by_junction.setdefault(line.junction_id, []).append((index, line))
    heads: list[SignalHead] = []
    for junction_id in sorted(by_junction):
        lines = by_junction[junction_id]
        if len(lines) < 2:
            continue
        base = lines[0][1].heading
        for index, line in lines:
            parallel = abs(math.cos(line.heading - base)) > math.cos(math.radians(45))
            rx, ry = line.p1
            nx_, ny_ = math.sin(line.heading), -math.cos(line.heading)  # to the approach's right
            heads.append(SignalHead(
                id=FIRST_HEAD_ID + len(heads), stop_line_index=index, stop_line=line,
                position=(rx + HEAD_SIDE_OFFSET_M * nx_, ry + HEAD_SIDE_OFFSET_M * ny_, HEAD_HEIGHT_M),
                facing=math.remainder(line.heading + math.pi, math.tau), group=0 if parallel else 1))
    return tuple(heads)

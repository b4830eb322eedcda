"""The per-frame series of a drive and the figures computed from it.

`DriveSeries` keeps the light numbers of every frame (pose, speed, plan decision, stage
latencies, charged delay, events, misses, fail-safes); `drive_metrics` turns it into the
body of metrics.json: outcome, events, comfort, lateral error, latency table,
sensor-to-actuator latency, misses and fail-safes. Tests read the same figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stagepilot.core.messages import Event
from stagepilot.core.paths import Polyline
from stagepilot.pipeline.metrics import comfort, tracking_error
from stagepilot.pipeline.records import FrameRecord


@dataclass
class DriveSeries:
    """One entry per frame (events, misses and fail-safes: one per occurrence / stretch)."""

    t: list[float] = field(default_factory=list)  # [s]
    x: list[float] = field(default_factory=list)  # [m] rear axle, world frame
    y: list[float] = field(default_factory=list)
    yaw: list[float] = field(default_factory=list)  # [rad]
    speed: list[float] = field(default_factory=list)  # [m/s]
    yaw_rate: list[float] = field(default_factory=list)  # [rad/s]
    route_progress: list[float] = field(default_factory=list)  # [m]
    planned_speed: list[float] = field(default_factory=list)  # [m/s] plan's speed at its start, NaN without
    decisions: list[str] = field(default_factory=list)  # plan decision, "" without a plan
    reasons: list[str] = field(default_factory=list)
    delay_s: list[float] = field(default_factory=list)  # [s] charged delay: frame to its command's ready time
    sensor_to_actuator_s: list[float] = field(default_factory=list)  # [s] capture to the command's tick
    stage_ms: list[dict[str, float]] = field(default_factory=list)  # [ms] measured per stage
    events: list[tuple[Event, float, float]] = field(default_factory=list)  # with the ego's x, y
    misses: list[dict[str, Any]] = field(default_factory=list)
    failsafes: list[dict[str, Any]] = field(default_factory=list)

    def add(self, record: FrameRecord, route_progress: float, events: list[Event]) -> None:
        ego, plan = record.ego, record.plan
        self.t.append(record.t)
        self.x.append(ego.x)
        self.y.append(ego.y)
        self.yaw.append(ego.yaw)
        self.speed.append(ego.speed)
        self.yaw_rate.append(ego.yaw_rate)
        self.route_progress.append(route_progress)
        self.planned_speed.append(float(plan.v[0]) if plan is not None and len(plan.v) else math.nan)
        self.decisions.append(plan.decision if plan is not None else "")
        self.reasons.append(plan.reason if plan is not None else "")
        self.delay_s.append(record.charged_delay_s)
        self.sensor_to_actuator_s.append(record.sensor_to_actuator_s)
        self.stage_ms.append(dict(record.stage_ms))
        self.events += [(e, ego.x, ego.y) for e in events]
        self.misses += [{"t": record.t, "frame": record.frame, "stage": line.split(":", 1)[0], "line": line}
                        for line in record.misses]
        self._add_failsafe(record)

    def _add_failsafe(self, record: FrameRecord) -> None:
        """One entry per stretch of frames with the same fail-safe reason."""
        last = self.failsafes[-1] if self.failsafes else None
        if record.failsafe is None:
            return
        if last is not None and last["reason"] == record.failsafe and last["last_frame"] == record.frame - 1:
            last.update(t_end=record.t, last_frame=record.frame, frames=last["frames"] + 1)
        else:
            self.failsafes.append({"t": record.t, "t_end": record.t, "reason": record.failsafe,
                                   "frame": record.frame, "last_frame": record.frame, "frames": 1})

    def kinds(self) -> list[str]:
        """The kind of every event, in order."""
        return [event.kind for event, _, _ in self.events]

    def first_time(self, kind: str) -> float:
        """Sim time of the first event of `kind` [s], inf when there is none."""
        return next((event.t for event, _, _ in self.events if event.kind == kind), math.inf)

    def stages(self) -> list[str]:
        return list(dict.fromkeys(name for row in self.stage_ms for name in row))

    def stage_series(self, name: str) -> np.ndarray:
        return np.array([row.get(name, math.nan) for row in self.stage_ms], float)


def lateral_errors(series: DriveSeries, route_points: np.ndarray) -> np.ndarray:
    """Rear-axle offset from the route centre line [m], signed, positive left; frames that
    project beyond either end of the route are left out."""
    route, hint, errors = Polyline(route_points), None, []
    for x, y in zip(series.x, series.y):
        s, d = route.project(x, y, s_hint=hint)
        hint = s
        if 0.0 < s < route.length:
            errors.append(d)
    return np.array(errors)


def _percentiles(values: np.ndarray, *qs: int) -> dict[str, float | None]:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values):
        return {**{f"p{q}_ms": None for q in qs}, "max_ms": None}
    return {**{f"p{q}_ms": float(np.percentile(values, q)) for q in qs}, "max_ms": float(values.max())}


def _comfort(series: DriveSeries, dt: float) -> dict[str, float] | None:
    try:
        return comfort(np.array(series.speed), np.array(series.yaw_rate), dt)
    except ValueError:  # too short a drive
        return None


def drive_metrics(series: DriveSeries, route_points: np.ndarray, dt: float, *, scenario: str, config_hash: str,
                  outcome: dict, latency: dict) -> dict[str, Any]:
    """The body of metrics.json. `latency` is the runtime's per-stage table."""
    errors = lateral_errors(series, route_points)
    delay_ms = np.array(series.delay_s, float) * 1e3
    sensor_ms = np.array(series.sensor_to_actuator_s, float) * 1e3
    return {
        "scenario": scenario,
        "config_hash": config_hash,
        "outcome": outcome,
        "frames": len(series.t),
        "events": [{"t": e.t, "kind": e.kind, "detail": e.detail, "other_id": e.other_id}
                   for e, _, _ in series.events],
        "comfort": _comfort(series, dt),
        "tracking": tracking_error(errors) if len(errors) else None,
        "latency": latency,
        # from the capture of the frame behind each command (held perception included) to the
        # tick at which the command applies; the charged delay is the runtime's own part of it
        "sensor_to_actuator_ms": _percentiles(sensor_ms, 50, 99),
        "charged_delay_ms": _percentiles(delay_ms, 50, 99),
        "misses": [{"t": m["t"], "frame": m["frame"], "line": m["line"]} for m in series.misses],
        "failsafes": [{k: f[k] for k in ("t", "t_end", "reason", "frames")} for f in series.failsafes],
    }

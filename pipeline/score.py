"""The driving score of one drive: CARLA Leaderboard 2.0, with nuPlan comfort and TTC beside it.

Sources: leaderboard `leaderboard/utils/statistics_manager.py` (Leaderboard 2.0: the
coefficients and the multiplicative penalty; not 2.1's additive variant) and scenario_runner
`srunner/scenariomanager/scenarioatomics/atomic_criteria.py` (0.9.16: CollisionTest,
RouteCompletionTest, OutsideRouteLanesTest, InRouteTest, ActorBlockedTest). REFERENCE.md
has the figures.

    driving score = route completion [0, 100] x infraction penalty
    infraction penalty = prod(PENALTY[kind] ** count) x (1 - outside_route_lanes_pct / 100)

- Collisions come from the simulator's `collision` events (never `contact_at_standstill`), by
  the other actor's kind (vehicle, pedestrian, static). As in CollisionTest a hit does not
  count when the ego is slower than 0.1 m/s, when it is with the last counted actor within 5 s
  of that collision, or when the ego is within 5 m of the last counted collision and has not
  been further than 5 m from it since.
- Red light: each `red_light` event. Stop sign: none exist yet, always 0.
- Timeout (0.70): the drive ran to the scenario's `duration_s` without completing the route.
  A drive stopped sooner (Ctrl-C, `max_time_s`, an error) is `interrupted`, without penalty.
- Route completion: the share of the route's length the simulator's progress reached, 100 on
  success. Success: the simulator's `route_completed` (body centre within 5 m of the goal
  along the route) or, as in RouteCompletionTest, more than 99 % and within 10 m of the end.
- Outside route lanes: the route metres gained while the ego was outside the route lanes
  (pipeline/criteria.py says which lanes), as a share of all route metres gained, as in
  OutsideRouteLanesTest. Junctions are not checked but their metres count in the total.
- Route deviation (body centre more than 30 m from the route line) and blocked (below 0.1 m/s
  for `blocked_s`, counted from the last frame at or above it, or the drive's start) end the
  route: completion is taken at that frame, everything later is ignored; no coefficient.
- Comfort: the drive's metrics.json `comfort` (pipeline/metrics.py, nuPlan), with each bound's
  verdict under `bounds`; it covers the whole drive. `min_ttc_s`: the least time to collision
  up to the route's end (pipeline/criteria.py), None when nothing was on a collision course.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from stagepilot.pipeline.criteria import CriteriaFrame, CriteriaObserver
from stagepilot.pipeline.driver import DriveResult
from stagepilot.pipeline.metrics import NUPLAN_BOUNDS
from stagepilot.sim.events import COLLISION_MIN_SPEED, COLLISION_REPEAT_S

__all__ = ["PENALTY", "INFRACTIONS", "CollisionHit", "CriteriaObserver", "ScenarioScore", "count_collisions",
           "driving_score", "score_drive"]

PENALTY = {  # Leaderboard 2.0 coefficients, one factor per occurrence
    "collision_pedestrian": 0.50,
    "collision_vehicle": 0.60,
    "collision_static": 0.65,
    "red_light": 0.70,
    "stop_sign": 0.80,
    "timeout": 0.70,
}
ROUTE_ENDING = ("route_deviation", "blocked")  # end the route, no coefficient
INFRACTIONS = (*PENALTY, *ROUTE_ENDING)
COLLISION_RADIUS_M = 5.0  # [m] a hit this close to the last counted one is the same collision
# The Leaderboard's thresholds, shared with the simulator's event monitor (sim/events.py), which
# already applies the first two to the events it emits; they are checked again here so that
# hits from any source (another simulator, a test) follow the same rules.
MIN_SPEED_MPS = COLLISION_MIN_SPEED  # [m/s] slower: not the ego's collision; and the blocked threshold
ROUTE_DEVIATION_M = 30.0  # [m]
SUCCESS_PCT = 99.0  # [%] with SUCCESS_DISTANCE_M, RouteCompletionTest's success
SUCCESS_DISTANCE_M = 10.0  # [m]
_DETAIL_KIND = re.compile(r"collision with (vehicle|pedestrian|static)\b")


@dataclass(frozen=True)
class CollisionHit:
    """A reported collision: when, where the ego was (body centre, world), how fast, with what."""

    t: float  # [s]
    x: float  # [m]
    y: float  # [m]
    speed: float  # [m/s] ego
    other_id: int | None
    kind: str  # vehicle | pedestrian | static


@dataclass
class ScenarioScore:
    driving_score: float  # [0, 100]
    route_completion: float  # [%]
    infraction_penalty: float  # [0, 1]
    infractions: dict[str, int]  # every kind of INFRACTIONS
    outside_route_lanes_pct: float  # [%] of the route metres gained
    status: str  # completed | timeout | route_deviation | blocked | interrupted
    comfort: dict[str, Any]  # nuPlan figures, within_bounds, and bounds: {bound: holds}
    min_ttc_s: float | None  # [s]
    details: list[str] = field(default_factory=list)  # one line per infraction, in time order

    def as_dict(self) -> dict[str, Any]:
        """JSON-able (plain floats, ints, strings, None)."""
        return asdict(self)


def driving_score(route_completion: float, infractions: dict[str, int],
                  outside_route_lanes_pct: float) -> tuple[float, float]:
    """(driving score, infraction penalty): completion [%] x prod(PENALTY ** count) x
    (1 - outside_route_lanes_pct / 100). Route-ending kinds carry no coefficient."""
    unknown = sorted(set(infractions) - set(INFRACTIONS))
    if unknown:
        raise ValueError(f"unknown infraction kind {unknown[0]!r}; known: {', '.join(INFRACTIONS)}")
    if any(int(n) != n or n < 0 for n in infractions.values()):
        raise ValueError(f"infraction counts must be whole and not negative, got {infractions}")
    if not (0.0 <= route_completion <= 100.0 and 0.0 <= outside_route_lanes_pct <= 100.0):
        raise ValueError(f"percentages must lie in [0, 100]: completion {route_completion}, "
                         f"outside {outside_route_lanes_pct}")
    penalty = math.prod(PENALTY[kind] ** n for kind, n in infractions.items() if kind in PENALTY)
    penalty *= 1.0 - outside_route_lanes_pct / 100.0
    return route_completion * penalty, penalty


def count_collisions(hits: list[CollisionHit], track: list[CriteriaFrame] | None = None) -> list[CollisionHit]:
    """The hits that count, by the Leaderboard's repeat rule (module docstring). `track`, the
    ego's frames, tells whether it went further than 5 m from the last counted collision
    between two hits; without it the place is remembered until the next hit."""
    times = np.array([f.t for f in track or ()])
    xy = np.array([(f.x, f.y) for f in track or ()]).reshape(-1, 2)
    counted: list[CollisionHit] = []
    for hit in sorted(hits, key=lambda h: h.t):
        if hit.speed < MIN_SPEED_MPS:
            continue
        last = counted[-1] if counted else None
        if last is not None:
            same_actor = (hit.other_id is not None and hit.other_id == last.other_id
                          and hit.t - last.t <= COLLISION_REPEAT_S)
            between = (times > last.t) & (times < hit.t)
            left = bool(np.any(np.hypot(*(xy[between] - (last.x, last.y)).T) > COLLISION_RADIUS_M))
            near = math.hypot(hit.x - last.x, hit.y - last.y) <= COLLISION_RADIUS_M and not left
            if same_actor or near:
                continue
        counted.append(hit)
    return counted


def score_drive(result: DriveResult, criteria: CriteriaObserver, blocked_s: float = 180.0) -> ScenarioScore:
    """Score a drive that `criteria` observed. `blocked_s` [s]: standing this long ends the
    route (the Leaderboard's 180 s; suites of short scenarios lower it)."""
    frames = criteria.frames
    if not frames:
        raise ValueError("the criteria observer saw no frame: pass it to drive(..., observers=(criteria,))")
    end, end_kind, end_line = _route_end(frames, blocked_s)
    end_t = frames[end].t
    events = [e for e, _, _ in result.series.events if e.t <= end_t + 1e-9]
    status, completion = _status(result, frames, events, end, end_kind, criteria.route)
    hits = [_hit(e, frames, criteria.actor_kinds) for e in events if e.kind == "collision"]
    infractions, details = _infractions(count_collisions(hits, frames[:end + 1]), events)
    if status == "timeout":
        infractions["timeout"] = 1
        details.append((end_t, f"timeout: {completion:.1f} % of the route when the scenario's "
                               f"{result.scenario.duration_s:g} s ran out"))
    if status in ROUTE_ENDING:
        infractions[status] = 1
        details.append((end_t, end_line))
    outside_pct = _outside_pct(frames[:end + 1])
    score, penalty = driving_score(completion, infractions, outside_pct)
    ttcs = [f.ttc_s for f in frames[:end + 1] if f.ttc_s is not None]
    return ScenarioScore(
        driving_score=float(score), route_completion=float(completion), infraction_penalty=float(penalty),
        infractions=infractions, outside_route_lanes_pct=outside_pct, status=status,
        comfort=comfort_report(result.metrics.get("comfort")), min_ttc_s=float(min(ttcs)) if ttcs else None,
        details=[f"t {t:.2f} s: {line}" for t, line in sorted(details, key=lambda item: item[0])])


def _infractions(collisions: list[CollisionHit], events) -> tuple[dict[str, int], list[tuple[float, str]]]:
    """Counts of the counted collisions and red lights, every kind present, and (t, line) each."""
    infractions = dict.fromkeys(INFRACTIONS, 0)
    details = []
    for hit in collisions:
        infractions[f"collision_{hit.kind}"] += 1
        details.append((hit.t, f"collision_{hit.kind}: {hit.kind} {hit.other_id} at {hit.speed:.1f} m/s, "
                               f"({hit.x:.1f}, {hit.y:.1f})"))
    for event in (e for e in events if e.kind == "red_light"):
        infractions["red_light"] += 1
        details.append((event.t, f"red_light: {event.detail}"))
    return infractions, details


def comfort_report(figures: dict[str, Any] | None) -> dict[str, Any]:
    """metrics.json's comfort figures with the verdict of each nuPlan bound; {} without them."""
    if not figures:
        return {}
    bounds = {
        "lon_accel_min": figures["lon_accel_p5"] >= NUPLAN_BOUNDS["lon_accel_min"],
        "lon_accel_max": figures["lon_accel_p95"] <= NUPLAN_BOUNDS["lon_accel_max"],
        "lat_accel_abs": figures["lat_accel_abs_p95"] <= NUPLAN_BOUNDS["lat_accel_abs"],
        "yaw_rate_abs": figures["yaw_rate_abs_p95"] <= NUPLAN_BOUNDS["yaw_rate_abs"],
        "lon_jerk_abs": figures["lon_jerk_abs_p95"] <= NUPLAN_BOUNDS["lon_jerk_abs"],
    }
    return {**figures, "bounds": {name: bool(holds) for name, holds in bounds.items()}}


def _route_end(frames: list[CriteriaFrame], blocked_s: float) -> tuple[int, str | None, str]:
    """(frame index where the route ends, route_deviation | blocked | None, detail line):
    the first deviation or blockage, else the last frame."""
    last_moving_t = frames[0].t
    for i, f in enumerate(frames):
        if f.route_distance > ROUTE_DEVIATION_M:
            return i, "route_deviation", (f"route_deviation: {f.route_distance:.1f} m from the route "
                                          f"(over {ROUTE_DEVIATION_M:g} m); the route ends here")
        if f.speed >= MIN_SPEED_MPS:
            last_moving_t = f.t
        elif f.t - last_moving_t >= blocked_s - 1e-9:
            return i, "blocked", (f"blocked: below {MIN_SPEED_MPS:g} m/s since t {last_moving_t:.2f} s "
                                  f"({blocked_s:g} s); the route ends here")
    return len(frames) - 1, None, ""


def _status(result: DriveResult, frames: list[CriteriaFrame], events, end: int, end_kind: str | None,
            route) -> tuple[str, float]:
    """(status, route completion [%]) of the route up to frame `end`."""
    if any(e.kind == "route_completed" for e in events) or _near_goal(frames[:end + 1], route):
        return "completed", 100.0
    completion = min(100.0, 100.0 * frames[end].route_progress / route.length)
    if end_kind is not None:
        return end_kind, completion
    ran_out = frames[-1].t >= result.scenario.duration_s - result.config.sim.dt_s / 2
    if result.interrupted or result.outcome.get("error") or not ran_out:
        return "interrupted", completion
    return "timeout", completion


def _near_goal(frames: list[CriteriaFrame], route) -> bool:
    """RouteCompletionTest's success: past 99 % of the route and within 10 m of its end."""
    goal_x, goal_y = route.points[-1]
    return any(100.0 * f.route_progress / route.length > SUCCESS_PCT
               and math.hypot(f.x - goal_x, f.y - goal_y) < SUCCESS_DISTANCE_M for f in frames)


def _hit(event, frames: list[CriteriaFrame], kinds: dict[int, str]) -> CollisionHit:
    """A collision event with the ego's frame at its time and the other actor's kind."""
    i = min(int(np.searchsorted([f.t for f in frames], event.t - 1e-9)), len(frames) - 1)
    frame = frames[i]
    kind = kinds.get(event.other_id)
    if kind is None:
        match = _DETAIL_KIND.search(event.detail)
        kind = match.group(1) if match else "static"  # the Leaderboard's bin for the unnamed
    return CollisionHit(t=event.t, x=frame.x, y=frame.y, speed=frame.speed, other_id=event.other_id, kind=kind)


def _outside_pct(frames: list[CriteriaFrame]) -> float:
    """Route metres gained outside the route lanes, as a share of all gained [%]."""
    gained = np.diff([f.route_progress for f in frames]).clip(min=0.0)
    outside = np.array([bool(f.outside_lanes) for f in frames[1:]])
    total = float(gained.sum())
    return 100.0 * float(gained[outside].sum()) / total if total > 0 else 0.0

"""Random routes on any OpenDRIVE map: a scenario document (the mapping a configs/scenarios/*.yaml
file holds) whose ego route passes junctions, drawn from a seed.

The ego start and goal are lane poses (road, lane, s), as in town01_route.yaml. A start lane
and station are drawn, every lane reachable within ROUTE_MAX_M is found with one Dijkstra
search of the road graph, and a goal is drawn among the lanes whose shortest route crosses
enough junctions. The pair is kept only when the road map's own planner (`RoadMap.route`, which
the simulator builds the ego route with, from the same lane poses) confirms the route: at
least `min_junctions` junctions and ROUTE_MIN_M..ROUTE_MAX_M long. Pedestrians walk on the
sidewalk lanes beside the route or cross it from sidewalk to sidewalk.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from pydantic import Field, ValidationError

from stagepilot.core.config import ConfigError, Strict
from stagepilot.core.config_base import MAX_SEED
from stagepilot.core.config_load import format_validation_error
from stagepilot.core.lanes import LanePoint, RoutePath
from stagepilot.core.maps import is_map_name
from stagepilot.core.paths import Polyline
from stagepilot.core.roadmap import MapError, RoadMap
from stagepilot.sim.scenario import MapText, Scenario, WeatherSpec, resolve_map
from stagepilot.sim.world import load_road_map

SOURCE = "random_routes"  # how errors name the generator
ROUTE_MIN_M, ROUTE_MAX_M = 150.0, 400.0  # [m] ego route length
END_MARGIN_M = 5.0  # [m] start and goal stay this far from their lane's ends (junction edges)
MAX_STARTS = 60  # start lanes tried before the map is declared to have no such route
GOALS_PER_START = 4
DEFAULT_SPEED_LIMIT = 8.3  # [m/s] urban (30 km/h), as the town routes use
SLACK_S = 20.0  # [s] added to the route's time at half the speed limit
JUNCTION_WAIT_S = 20.0  # [s] more per junction on the route: a full red phase (green 12 s + yellow 3 s + all-red)
MAX_PEDESTRIANS = 50
PEDESTRIAN_SPAN_M = (30.0, 25.0)  # [m] pedestrians stay this far from the route's start and end
CROSSING_SHARE = 0.4  # of pedestrians that cross the route; the others walk along it
MAX_CROSSING_M = 30.0  # [m] a longer sidewalk-to-sidewalk walk is not a street crossing
SIDEWALK_SCAN_M = (0.5, 20.0, 0.25)  # [m] lateral offsets searched for a sidewalk: from, to, step
TRIES_PER_PEDESTRIAN = 30

Preset = WeatherSpec.model_fields["preset"].annotation


class RandomRoutesParams(Strict):
    """The generator's parameters, e.g. {map: Town01, seed: 3, vehicles: 10, pedestrians: 4}."""

    map: MapText  # a map name on the search path (`Town01`) or a path to an .xodr file
    seed: int = Field(0, ge=0, le=MAX_SEED)
    vehicles: int = Field(0, ge=0, le=200)  # NPCs on random lanes (`random_vehicles`)
    pedestrians: int = Field(0, ge=0, le=MAX_PEDESTRIANS)  # on the sidewalks near the route
    weather: Preset = "random"
    speed_limit: float = Field(DEFAULT_SPEED_LIMIT, gt=0.0, le=60.0)  # [m/s]
    min_junctions: int = Field(2, ge=1, le=10)  # junctions the route must pass
    name: str | None = Field(None, min_length=1, max_length=200)  # default: random_routes_<map>_<seed>


def random_routes_scenario(params: dict[str, Any], maps_dirs: Iterable[str | Path] = ()) -> dict[str, Any]:
    """A scenario document for a random route on `params["map"]`, the same for the same params.

    `maps_dirs` come first on the map search path (`--maps`). The document names the map as
    given when it is a name, or by its absolute path. ConfigError for bad params, a map that
    cannot be found or read, or one without a route through `min_junctions` junctions."""
    p = _validated(params)
    map_path = _map_path(p.map, maps_dirs)
    where = f"{SOURCE}: map {p.map}" + ("" if is_map_name(p.map) or p.map == str(map_path) else f" ({map_path})")
    try:
        road_map = load_road_map(str(map_path))
    except MapError as exc:
        raise ConfigError(f"{SOURCE}: {exc}") from None
    rng = np.random.default_rng(p.seed)
    start, goal, route = pick_route(road_map, rng, p.min_junctions, where)
    actors = place_pedestrians(road_map, str(map_path), route.path, rng, p.pedestrians, where)
    length = route.path.length
    doc = {
        "name": p.name or f"{SOURCE}_{map_path.stem}_{p.seed}",
        "description": (f"A random route on {map_path.stem} through {_count(len(route.junction_ids), 'junction')} "
                        f"({length:.0f} m), seed {p.seed}."),
        "map": p.map if is_map_name(p.map) else str(map_path),
        "seed": p.seed,
        "duration_s": float(math.ceil(length / (0.5 * p.speed_limit) + SLACK_S
                                      + JUNCTION_WAIT_S * len(route.junction_ids))),
        "speed_limit": p.speed_limit,
        "ego": {"start": _lane_pose(start), "goal": _lane_pose(goal)},
        "actors": actors,
        "random_vehicles": p.vehicles,
        "weather": {"preset": p.weather},
    }
    _validated(doc, Scenario)
    return doc


def _validated(data: dict[str, Any], model=RandomRoutesParams):
    if not isinstance(data, dict):
        raise ConfigError(f"{SOURCE}: params must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, lambda _path: SOURCE, data)) from None


def _map_path(text: str, maps_dirs: Iterable[str | Path]) -> Path:
    try:
        return resolve_map(text, Path(SOURCE), maps_dirs)
    except MapError as exc:
        raise ConfigError(str(exc)) from None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _lane_pose(point: LanePoint) -> dict[str, Any]:
    return {"road": point.road_id, "lane": point.lane_id, "s": round(point.s, 1)}


# ---------------------------------------------------------------- the route


def pick_route(road_map: RoadMap, rng: np.random.Generator, min_junctions: int,
               where: str) -> tuple[LanePoint, LanePoint, RoutePath]:
    """Start and goal lane points, and the route the road map plans between them, crossing at
    least `min_junctions` junctions and ROUTE_MIN_M..ROUTE_MAX_M long."""
    if not any(seg.is_junction for seg in road_map.segments.values()):
        raise ConfigError(f"{where}: the map has no junction; a random route must pass {min_junctions}")
    starts = _open_lanes(road_map)
    for index in rng.permutation(len(starts))[:MAX_STARTS]:
        key = starts[int(index)]
        s_start = float(rng.uniform(END_MARGIN_M, road_map.segments[key].path.length - END_MARGIN_M))
        start = _snapped(road_map, key, s_start)
        goals = [] if start is None else _goal_lanes(road_map, key, s_start, min_junctions, set(starts))
        for goal_key, arc_m in _drawn_goals(goals, rng):
            goal = _snapped(road_map, goal_key, arc_m)
            route = None if goal is None else _planned(road_map, start, goal)
            if route is not None and _acceptable(route, min_junctions):
                return start, goal, route
    raise ConfigError(f"{where}: no route of {ROUTE_MIN_M:.0f}-{ROUTE_MAX_M:.0f} m passes through "
                      f"{min_junctions} junctions (tried {min(MAX_STARTS, len(starts))} start lanes)")


def _acceptable(route: RoutePath, min_junctions: int) -> bool:
    return len(route.junction_ids) >= min_junctions and ROUTE_MIN_M <= route.path.length <= ROUTE_MAX_M


def _open_lanes(road_map: RoadMap) -> list[tuple[int, int, int]]:
    """Lanes outside junctions long enough to start or end a route on, in a stable order."""
    return sorted(k for k, seg in road_map.segments.items()
                  if not seg.is_junction and seg.path.length > 2 * END_MARGIN_M + 1.0)


def _drawn_goals(goals: list[tuple[Any, float, float, float]], rng: np.random.Generator) -> list[tuple[Any, float]]:
    """Up to GOALS_PER_START (goal lane, station on it [m]): each for a route length drawn
    uniformly between the bounds, so that short routes are as likely as long ones (far lanes
    outnumber near ones)."""
    drawn = []
    for _ in range(GOALS_PER_START if goals else 0):
        target = float(rng.uniform(ROUTE_MIN_M, ROUTE_MAX_M))
        fits = [g for g in goals if g[1] <= target - g[3] <= g[2]] or goals
        goal_key, lo, hi, to_lane = fits[int(rng.integers(len(fits)))]
        drawn.append((goal_key, float(np.clip(target - to_lane, lo, hi))))
    return drawn


def _goal_lanes(road_map: RoadMap, key, s_start: float, min_junctions: int,
                open_lanes: set) -> list[tuple[Any, float, float, float]]:
    """(goal lane, lowest and highest station on it, route length to its first point) for every
    open lane whose shortest route from `key` at `s_start` crosses `min_junctions` junctions and
    can end within the length bounds."""
    # An edge weighs the length of the lane it leaves (or a lane change's cost), as in routing.
    before, paths = nx.single_source_dijkstra(road_map.graph, key, cutoff=ROUTE_MAX_M + s_start, weight="weight")
    goals = []
    for goal_key in sorted(paths):
        if goal_key == key or goal_key not in open_lanes or _junctions(road_map, paths[goal_key]) < min_junctions:
            continue
        to_lane = before[goal_key] - s_start  # [m] from the start to the goal lane's first point
        lo = max(END_MARGIN_M, ROUTE_MIN_M - to_lane)
        hi = min(road_map.segments[goal_key].path.length - END_MARGIN_M, ROUTE_MAX_M - to_lane)
        if lo < hi:
            goals.append((goal_key, lo, hi, to_lane))
    return goals


def _junctions(road_map: RoadMap, keys) -> int:
    """Junctions crossed along lane keys, counted as RoadMap.route counts them."""
    crossed: list[int] = []
    for k in keys:
        j = road_map.segments[k].junction_id
        if j >= 0 and (not crossed or crossed[-1] != j):
            crossed.append(j)
    return len(crossed)


def _snapped(road_map: RoadMap, key, arc_m: float) -> LanePoint | None:
    """The lane point at `arc_m` along lane `key`, at an OpenDRIVE s rounded to 0.1 m, as the
    simulator resolves {road, lane, s}; None when that lands on another lane."""
    x, y, _ = road_map.segments[key].path.interpolate(arc_m)
    near = road_map.waypoint(float(x), float(y))
    if near is None or near.key != key:
        return None
    point = road_map.lane_at(near.road_id, near.lane_id, round(near.s, 1))
    return point if point is not None and point.key == key else None


def _planned(road_map: RoadMap, start: LanePoint, goal: LanePoint) -> RoutePath | None:
    try:
        return road_map.route([(start.x, start.y), (goal.x, goal.y)])
    except MapError:
        return None


# ---------------------------------------------------------------- pedestrians


class Sidewalks:
    """The sidewalk quads of a road map (from its lane surfaces), for point-in-sidewalk tests."""

    def __init__(self, road_map: RoadMap):
        quads = [s.polygon for s in road_map.surfaces() if s.lane_type == "Sidewalk"]
        self.quads = np.array(quads, dtype=np.float64).reshape(-1, 4, 2)  # (M, 4, 2) world [m]
        self.centres = self.quads.mean(axis=1)  # (M, 2)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N,) whether each point (N, 2) lies on a sidewalk quad (convex, either winding)."""
        reach = np.hypot(*(points.mean(axis=0) - self.centres).T) < np.ptp(points, axis=0).max() + 10.0
        quads = self.quads[reach]  # (K, 4, 2)
        if len(quads) == 0:
            return np.zeros(len(points), dtype=bool)
        edges = np.roll(quads, -1, axis=1) - quads  # (K, 4, 2)
        rel = points[:, None, None, :] - quads[None]  # (N, K, 4, 2)
        cross = edges[None, ..., 0] * rel[..., 1] - edges[None, ..., 1] * rel[..., 0]  # (N, K, 4)
        inside = np.all(cross >= 0, axis=2) | np.all(cross <= 0, axis=2)
        return inside.any(axis=1)

    def offset(self, x: float, y: float, yaw: float, side: int) -> float | None:
        """The lateral offset [m] (positive left) of the middle of the first sidewalk on `side`
        (+1 left, -1 right) of the pose, or None when there is none within reach."""
        d = side * np.arange(*SIDEWALK_SCAN_M)
        points = np.stack([x - np.sin(yaw) * d, y + np.cos(yaw) * d], axis=1)
        inside = self.contains(points)
        if not inside.any():
            return None
        first = int(np.argmax(inside))
        run = first + int(np.argmin(inside[first:])) if not inside[first:].all() else len(inside)
        return float(d[first:run].mean())


@lru_cache(maxsize=4)
def _sidewalks(map_path: str) -> Sidewalks:
    return Sidewalks(load_road_map(map_path))


def place_pedestrians(road_map: RoadMap, map_path: str, route: Polyline, rng: np.random.Generator,
                      count: int, where: str) -> list[dict[str, Any]]:
    """`count` pedestrian actors on the sidewalks beside `route`: some cross it in front of the
    ego (starting when the ego comes near), the others walk along it."""
    if count == 0:
        return []
    sidewalks = _sidewalks(map_path)
    first, last = PEDESTRIAN_SPAN_M[0], route.length - PEDESTRIAN_SPAN_M[1]
    actors: list[dict[str, Any]] = []
    for _ in range(count * TRIES_PER_PEDESTRIAN):
        if len(actors) == count:
            break
        s = float(rng.uniform(first, last))
        crossing = rng.random() < CROSSING_SHARE
        actor = _crossing(road_map, sidewalks, route, s, rng) if crossing else _walker(sidewalks, route, s, rng)
        if actor is not None:
            actors.append(actor)
    if len(actors) < count:
        raise ConfigError(f"{where}: found sidewalks for {len(actors)} of {count} pedestrians near the route")
    return actors


def _beside(route: Polyline, s: float, offset: float) -> dict[str, float]:
    x, y, yaw = (float(v) for v in route.interpolate(s))
    return {"x": round(x - math.sin(yaw) * offset, 2), "y": round(y + math.cos(yaw) * offset, 2)}


def _crossing(road_map: RoadMap, sidewalks: Sidewalks, route: Polyline, s: float,
              rng: np.random.Generator) -> dict[str, Any] | None:
    """From the sidewalk on one side of the route at `s` to the one on the other side."""
    x, y, yaw = (float(v) for v in route.interpolate(s))
    lane = road_map.waypoint(x, y)
    right, left = sidewalks.offset(x, y, yaw, -1), sidewalks.offset(x, y, yaw, +1)
    flip, speed, trigger = rng.random() < 0.5, rng.uniform(0.9, 1.6), rng.uniform(25.0, 45.0)
    if lane is None or lane.is_junction or right is None or left is None or left - right > MAX_CROSSING_M:
        return None
    path = [_beside(route, s, right), _beside(route, s, left)]
    return {"type": "pedestrian", "path": path[::-1] if flip else path,
            "speed": round(float(speed), 2), "ego_within_m": round(float(trigger), 1)}


def _walker(sidewalks: Sidewalks, route: Polyline, s: float, rng: np.random.Generator) -> dict[str, Any] | None:
    """Along the sidewalk on one side of the route, over 15-40 m from `s`."""
    side, length = (-1 if rng.random() < 0.5 else 1), rng.uniform(15.0, 40.0)
    flip, speed, start_t = rng.random() < 0.5, rng.uniform(0.8, 1.6), rng.uniform(0.0, 3.0)
    stations = s + np.linspace(0.0, float(length), 4)
    path = []
    for station in stations:
        x, y, yaw = (float(v) for v in route.interpolate(station))
        offset = sidewalks.offset(x, y, yaw, side)
        if offset is None or station > route.length:
            return None
        path.append(_beside(route, float(station), offset))
    gaps = [math.dist((a["x"], a["y"]), (b["x"], b["y"])) for a, b in zip(path[:-1], path[1:])]
    if max(gaps) > 2.0 * (stations[1] - stations[0]):  # jumped to another street's sidewalk
        return None
    return {"type": "pedestrian", "path": path[::-1] if flip else path,
            "speed": round(float(speed), 2), "start_t": round(float(start_t), 1)}

"""Scenario files: map, ego start and route, actors with behaviours, weather, duration, seed.

Validated like the stack config: an unknown key or actor type names the file and key path.
Positions are given in one of three ways:
  {x, y, yaw_deg}          world frame (OpenDRIVE inertial) [m], [deg]
  {road, lane, s}          OpenDRIVE lane coordinates; yaw follows the lane
  {route_s, offset}        along the ego route [m], lateral offset positive left [m]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, Field, model_validator

from stagepilot.core.config import CONFIG_ROOT, Strict
from stagepilot.core.config_base import (MAX_ACCEL_MPS2, MAX_DELAY_S, MAX_DISTANCE_M, MAX_DURATION_S, MAX_SEED,
                                         MAX_SPEED_MPS)
from stagepilot.core.config_load import load_config
from stagepilot.core.inputs import MAX_PATH_CHARS, clip, named_yaml
from stagepilot.core.maps import SUFFIX, find_map, is_map_name, read_map_text
from stagepilot.core.roadmap import MapError

SCENARIO_DIR = CONFIG_ROOT / "scenarios"
MIN_LEG_M = 0.1  # [m] route poses closer than this (in the same form) make a zero-length route leg

Coordinate = Annotated[float, Field(ge=-MAX_DISTANCE_M, le=MAX_DISTANCE_M)]  # [m] world frame
Station = Annotated[float, Field(ge=0.0, le=MAX_DISTANCE_M)]  # [m] along a lane or the route
Channel = Annotated[int, Field(ge=0, le=255)]  # colour channel


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("a map name or path has no control characters or line breaks")
    return text


MapText = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS), AfterValidator(_printable)]


class Pose(Strict):
    x: Coordinate | None = None
    y: Coordinate | None = None
    yaw_deg: float | None = Field(None, ge=-360.0, le=360.0)
    road: int | None = Field(None, ge=0, le=2**31 - 1)  # OpenDRIVE road id
    lane: int | None = Field(None, ge=-100, le=100)  # OpenDRIVE lane id
    s: Station | None = None
    route_s: Station | None = None
    offset: float = Field(0.0, ge=-100.0, le=100.0)  # [m] lateral, positive left; for lane and route poses

    @model_validator(mode="after")
    def _one_form(self) -> "Pose":
        forms = {
            "x/y": self.x is not None or self.y is not None,
            "road/lane/s": self.road is not None or self.lane is not None or self.s is not None,
            "route_s": self.route_s is not None,
        }
        chosen = [name for name, used in forms.items() if used]
        if len(chosen) != 1:
            raise ValueError("give exactly one of {x, y[, yaw_deg]}, {road, lane, s} or {route_s[, offset]}")
        if chosen == ["x/y"] and (self.x is None or self.y is None):
            raise ValueError("a world pose needs both x and y")
        if chosen == ["road/lane/s"] and None in (self.road, self.lane, self.s):
            raise ValueError("a lane pose needs road, lane and s")
        return self


class Behaviour(Strict):
    """A scripted action, triggered at a sim time or when the ego comes within a distance."""

    action: Literal["brake", "stop", "go", "cut_in", "set_speed"]
    at_t: float | None = Field(None, ge=0.0, le=MAX_DURATION_S)  # [s]
    ego_within_m: float | None = Field(None, gt=0.0, le=MAX_DISTANCE_M)
    decel: float = Field(6.0, gt=0.0, le=MAX_ACCEL_MPS2)  # [m/s^2] for brake
    speed: float | None = Field(None, ge=0.0, le=MAX_SPEED_MPS)  # [m/s] for set_speed
    side: Literal["left", "right"] = "left"  # for cut_in: the lane it moves into
    duration_s: float = Field(3.0, gt=0.0, le=MAX_DELAY_S)  # for cut_in: lateral move time

    @model_validator(mode="after")
    def _trigger(self) -> "Behaviour":
        if (self.at_t is None) == (self.ego_within_m is None):
            raise ValueError("give exactly one trigger: at_t or ego_within_m")
        if self.action == "set_speed" and self.speed is None:
            raise ValueError("set_speed needs speed")
        return self


class VehicleActor(Strict):
    type: Literal["vehicle"]
    start: Pose
    speed: float = Field(8.0, ge=0.0, le=MAX_SPEED_MPS)  # [m/s] desired
    initial_speed: float | None = Field(None, ge=0.0, le=MAX_SPEED_MPS)  # [m/s], default: desired speed
    goal: Pose | None = None  # default: random turns at junctions, from the seed
    behaviours: list[Behaviour] = []
    color_rgb: tuple[Channel, Channel, Channel] | None = None
    obey_traffic_lights: bool = True


class PedestrianActor(Strict):
    type: Literal["pedestrian"]
    path: list[Pose] = Field(min_length=2)
    speed: float = Field(1.4, gt=0.0, le=5.0)  # [m/s]
    start_t: float | None = Field(None, ge=0.0, le=MAX_DURATION_S)  # [s]
    ego_within_m: float | None = Field(None, gt=0.0, le=MAX_DISTANCE_M)  # start when the ego is this close
    # On CARLA, "ai" walks to the path's last point on the server's navigation mesh (a walker AI
    # controller); "path" (and every walker on the embedded simulator) walks the path's straight legs.
    controller: Literal["path", "ai"] = "path"


class StaticActor(Strict):
    type: Literal["static"]
    kind: Literal["parked_car", "parked_truck", "cone", "barrier"]
    pose: Pose
    color_rgb: tuple[Channel, Channel, Channel] | None = None


Actor = Annotated[Union[VehicleActor, PedestrianActor, StaticActor], Field(discriminator="type")]


class EgoSpec(Strict):
    start: Pose
    goal: Pose | None = None
    waypoints: list[Pose] = []  # visited in order before the goal
    initial_speed: float = Field(0.0, ge=0.0, le=MAX_SPEED_MPS)  # [m/s]

    @model_validator(mode="after")
    def _has_route(self) -> "EgoSpec":
        if self.goal is None and not self.waypoints:
            raise ValueError("the ego needs a goal or waypoints")
        for pose in [self.start, self.goal, *self.waypoints]:
            if pose is not None and pose.route_s is not None:
                raise ValueError("ego poses cannot be given along the route they define")
        keys = ["ego.start", *(f"ego.waypoints.{i}" for i in range(len(self.waypoints)))]
        poses = [self.start, *self.waypoints]
        if self.goal is not None:
            keys.append("ego.goal")
            poses.append(self.goal)
        for (key_a, a), (key_b, b) in zip(zip(keys, poses), zip(keys[1:], poses[1:])):
            if _same_place(a, b):
                raise ValueError(f"{key_b} is at {key_a}: a zero-length route")
        return self


def _same_place(a: Pose, b: Pose) -> bool:
    """Whether two poses given in the same form name one place (within MIN_LEG_M)."""
    if a.x is not None and b.x is not None:
        return math.hypot(a.x - b.x, a.y - b.y) < MIN_LEG_M
    if a.road is not None and (a.road, a.lane) == (b.road, b.lane):
        return abs(a.s - b.s) < MIN_LEG_M
    return False


class WeatherSpec(Strict):
    preset: Literal["random", "clear_noon", "overcast", "dusk", "fog", "night"] = "random"
    sun_altitude_deg: float | None = Field(None, ge=-10.0, le=90.0)
    fog_density: float | None = Field(None, ge=0.0, le=0.2)  # [1/m]
    brightness: float | None = Field(None, gt=0.0, le=3.0)
    noise_std: float | None = Field(None, ge=0.0, le=50.0)  # [pixel levels]


class TrafficLightSpec(Strict):
    enabled: bool = True
    first_light: Literal["auto", "red", "yellow", "green"] = "auto"  # on the ego route
    first_light_remaining_s: float | None = Field(None, gt=0.0, le=MAX_DURATION_S)  # time left in that state


class Scenario(Strict):
    name: str
    description: str = ""
    map: MapText
    seed: int = Field(0, ge=0, le=MAX_SEED)
    duration_s: float = Field(60.0, gt=0.0, le=MAX_DURATION_S)
    speed_limit: float = Field(13.9, gt=0.0, le=60.0)  # [m/s]
    ego: EgoSpec
    actors: list[Actor] = []
    random_vehicles: int = Field(0, ge=0, le=200)  # NPCs on random lanes, from the seed
    weather: WeatherSpec = WeatherSpec()
    traffic_lights: TrafficLightSpec = TrafficLightSpec()

    # Set by load_scenario: where the file came from and the resolved map path.
    source: str = "<memory>"
    map_path: str = ""


def scenario_path(name_or_path: str | Path) -> Path:
    """A name from configs/scenarios/ or a path to a YAML file."""
    return named_yaml(name_or_path, SCENARIO_DIR, "scenario", "scenario file")


def resolve_map(text: str, scenario_file: Path, maps_dirs: Iterable[str | Path] = ()) -> Path:
    """A map name (`Town01`) on the map search path (core/maps.py; `maps_dirs` first), or a
    path to an .xodr file, relative to the scenario file or the working directory."""
    try:
        if is_map_name(text):
            return find_map(text, maps_dirs)
        path = Path(text)
        for candidate in [path] if path.is_absolute() else [scenario_file.parent / path, Path.cwd() / path]:
            if candidate.is_file():
                return candidate.resolve()
        if len(path.parts) == 1 and path.suffix == SUFFIX:  # `town.xodr`: also the search path
            return find_map(path.stem, maps_dirs)
    except MapError as exc:
        raise MapError(f"{scenario_file}: {exc}") from None
    except OSError as exc:  # e.g. a name too long to be a file
        raise MapError(f"{scenario_file}: map {clip(text)}: {exc.strerror or exc}") from None
    raise MapError(f"{scenario_file}: map {clip(text)} not found: no such file relative to the scenario "
                   f"({scenario_file.parent}) or the working directory ({Path.cwd()})")


def load_scenario(name_or_path: str | Path, overrides: list[str] | None = None,
                  maps_dirs: Iterable[str | Path] = (), server_maps: bool = False) -> Scenario:
    """A scenario by name or path, with `key.path=value` overrides; its map is looked up with
    the `--maps` folders `maps_dirs` first. With `server_maps` (a CARLA server will drive it), a
    town name that is not on the map search path is left to the server: `map_path` is empty."""
    path = scenario_path(name_or_path)
    scenario = load_config(Scenario, [path], overrides)
    try:
        map_path = resolve_map(scenario.map, path, maps_dirs)
    except MapError:
        if server_maps and is_map_name(scenario.map):
            return scenario.model_copy(update={"source": str(path), "map_path": ""})
        raise
    try:
        read_map_text(map_path)  # bounded, UTF-8 and not empty, before the simulator parses it
    except MapError as exc:
        raise MapError(f"{path}: map: {exc}") from None
    return scenario.model_copy(update={"source": str(path), "map_path": str(map_path)})

"""Scenario files: map, ego start and route, actors with behaviours, weather, duration, seed.

Validated like the stack config: an unknown key or actor type names the file and key path.
Positions are given in one of three ways:
  {x, y, yaw_deg}          world frame (OpenDRIVE inertial) [m], [deg]
  {road, lane, s}          OpenDRIVE lane coordinates; yaw follows the lane
  {route_s, offset}        along the ego route [m], lateral offset positive left [m]
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from stagepilot.core.config import CONFIG_ROOT, ConfigError, Strict
from stagepilot.core.config_load import load_config
from stagepilot.core.maps import SUFFIX, find_map, is_map_name
from stagepilot.core.roadmap import MapError

SCENARIO_DIR = CONFIG_ROOT / "scenarios"


class Pose(Strict):
    x: float | None = None
    y: float | None = None
    yaw_deg: float | None = None
    road: int | None = None
    lane: int | None = None
    s: float | None = Field(None, ge=0.0)
    route_s: float | None = Field(None, ge=0.0)
    offset: float = 0.0  # [m] lateral, positive left; for lane and route poses

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
    at_t: float | None = Field(None, ge=0.0)  # [s]
    ego_within_m: float | None = Field(None, gt=0.0)
    decel: float = Field(6.0, gt=0.0)  # [m/s^2] for brake
    speed: float | None = Field(None, ge=0.0)  # [m/s] for set_speed
    side: Literal["left", "right"] = "left"  # for cut_in: the lane it moves into
    duration_s: float = Field(3.0, gt=0.0)  # for cut_in: lateral move time

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
    speed: float = Field(8.0, ge=0.0)  # [m/s] desired
    initial_speed: float | None = Field(None, ge=0.0)  # [m/s], default: desired speed
    goal: Pose | None = None  # default: random turns at junctions, from the seed
    behaviours: list[Behaviour] = []
    color_rgb: tuple[int, int, int] | None = None
    obey_traffic_lights: bool = True


class PedestrianActor(Strict):
    type: Literal["pedestrian"]
    path: list[Pose] = Field(min_length=2)
    speed: float = Field(1.4, gt=0.0, le=5.0)  # [m/s]
    start_t: float | None = Field(None, ge=0.0)  # [s]
    ego_within_m: float | None = Field(None, gt=0.0)  # start when the ego is this close


class StaticActor(Strict):
    type: Literal["static"]
    kind: Literal["parked_car", "cone", "barrier"]
    pose: Pose
    color_rgb: tuple[int, int, int] | None = None


Actor = Annotated[Union[VehicleActor, PedestrianActor, StaticActor], Field(discriminator="type")]


class EgoSpec(Strict):
    start: Pose
    goal: Pose | None = None
    waypoints: list[Pose] = []  # visited in order before the goal
    initial_speed: float = Field(0.0, ge=0.0)  # [m/s]

    @model_validator(mode="after")
    def _has_route(self) -> "EgoSpec":
        if self.goal is None and not self.waypoints:
            raise ValueError("the ego needs a goal or waypoints")
        for pose in [self.start, self.goal, *self.waypoints]:
            if pose is not None and pose.route_s is not None:
                raise ValueError("ego poses cannot be given along the route they define")
        return self


class WeatherSpec(Strict):
    preset: Literal["random", "clear_noon", "overcast", "dusk", "fog", "night"] = "random"
    sun_altitude_deg: float | None = Field(None, ge=-10.0, le=90.0)
    fog_density: float | None = Field(None, ge=0.0, le=0.2)  # [1/m]
    brightness: float | None = Field(None, gt=0.0, le=3.0)
    noise_std: float | None = Field(None, ge=0.0, le=50.0)  # [pixel levels]


class TrafficLightSpec(Strict):
    enabled: bool = True
    first_light: Literal["auto", "red", "yellow", "green"] = "auto"  # on the ego route
    first_light_remaining_s: float | None = Field(None, gt=0.0)  # time left in that state


class Scenario(Strict):
    name: str
    description: str = ""
    map: str
    seed: int = Field(0, ge=0)
    duration_s: float = Field(60.0, gt=0.0)
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
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"{path}: scenario file not found")
        return path
    candidate = SCENARIO_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
        raise ConfigError(f"{name_or_path}: no such scenario (known: {known})")
    return candidate


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
    raise MapError(f"{scenario_file}: map {text} not found: no such file relative to the scenario "
                   f"({scenario_file.parent}) or the working directory ({Path.cwd()})")


def load_scenario(name_or_path: str | Path, overrides: list[str] | None = None,
                  maps_dirs: Iterable[str | Path] = ()) -> Scenario:
    """A scenario by name or path, with `key.path=value` overrides; its map is looked up with
    the `--maps` folders `maps_dirs` first."""
    path = scenario_path(name_or_path)
    scenario = load_config(Scenario, [path], overrides)
    map_path = resolve_map(scenario.map, path, maps_dirs)
    return scenario.model_copy(update={"source": str(path), "map_path": str(map_path)})

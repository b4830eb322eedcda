"""The map search path: a scenario's `map: Town01` names the file `Town01.xodr`, found in order in

  1. the folders given with `--maps DIR` on the command line (repeatable),
  2. the folders in the STAGEPILOT_MAPS environment variable (separated by os.pathsep, ':' on Linux),
  3. the project's own maps (configs/maps, installed with the package),
  4. $CARLA_ROOT/CarlaUE4/Content/Carla/Maps/OpenDrive, where a packaged CARLA 0.9.x keeps its towns.

The environment is read here, at the lookup (or by a caller that passes its own mapping), and
nowhere deeper. A map that is not found is a MapError naming the map and every place looked in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from stagepilot.core.config import CONFIG_ROOT
from stagepilot.core.inputs import MAX_MAP_BYTES, clip, read_text
from stagepilot.core.roadmap import MapError

MAPS_ENV = "STAGEPILOT_MAPS"
CARLA_ROOT_ENV = "CARLA_ROOT"
PROJECT_MAPS = CONFIG_ROOT / "maps"
CARLA_OPENDRIVE = Path("CarlaUE4", "Content", "Carla", "Maps", "OpenDrive")  # under $CARLA_ROOT
SUFFIX = ".xodr"


@dataclass(frozen=True)
class MapPlace:
    """One folder on the search path and where it came from; `folder` is None when unset."""

    origin: str  # "--maps", "STAGEPILOT_MAPS", "the project's maps", "$CARLA_ROOT"
    folder: Path | None

    def describe(self) -> str:
        if self.folder is None:
            return f"{self.origin} (not set)"
        return f"{self.origin} {self.folder}" + ("" if self.folder.is_dir() else " (no such folder)")


def map_search_path(extra_dirs: Iterable[str | Path] = (),
                    environ: Mapping[str, str] | None = None) -> list[MapPlace]:
    """The places searched, in order; `environ` defaults to os.environ."""
    env = os.environ if environ is None else environ
    places = [MapPlace("--maps", Path(folder)) for folder in extra_dirs]
    listed = [folder for folder in env.get(MAPS_ENV, "").split(os.pathsep) if folder]
    places += [MapPlace(MAPS_ENV, Path(folder)) for folder in listed] or [MapPlace(MAPS_ENV, None)]
    places.append(MapPlace("the project's maps", PROJECT_MAPS))
    carla_root = env.get(CARLA_ROOT_ENV)
    places.append(MapPlace(f"${CARLA_ROOT_ENV}", Path(carla_root) / CARLA_OPENDRIVE if carla_root else None))
    return places


def is_map_name(text: str) -> bool:
    """Whether a scenario's `map:` names a map (`Town01`) rather than giving a path to a file."""
    path = Path(text)
    return len(path.parts) == 1 and not path.is_absolute() and path.suffix != SUFFIX


def find_map(name: str, extra_dirs: Iterable[str | Path] = (),
             environ: Mapping[str, str] | None = None) -> Path:
    """The resolved path of map `name` (`Town01`) on the search path; MapError when absent."""
    if not is_map_name(name):
        raise MapError(f"map {clip(name)}: a map name has no folder and no {SUFFIX} suffix (a path names a file)")
    places = map_search_path(extra_dirs, environ)
    file_name = name + SUFFIX
    for place in places:
        if place.folder is not None and (place.folder / file_name).is_file():
            return (place.folder / file_name).resolve()
    raise MapError(f"map {clip(name)} not found: no {clip(file_name)} in " + ", ".join(p.describe() for p in places))


def read_map_text(path: str | Path) -> str:
    """The text of an OpenDRIVE file through the bounded UTF-8 reader (core/inputs.py);
    MapError naming the file when it is missing, too large, not UTF-8 or empty."""
    return read_text(path, error=MapError, kind="map file", max_bytes=MAX_MAP_BYTES)

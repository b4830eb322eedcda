"""`stagepilot collect`: render a perception dataset from the embedded simulator.

Each scene is a scenario sampled from a seed: a map, an ego route from a random lane
position, background traffic (the simulator's `random_vehicles` on maps without dead ends,
goal-routed NPCs elsewhere), NPC cars ahead and oncoming, pedestrians crossing and walking
along the road, parked cars, cones and barriers, and a weather preset. The ego drives it with
the reference follower; after a random warm-up, every `interval_s` one frame of the `front`
camera is written (`perception/dataset.py` holds the file layout).

Training scenes use the project maps (configs/maps) and even scene seeds; validation scenes
use CARLA's Town02 (../shared/maps, never seen in training) and odd seeds, so no (map, seed)
pair, and no seed, is shared. Everything comes from `--seed`: the same command writes the
same bytes, whatever the number of workers.
"""

from __future__ import annotations

import math
import shlex
import subprocess
import sys
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stagepilot import __version__
from stagepilot.perception import dataset
from stagepilot.core.config import ConfigError, StackConfig
from stagepilot.core.roadmap import MapError, RoadMap
from stagepilot.sim.follower import make_follower
from stagepilot.sim.render.camera import CameraSpec
from stagepilot.sim.render.renderer import OUTLINE_MARGIN_PX
from stagepilot.sim.scenario import MAP_DIR, Scenario
from stagepilot.sim.world import EmbeddedSimulator, load_road_map

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MAPS = REPO_ROOT.parent / "shared" / "maps"
TRAIN_MAPS = ("straight", "curvy", "junction", "town")  # the project's own maps (sim/maps)
# CARLA's Town01 trains too when ../shared/maps holds it: without a real town the network learned
# the project maps' road markings and kerbs and lost half its road-line IoU on Town02.
TRAIN_TOWN = SHARED_MAPS / "Town01.xodr"
# scene share per training map: junctions and the towns hold lights and crossings
TRAIN_MAP_WEIGHTS = {"straight": 1.0, "curvy": 1.0, "junction": 1.5, "town": 2.0, "Town01": 4.0}
VAL_MAP = SHARED_MAPS / "Town02.xodr"
SPLITS = ("train", "val")
SEED_STRIDE = 1_000_000  # scene seeds of one --seed: 2 * (seed * SEED_STRIDE + scene) + split
CAMERA = "front"
MAX_ATTEMPTS = 5  # layouts tried per scene when one cannot be placed
ROUTE_MIN_M = 120.0  # [m] shortest ego route
ROUTE_TARGET_M = 300.0
ACTOR_RANGE_M = (12.0, 130.0)  # [m] along the route from the ego start
MAX_WARMUP_S = 3.0
# Drawn like the simulator's `preset: random` (clear twice as often), but named in the manifest.
WEATHER_PRESETS = ("clear_noon", "clear_noon", "overcast", "dusk", "fog", "night")


@dataclass(frozen=True)
class SceneJob:
    """One scene to render: which map and seed, and where its frames go."""

    split: str
    index: int
    seed: int  # the scenario seed: weather, colours, random traffic, scenery, layout
    map_name: str
    map_path: str
    first_image_id: int
    frames: int
    interval_s: float
    out: Path
    config: StackConfig
    image_format: str
    depth: bool


@dataclass(frozen=True)
class SceneResult:
    scene: dict[str, Any]  # for the manifest: seed, map, scenario parameters, frames
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]


# ---------------------------------------------------------------- planning the splits


def scene_seed(seed: int, split: str, index: int) -> int:
    """Training seeds are even, validation seeds odd: the splits never share a seed."""
    return 2 * (seed * SEED_STRIDE + index) + SPLITS.index(split)


def split_maps(split: str) -> tuple[list[tuple[str, str]], str | None]:
    """(map name, path) pairs of a split, and a note when a CARLA town is absent."""
    train = [(name, str(MAP_DIR / f"{name}.xodr")) for name in TRAIN_MAPS]
    if split == "train":
        if TRAIN_TOWN.is_file():
            return [*train, (TRAIN_TOWN.stem, str(TRAIN_TOWN.resolve()))], None
        return train, f"{TRAIN_TOWN} is absent: training uses the project's own maps only"
    if VAL_MAP.is_file():
        return [(VAL_MAP.stem, str(VAL_MAP.resolve()))], None
    return train, (f"{VAL_MAP} is absent: validation uses the training maps with held-out (odd) seeds, "
                   "so it measures generalisation to new scenes, not to a new town")


def split_frames(frames: int, split: str, val_fraction: float) -> dict[str, int]:
    if split != "both":
        return {split: frames}
    if frames < 2:
        raise ConfigError(f"--frames {frames}: --split both needs at least 2 frames")
    val = min(max(1, round(frames * val_fraction)), frames - 1)
    return {"train": frames - val, "val": val}


def plan_scenes(split: str, frames: int, frames_per_scene: int, seed: int,
                **common) -> tuple[list[SceneJob], str | None]:
    maps, note = split_maps(split)
    weights = np.array([TRAIN_MAP_WEIGHTS.get(name, 1.0) for name, _ in maps])
    count = math.ceil(frames / frames_per_scene)
    choice = np.random.default_rng([seed, SPLITS.index(split)]).choice(len(maps), size=count, p=weights / weights.sum())
    jobs = []
    for index in range(count):
        name, path = maps[int(choice[index])]
        jobs.append(SceneJob(split=split, index=index, seed=scene_seed(seed, split, index), map_name=name,
                             map_path=path, first_image_id=1 + index * frames_per_scene,
                             frames=min(frames_per_scene, frames - index * frames_per_scene), **common))
    return jobs, note


# ---------------------------------------------------------------- sampling one scene


def _r(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


def _drivable_keys(road_map: RoadMap) -> list[tuple[int, int, int]]:
    return sorted(k for k, seg in road_map.segments.items() if not seg.is_junction and seg.path.length > 20.0)


def _next_lanes(road_map: RoadMap, key: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    return [k for k in road_map.successors(key) if not road_map.graph.edges[key, k].get("lane_change")]


def has_dead_ends(road_map: RoadMap) -> bool:
    """Whether some lane ends without a successor (the ends of `straight`, `curvy`, the junction arms)."""
    return any(not _next_lanes(road_map, key) for key in road_map.segments)


def _walk(road_map: RoadMap, key, s: float, target_m: float,
          rng: np.random.Generator) -> tuple[tuple[float, float], float]:
    """A goal about `target_m` on from lane `key` at `s`, along random successors; it stops
    short at a dead end. Returns the goal (x, y) and the distance walked [m]."""
    seg = road_map.segments[key]
    walked, goal = seg.path.length - s, (key, min(seg.path.length - 1.0, s + target_m))
    while walked < target_m:
        nexts = _next_lanes(road_map, key)
        if not nexts:
            break
        key = nexts[int(rng.integers(len(nexts)))]
        seg = road_map.segments[key]
        if not seg.is_junction:
            goal = (key, max(1.0, min(seg.path.length - 1.0, target_m - walked)))
        walked += seg.path.length
    x, y, _ = road_map.segments[goal[0]].path.interpolate(goal[1])
    return (_r(x), _r(y)), walked


def _sample_route(road_map: RoadMap, rng: np.random.Generator):
    """An ego start at a random lane position and a goal some hundred metres on. Returns the
    start (x, y), the goal (x, y) and the route (RoutePath) the simulator will build."""
    keys = _drivable_keys(road_map)
    for _ in range(100):
        key = keys[int(rng.integers(len(keys)))]
        s = float(rng.uniform(2.0, road_map.segments[key].path.length - 10.0))
        x, y, _ = road_map.segments[key].path.interpolate(s)
        start = (_r(x), _r(y))
        goal, _ = _walk(road_map, key, s, ROUTE_TARGET_M, rng)
        try:
            route = road_map.route([start, goal])
        except MapError:
            continue
        if route.path.length >= ROUTE_MIN_M:
            return start, goal, route
    raise ConfigError(f"{road_map.source}: found no ego route of {ROUTE_MIN_M:.0f} m or more")


class _Layout:
    """Actors placed around the ego route; cars and obstacles kept apart from each other.

    Every NPC car gets a goal: the simulator's goal-less (random-turn) NPCs break at a lane's
    dead end (sim/traffic.py extend_random_path), and three of the four project maps have some.
    """

    def __init__(self, road_map: RoadMap, route, rng: np.random.Generator, ego_xy: tuple[float, float]):
        self.road_map, self.path, self.rng = road_map, route.path, rng
        self.s_max = min(ACTOR_RANGE_M[1], self.path.length - 25.0)
        self.actors: list[dict[str, Any]] = []
        self._placed: list[tuple[float, float]] = [ego_xy]  # cars and obstacles, world [m]

    def _xy(self, s: float, offset: float) -> tuple[float, float]:
        x, y, yaw = (float(v) for v in self.path.interpolate(s))
        return x - math.sin(yaw) * offset, y + math.cos(yaw) * offset

    def _claim(self, xy: tuple[float, float], clearance_m: float) -> bool:
        if any(math.dist(xy, p) < clearance_m for p in self._placed):
            return False
        self._placed.append(xy)
        return True

    def count(self, high: int) -> int:
        return int(self.rng.integers(0, high + 1))

    def _car(self, xy: tuple[float, float]) -> None:
        """An NPC on the lane under `xy`, with a random goal, unless it would crowd another."""
        found = self.road_map.segment_at(*xy)
        if found is None or found[0].is_junction:
            return
        segment, s = found
        x, y, _ = segment.path.interpolate(s)
        start = (_r(x), _r(y))
        if math.dist(start, xy) > 1.0 or not self._claim(start, 12.0):
            return  # no lane there
        goal, _ = _walk(self.road_map, segment.key, s, ROUTE_TARGET_M, self.rng)
        self.actors.append({"type": "vehicle", "start": {"x": start[0], "y": start[1]},
                            "goal": {"x": goal[0], "y": goal[1]}, "speed": _r(self.rng.uniform(3.0, 11.0))})

    def vehicles(self, background: int) -> None:
        """NPCs ahead in the ego lane, in the lane to its left (oncoming on two-way roads), and
        `background` anywhere on the map."""
        for offset in [0.0] * self.count(2) + [3.5] * self.count(2):
            self._car(self._xy(_r(self.rng.uniform(25.0, self.s_max)), offset))
        keys = _drivable_keys(self.road_map)
        for _ in range(background):
            segment = self.road_map.segments[keys[int(self.rng.integers(len(keys)))]]
            x, y, _ = segment.path.interpolate(float(self.rng.uniform(5.0, segment.path.length - 5.0)))
            self._car((float(x), float(y)))

    def pedestrians(self) -> None:
        for _ in range(self.count(2)):  # crossing the road, starting when the ego comes near
            s, half = _r(self.rng.uniform(ACTOR_RANGE_M[0] + 10.0, self.s_max)), _r(self.rng.uniform(5.0, 9.0))
            ends = [{"route_s": s, "offset": -half}, {"route_s": s, "offset": half}]
            self.actors.append({"type": "pedestrian", "path": ends if self.rng.random() < 0.5 else ends[::-1],
                                "speed": _r(self.rng.uniform(0.8, 2.0)),
                                "ego_within_m": _r(self.rng.uniform(20.0, 50.0))})
        for _ in range(self.count(4)):  # along the road: on the sidewalks, some on the road's edge
            offset = _r(self.rng.choice([-1.0, 1.0]) * self.rng.uniform(2.3, 7.5))
            s = _r(self.rng.uniform(ACTOR_RANGE_M[0], self.s_max - 20.0))
            path = [{"route_s": _r(s + d), "offset": offset} for d in (0.0, 7.0, 14.0, 21.0)]
            self.actors.append({"type": "pedestrian", "path": path if self.rng.random() < 0.5 else path[::-1],
                                "speed": _r(self.rng.uniform(0.8, 1.8)), "start_t": _r(self.rng.uniform(0.0, 3.0))})

    def _static(self, kind: str, s: float, offset: float, clearance_m: float) -> bool:
        if not self._claim(self._xy(s, offset), clearance_m):
            return False
        self.actors.append({"type": "static", "kind": kind, "pose": {"route_s": s, "offset": offset}})
        return True

    def obstacles(self) -> None:
        """Parked cars at either kerb, lines of cones along the lane edge, a barrier."""
        for _ in range(self.count(3)):
            right = self.rng.random() < 0.7
            offset = _r(-self.rng.uniform(2.9, 3.6) if right else self.rng.uniform(5.3, 6.5))
            self._static("parked_car", _r(self.rng.uniform(ACTOR_RANGE_M[0], self.s_max)), offset, 7.0)
        for _ in range(self.count(2)):
            offset = _r(self.rng.choice([-1.0, 1.0]) * self.rng.uniform(2.1, 2.8))
            s, cones = _r(self.rng.uniform(ACTOR_RANGE_M[0], self.s_max - 10.0)), int(self.rng.integers(1, 5))
            for k in range(cones):
                if not self._static("cone", _r(s + 3.0 * k), offset, 2.0):
                    break
        if self.rng.random() < 0.3:
            s, offset = _r(self.rng.uniform(ACTOR_RANGE_M[0], self.s_max)), _r(-self.rng.uniform(3.0, 3.5))
            self._static("barrier", s, offset, 4.0)


def sample_scenario(job: SceneJob, attempt: int) -> tuple[Scenario, dict[str, Any]]:
    """The scene's scenario, and its parameters as plain data (a valid scenario mapping)."""
    road_map = load_road_map(job.map_path)
    rng = np.random.default_rng([job.seed, attempt])
    start, goal, route = _sample_route(road_map, rng)
    speed_limit = _r(rng.uniform(8.3, 13.9))
    lane_length = sum(seg.path.length for seg in road_map.segments.values() if not seg.is_junction)
    traffic = int(min(30, rng.integers(lane_length / 250.0, lane_length / 100.0 + 1)))
    # Goal-less NPCs are the simulator's random traffic; they are safe only without dead ends.
    random_vehicles = 0 if has_dead_ends(road_map) else traffic
    layout = _Layout(road_map, route, rng, start)
    layout.vehicles(background=traffic - random_vehicles)
    layout.pedestrians()
    layout.obstacles()
    params = {
        "name": f"collect_{job.split}_{job.index:05d}",
        "map": job.map_name,
        "seed": job.seed,
        "duration_s": 3600.0,  # scenes end by frame count, not time
        "speed_limit": speed_limit,
        "ego": {"start": {"x": start[0], "y": start[1]}, "goal": {"x": goal[0], "y": goal[1]},
                "initial_speed": _r(rng.uniform(0.0, 0.8 * speed_limit))},
        "actors": layout.actors,
        "random_vehicles": random_vehicles,
        "weather": {"preset": str(rng.choice(WEATHER_PRESETS))},
    }
    scenario = Scenario.model_validate(params).model_copy(
        update={"source": f"collect:{params['name']}", "map_path": job.map_path})
    return scenario, params


# ---------------------------------------------------------------- driving one scene


def _drive(sim: EmbeddedSimulator, obs, job: SceneJob, warmup_ticks: int):
    """Yield the observations to save: the first after the warm-up, then one per interval.
    The cameras render only on those ticks (the follower reads object truth alone): with them
    off, a tick costs a fraction of a rendered one."""
    follower = make_follower(sim)
    every = max(1, round(job.interval_s / sim.dt))
    for k in range(job.frames):
        for _ in range((warmup_ticks if k == 0 else every) - 1):
            obs = sim.step(follower(obs), render=False)
        obs = sim.step(follower(obs))
        yield obs


def _render_scene(job: SceneJob, attempt: int) -> SceneResult:
    scenario, params = sample_scenario(job, attempt)
    sim = EmbeddedSimulator(job.config)
    first = sim.reset(scenario)
    warmup = int(np.random.default_rng([job.seed, attempt, 1]).integers(1, round(MAX_WARMUP_S / sim.dt) + 1))
    images, annotations = [], []
    for k, obs in enumerate(_drive(sim, first, job, warmup)):
        image_id = job.first_image_id + k
        record = dataset.write_frame(job.out, job.split, image_id, obs, CAMERA, job.image_format, job.depth)
        record.update(scene=job.index, map=job.map_name, seed=job.seed, weather=params["weather"]["preset"],
                      ego_speed=round(obs.ego.speed, 3))
        images.append(record)
        annotations += dataset.frame_annotations(obs, CAMERA, image_id)
    scene = {"index": job.index, "map": job.map_name, "map_path": job.map_path, "seed": job.seed,
             "attempt": attempt, "warmup_ticks": warmup, "frames": job.frames,
             "lighting": _lighting(sim), "scenario": params}
    return SceneResult(scene, images, annotations)


def run_scene(job: SceneJob) -> SceneResult:
    """Sample, drive and write one scene. A layout the simulator rejects, or fails to drive, is
    sampled again (deterministically); the manifest lists what went wrong."""
    problems = []
    for attempt in range(MAX_ATTEMPTS):
        try:
            result = _render_scene(job, attempt)
        except ValueError as exc:  # ConfigError included
            problems.append(f"attempt {attempt}: {type(exc).__name__}: {exc}")
            continue
        if problems:
            result.scene["rejected"] = problems
        return result
    raise ConfigError(f"{job.map_name}: scene seed {job.seed}: no layout worked in {MAX_ATTEMPTS} attempts; "
                      f"last: {problems[-1]}")


def _lighting(sim: EmbeddedSimulator) -> dict[str, Any]:
    """The jittered values the weather preset came out as."""
    light = sim.sensors.lighting
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(light).items()
            if isinstance(v, (int, float, str))}


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core


def _run_jobs(jobs: list[SceneJob], frames: int, workers: int, show_progress: bool) -> list[SceneResult]:
    """Scenes in order; with workers > 1 in a process pool (the output does not depend on it)."""
    results = []
    with tqdm(total=frames, desc="collect", unit="frame", disable=not show_progress) as bar:
        if workers == 1:
            for job in jobs:
                results.append(run_scene(job))
                bar.update(job.frames)
        else:
            # spawn, not fork: a forked child of a process whose OpenMP (torch) or OpenCV thread
            # pools already ran can deadlock on their locks.
            with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                for job, result in zip(jobs, pool.map(run_scene, jobs)):
                    results.append(result)
                    bar.update(job.frames)
    return results


# ---------------------------------------------------------------- the dataset


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _camera(config: StackConfig) -> dict[str, Any]:
    cam = config.sim.cameras.get(CAMERA)
    if cam is None:
        raise ConfigError(f"sim.cameras: collect needs a camera named {CAMERA!r}")
    spec = CameraSpec(name=CAMERA, **cam.model_dump())
    return dataset.camera_record(CAMERA, spec.width, spec.height, spec.K, spec.T_ego_cam, OUTLINE_MARGIN_PX)


def _check(out: Path, seed: int, val_fraction: float, interval_s: float) -> None:
    if seed < 0:
        raise ConfigError(f"--seed {seed}: expected a non-negative integer")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction {val_fraction}: expected a value between 0 and 1")
    if interval_s <= 0.0:
        raise ConfigError(f"--interval {interval_s}: expected a positive time [s]")
    if (out / "manifest.json").exists():
        raise ConfigError(f"{out}: already holds a dataset (manifest.json); choose a new --out or remove it")


def _split_entry(results: list[SceneResult], note: str | None) -> dict[str, Any]:
    return {"frames": sum(len(r.images) for r in results), "annotations": sum(len(r.annotations) for r in results),
            "maps": sorted({r.scene["map"] for r in results}), "seeds": [r.scene["seed"] for r in results],
            **({"note": note} if note else {}), "scenes": [r.scene for r in results]}


def collect_dataset(config: StackConfig, out: Path, frames: int, split: str = "both", seed: int = 0, *,
                    val_fraction: float = 0.2, frames_per_scene: int = 10, interval_s: float = 0.5,
                    image_format: str = "jpg", depth: bool = False, workers: int = 1,
                    command: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Render `frames` front-camera frames (over the splits) into a dataset under `out`;
    returns the manifest, which is also written to out/manifest.json."""
    _check(out, seed, val_fraction, interval_s)
    camera = _camera(config)
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None  # before we write anything
    counts = split_frames(frames, split, val_fraction)
    common = {"interval_s": interval_s, "out": out, "config": config, "image_format": image_format, "depth": depth}
    plans = {name: plan_scenes(name, n, frames_per_scene, seed, **common) for name, n in counts.items()}
    jobs = [job for name in counts for job in plans[name][0]]
    results = _run_jobs(jobs, frames, workers, show_progress)
    manifest = {
        "stagepilot_version": __version__,
        "git": {"commit": commit, "dirty": None if status is None else bool(status)},
        "command": command or shlex.join(sys.argv),
        "seed": seed,
        "frames": counts,
        "frames_per_scene": frames_per_scene,
        "interval_s": interval_s,
        "image_format": image_format,
        "semantic": "uint8 PNG, CARLA 0.9.14+ semantic tag ids",
        "depth": "uint16 PNG, camera-frame z [cm], 65535 = 655.35 m or farther (sky)" if depth else None,
        "camera": camera,
        "categories": dataset.coco_categories(),
        "filters": {"min_visible_fraction": dataset.MIN_VISIBLE_FRACTION, "min_box_px": dataset.MIN_BOX_PX},
        "splits": {},
    }
    for name in counts:
        scenes = [r for job, r in zip(jobs, results) if job.split == name]
        info = {"description": f"stagepilot embedded-simulator dataset, {name} split", "version": __version__,
                "seed": seed}
        dataset.write_coco(out / "annotations" / f"{name}.json", [i for r in scenes for i in r.images],
                           [a for r in scenes for a in r.annotations], camera, info)
        manifest["splits"][name] = _split_entry(scenes, plans[name][1])
    dataset.write_json(out / "manifest.json", manifest)
    return manifest

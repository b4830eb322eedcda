"""`stagepilot collect`: render a perception dataset from the embedded simulator.

Each scene is a scenario sampled from a seed: a map, an ego route from a random lane
position, background traffic (the simulator's `random_vehicles` on maps without dead ends,
goal-routed NPCs elsewhere), NPC cars ahead and oncoming, pedestrians crossing and walking
along the road, parked cars, cones and barriers, and a weather preset. The ego drives it with
the reference follower; after a random warm-up, every `interval_s` one frame of every rig
camera (`sim.cameras`) is written, so that the model learns the side views too; each image names
its camera, and the annotation file holds every camera's calibration (`perception/dataset.py`
holds the file layout). A frame of a C-camera rig is C images: image id = frame id * C + camera
index, in the rig's order.

Training scenes use the project maps (configs/maps), plus CARLA's Town01 when it is on the map
search path, and even scene seeds; validation scenes use CARLA's Town02 (found on the map search
path: `--maps`, STAGEPILOT_MAPS, $CARLA_ROOT; never seen in training) and odd seeds, so no
(map, seed) pair, and no seed, is shared. Everything comes from `--seed`: the same command
writes the same bytes, whatever the number of workers. Scene sampling is in collect_scenes.py.
"""

from __future__ import annotations

import math
import shlex
import sys
import multiprocessing
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stagepilot import __version__
from stagepilot.perception import dataset
from stagepilot.core.config import ConfigError, StackConfig
from stagepilot.core.maps import PROJECT_MAPS, find_map
from stagepilot.core.roadmap import MapError
from stagepilot.core.carla_frame import carla_camera_intrinsics
from stagepilot.pipeline.collect_scenes import SceneJob, crowded, sample_scenario
from stagepilot.pipeline.driver import make_simulator
from stagepilot.pipeline.provenance import git_state
from stagepilot.sim.follower import make_follower
from stagepilot.sim.render.camera import CameraSpec
from stagepilot.sim.render.renderer import OUTLINE_MARGIN_PX

TRAIN_MAPS = ("straight", "curvy", "junction", "town")  # the project's own maps (configs/maps)
# CARLA's Town01 trains too when the map search path holds it: without a real town the network
# learned the project maps' road markings and kerbs and lost half its road-line IoU on Town02.
TRAIN_TOWN = "Town01"
# scene share per training map: junctions and the towns hold lights and crossings
TRAIN_MAP_WEIGHTS = {"straight": 1.0, "curvy": 1.0, "junction": 1.5, "town": 2.0, "Town01": 4.0}
VAL_TOWN = "Town02"
SPLITS = ("train", "val")
SEED_STRIDE = 1_000_000  # scene seeds of one --seed: 2 * (seed * SEED_STRIDE + scene) + split
MAX_ATTEMPTS = 5  # layouts tried per scene when one cannot be placed
MAX_WARMUP_S = 3.0
# Training scenes draw their yellow phase from this range [s] (validation keeps the stack's 3 s):
# at 3 s of a 32 s cycle, yellow lamps were 9 % of the light boxes and yellow the weakest class.
TRAIN_YELLOW_S = (3.0, 9.0)


@dataclass(frozen=True)
class SceneResult:
    scene: dict[str, Any]  # for the manifest: seed, map, scenario parameters, frames
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]


# ---------------------------------------------------------------- planning the splits


def scene_seed(seed: int, split: str, index: int) -> int:
    """Training seeds are even, validation seeds odd: the splits never share a seed."""
    return 2 * (seed * SEED_STRIDE + index) + SPLITS.index(split)


def split_maps(split: str, maps_dirs: Iterable[str | Path] = ()) -> tuple[list[tuple[str, str]], str | None]:
    """(map name, path) pairs of a split, and a note when a CARLA town is not on the map search
    path (`maps_dirs`, then core/maps.py's places)."""
    train = [(name, str(PROJECT_MAPS / f"{name}.xodr")) for name in TRAIN_MAPS]
    town = TRAIN_TOWN if split == "train" else VAL_TOWN
    try:
        town_path = str(find_map(town, maps_dirs))
    except MapError as exc:
        if split == "train":
            return train, f"{town} is absent ({exc}): training uses the project's own maps only"
        return train, (f"{town} is absent ({exc}): validation uses the training maps with held-out (odd) "
                       "seeds, so it measures generalisation to new scenes, not to a new town")
    return ([*train, (town, town_path)] if split == "train" else [(town, town_path)]), None


def split_frames(frames: int, split: str, val_fraction: float) -> dict[str, int]:
    if split != "both":
        return {split: frames}
    if frames < 2:
        raise ConfigError(f"--frames {frames}: --split both needs at least 2 frames")
    val = min(max(1, round(frames * val_fraction)), frames - 1)
    return {"train": frames - val, "val": val}


def plan_scenes(split: str, frames: int, frames_per_scene: int, seed: int,
                maps_dirs: Iterable[str | Path] = (), **common) -> tuple[list[SceneJob], str | None]:
    maps, note = split_maps(split, maps_dirs)
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


# ---------------------------------------------------------------- driving one scene


def _drive(sim, obs, job: SceneJob, warmup_ticks: int):
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
    config = scene_config(job, attempt)
    sim = make_simulator(config)
    try:
        result = _drive_scene(sim, scenario, params, job, attempt)
        result.scene["yellow_s"] = config.traffic.traffic_lights.yellow_s
        if crowded(job, attempt):
            result.scene["crowded"] = True
        return result
    finally:
        sim.close()


def scene_config(job: SceneJob, attempt: int) -> StackConfig:
    """The stack a scene runs: a training scene's lights hold yellow for a drawn TRAIN_YELLOW_S
    (its own random stream, so the scenario's draws are those of the seed alone)."""
    if job.split != "train":
        return job.config
    yellow = round(float(np.random.default_rng([job.seed, attempt, 2]).uniform(*TRAIN_YELLOW_S)), 2)
    lights = job.config.traffic.traffic_lights.model_copy(update={"yellow_s": yellow})
    return job.config.model_copy(update={"traffic": job.config.traffic.model_copy(update={"traffic_lights": lights})})


def _drive_scene(sim, scenario, params, job: SceneJob, attempt: int) -> SceneResult:
    first = sim.reset(scenario)
    warmup = int(np.random.default_rng([job.seed, attempt, 1]).integers(1, round(MAX_WARMUP_S / sim.dt) + 1))
    images, annotations = [], []
    rig = list(job.config.sim.cameras)
    for k, obs in enumerate(_drive(sim, first, job, warmup)):
        for c, camera in enumerate(rig):
            image_id = (job.first_image_id + k) * len(rig) + c
            record = dataset.write_frame(job.out, job.split, image_id, obs, camera, job.image_format, job.depth)
            record.update(camera=camera, scene=job.index, map=job.map_name, seed=job.seed,
                          weather=params["weather"]["preset"], ego_speed=round(obs.ego.speed, 3))
            images.append(record)
            annotations += dataset.frame_annotations(obs, camera, image_id)
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


def _lighting(sim) -> dict[str, Any]:
    """The jittered values the weather preset came out as (on CARLA: the weather preset)."""
    light = getattr(getattr(sim, "sensors", None), "lighting", None)
    if light is None:
        return {"carla_weather": getattr(sim, "weather_name", "")}
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


def _cameras(config: StackConfig) -> dict[str, dict[str, Any]]:
    """Every rig camera's calibration record, in the rig's order (the main camera first)."""
    if not config.sim.cameras:
        raise ConfigError("sim.cameras: collect needs at least one camera")
    records = {}
    for name, cam in config.sim.cameras.items():
        spec = CameraSpec(name=name, **cam.model_dump(exclude={"stream", "jpeg_quality"}))
        if config.sim.source == "carla":  # CARLA's optical axis and pixel-centre sampling
            K, margin = carla_camera_intrinsics(cam.width, cam.height, cam.fov_deg), 0.0
        else:
            K, margin = spec.K, OUTLINE_MARGIN_PX
        records[name] = dataset.camera_record(name, spec.width, spec.height, K, spec.T_ego_cam, margin)
    return records


def _check(out: Path, seed: int, val_fraction: float, interval_s: float, first_yellow: float, crowd: float) -> None:
    if seed < 0:
        raise ConfigError(f"--seed {seed}: expected a non-negative integer")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction {val_fraction}: expected a value between 0 and 1")
    if interval_s <= 0.0:
        raise ConfigError(f"--interval {interval_s}: expected a positive time [s]")
    if not 0.0 <= first_yellow <= 1.0:
        raise ConfigError(f"--first-yellow {first_yellow}: expected a share of scenes, from 0 to 1")
    if not 0.0 <= crowd <= 1.0:
        raise ConfigError(f"--crowd {crowd}: expected a share of scenes, from 0 to 1")
    if (out / "manifest.json").exists():
        raise ConfigError(f"{out}: already holds a dataset (manifest.json); choose a new --out or remove it")


def _split_entry(results: list[SceneResult], note: str | None) -> dict[str, Any]:
    return {"frames": sum(r.scene["frames"] for r in results), "images": sum(len(r.images) for r in results),
            "annotations": sum(len(r.annotations) for r in results),
            "maps": sorted({r.scene["map"] for r in results}), "seeds": [r.scene["seed"] for r in results],
            **({"note": note} if note else {}), "scenes": [r.scene for r in results]}


def collect_dataset(config: StackConfig, out: Path, frames: int, split: str = "both", seed: int = 0, *,
                    val_fraction: float = 0.2, frames_per_scene: int = 10, interval_s: float = 0.5,
                    image_format: str = "jpg", depth: bool = False, workers: int = 1,
                    command: str | None = None, show_progress: bool = True,
                    maps_dirs: Iterable[str | Path] = (), first_yellow: float = 0.0,
                    crowd: float = 0.0) -> dict[str, Any]:
    """Render `frames` frames of every rig camera (over the splits) into a dataset under `out`;
    returns the manifest, which is also written to out/manifest.json. The CARLA towns are looked
    up in `maps_dirs` (`--maps`) first, then on the rest of the map search path. A share
    `first_yellow` of the training scenes start the first light on the ego's route yellow, and a
    share `crowd` are crowded (queues of far cars, more walkers and parked cars)."""
    _check(out, seed, val_fraction, interval_s, first_yellow, crowd)
    cameras = _cameras(config)
    camera = next(iter(cameras.values()))  # the main camera, as a one-camera reader expects
    git = git_state()  # before we write anything
    counts = split_frames(frames, split, val_fraction)
    common = {"interval_s": interval_s, "out": out, "config": config, "image_format": image_format, "depth": depth,
              "first_yellow": first_yellow, "crowd": crowd}
    plans = {name: plan_scenes(name, n, frames_per_scene, seed, maps_dirs, **common) for name, n in counts.items()}
    jobs = [job for name in counts for job in plans[name][0]]
    results = _run_jobs(jobs, frames, workers, show_progress)
    manifest = {
        "stagepilot_version": __version__,
        "git": git,
        "command": command or shlex.join(sys.argv),
        "seed": seed,
        "frames": counts,
        "frames_per_scene": frames_per_scene,
        "interval_s": interval_s,
        "first_yellow": first_yellow,
        "crowd": crowd,
        "image_format": image_format,
        "semantic": "uint8 PNG, CARLA 0.9.14+ semantic tag ids",
        "depth": "uint16 PNG, camera-frame z [cm], 65535 = 655.35 m or farther (sky)" if depth else None,
        "camera": camera,
        "cameras": cameras,
        "images_per_frame": len(cameras),
        "categories": dataset.coco_categories(),
        "filters": {"min_visible_fraction": dataset.MIN_VISIBLE_FRACTION, "min_box_px": dataset.MIN_BOX_PX},
        "splits": {},
    }
    for name in counts:
        scenes = [r for job, r in zip(jobs, results) if job.split == name]
        info = {"description": f"stagepilot embedded-simulator dataset, {name} split", "version": __version__,
                "seed": seed}
        dataset.write_coco(out / "annotations" / f"{name}.json", [i for r in scenes for i in r.images],
                           [a for r in scenes for a in r.annotations], camera, info, cameras)
        manifest["splits"][name] = _split_entry(scenes, plans[name][1])
    manifest["content_sha256"] = dataset.content_sha256(out)
    dataset.write_json(out / "manifest.json", manifest)
    return manifest

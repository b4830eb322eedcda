"""Benchmark the embedded camera renderer on a synthetic town, single-threaded.

    python scripts/bench_render.py [--frames 300] [--repeats 3] [--width 640 --height 360] [--save DIR]

Builds a 450 x 400 m grid town (roads, sidewalks, markings, ~1500 static boxes), drives the
ego 150 m along a street with ~20 moving actors, and prints frames/s for plain, fog and
fog+noise lighting plus a per-part time breakdown.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from stagepilot.sim.render import (
    BoxSet, CameraRenderer, CameraSpec, GroundRaster, Lighting, PaintedLine, colorize, palette, renderer, shapes,
)  # fmt: skip

STREETS_X = (45.0, 135.0, 225.0, 315.0, 405.0)  # x of north-south streets [m]
STREETS_Y = (40.0, 120.0, 200.0, 280.0, 360.0)  # y of east-west streets [m]
BOUNDS = (0.0, 0.0, 450.0, 400.0)
ROAD_HALF_M, WALK_M = 7.0, 3.5


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def town_ground(seed: int) -> GroundRaster:
    xmin, ymin, xmax, ymax = BOUNDS
    polygons, markings = [], []
    for y in STREETS_Y:
        polygons.append((palette.SIDEWALK, _rect(xmin, y - ROAD_HALF_M - WALK_M, xmax, y + ROAD_HALF_M + WALK_M)))
    for x in STREETS_X:
        polygons.append((palette.SIDEWALK, _rect(x - ROAD_HALF_M - WALK_M, ymin, x + ROAD_HALF_M + WALK_M, ymax)))
    for y in STREETS_Y:
        polygons.append((palette.ROAD, _rect(xmin, y - ROAD_HALF_M, xmax, y + ROAD_HALF_M)))
        markings.append(PaintedLine(np.array([[xmin, y], [xmax, y]]), 0.15, (235, 190, 40), False))
        for side in (-3.5, 3.5):
            markings.append(PaintedLine(np.array([[xmin, y + side], [xmax, y + side]]), 0.12, dashed=True))
    for x in STREETS_X:
        polygons.append((palette.ROAD, _rect(x - ROAD_HALF_M, ymin, x + ROAD_HALF_M, ymax)))
        markings.append(PaintedLine(np.array([[x, ymin], [x, ymax]]), 0.15, (235, 190, 40), False))
    return GroundRaster.build(polygons, markings, BOUNDS, 0.1, seed=seed)


def town_static(rng: np.random.Generator) -> BoxSet:
    """Buildings lining every block, street trees, lamp poles and traffic lights."""
    parts: list[BoxSet] = []
    edges_x = (0.0,) + STREETS_X + (BOUNDS[2],)
    edges_y = (0.0,) + STREETS_Y + (BOUNDS[3],)
    margin = ROAD_HALF_M + WALK_M + 1.0
    for x0, x1 in zip(edges_x[:-1], edges_x[1:]):
        for y0, y1 in zip(edges_y[:-1], edges_y[1:]):
            bx0, bx1, by0, by1 = x0 + margin, x1 - margin, y0 + margin, y1 - margin
            for along_x, fixed, lo, hi in ((True, by0, bx0, bx1), (True, by1, bx0, bx1), (False, bx0, by0, by1), (False, bx1, by0, by1)):
                s = lo
                while s < hi - 6.0:
                    length = min(rng.uniform(8.0, 22.0), hi - s)
                    depth, height = rng.uniform(8.0, 14.0), rng.uniform(6.0, 30.0)
                    inward = 1.0 if fixed in (by0, bx0) else -1.0
                    c = fixed + inward * depth / 2
                    colour = tuple(int(v) for v in rng.integers(90, 200, 3))
                    if along_x:
                        parts.append(shapes.building(s + length / 2, c, 0.0, length, depth, height, colour))
                    else:
                        parts.append(shapes.building(c, s + length / 2, math.pi / 2, length, depth, height, colour))
                    s += length + rng.uniform(0.0, 3.0)
    for y in STREETS_Y:
        for side in (-1.0, 1.0):
            for x in np.arange(8.0, BOUNDS[2], 24.0) + rng.uniform(-2, 2):
                parts.append(shapes.tree(x, y + side * (ROAD_HALF_M + 1.2), rng.uniform(4.0, 8.0)))
            for x in np.arange(20.0, BOUNDS[2], 40.0):
                parts.append(shapes.pole(x, y + side * (ROAD_HALF_M + 0.5)))
    instance = 1000
    for x in STREETS_X:
        for y in STREETS_Y:
            for k, (dx, dy) in enumerate(((1, 1), (-1, 1), (-1, -1), (1, -1))):
                yaw = math.pi + k * math.pi / 2
                state = ("red", "green", "yellow")[int(rng.integers(3))]
                parts.append(shapes.traffic_light(x + dx * (ROAD_HALF_M + 1), y + dy * (ROAD_HALF_M + 1), yaw, instance, state))
                instance += 1
    return BoxSet.concat(parts)


class Actors:
    """Cars driving along the ego's street (both directions) and pedestrians on its walks."""

    def __init__(self, rng: np.random.Generator, street_y: float, cars: int = 14, walkers: int = 6):
        self.street_y = street_y
        self.car_x = rng.uniform(10.0, 300.0, cars)
        self.car_lane = rng.choice([-5.25, -1.75, 1.75, 5.25], cars)
        self.car_speed = rng.uniform(4.0, 12.0, cars)
        self.car_rgb = rng.integers(20, 230, (cars, 3))
        self.walk_x = rng.uniform(20.0, 200.0, walkers)
        self.walk_side = rng.choice([-1.0, 1.0], walkers) * (ROAD_HALF_M + 2.2)
        self.walk_speed = rng.uniform(-1.5, 1.5, walkers)

    def at(self, t: float) -> BoxSet:
        parts = []
        for k, (x0, lane, v) in enumerate(zip(self.car_x, self.car_lane, self.car_speed)):
            direction = 1.0 if lane < 0 else -1.0  # right-hand traffic
            x = x0 + direction * v * t
            yaw = 0.0 if direction > 0 else math.pi
            parts.append(shapes.car(x, self.street_y + lane, yaw, k + 1, tuple(int(c) for c in self.car_rgb[k])))
        for k, (x0, side, v) in enumerate(zip(self.walk_x, self.walk_side, self.walk_speed)):
            yaw = 0.0 if v >= 0 else math.pi
            parts.append(shapes.pedestrian(x0 + v * t, self.street_y + side, yaw, 100 + k))
        return BoxSet.concat(parts)


def _instrument(camera: CameraRenderer, times: dict[str, float]) -> None:
    """Wrap the renderer's parts with timers (bench only; the renderer stays unaware)."""

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            times[name] += time.perf_counter() - start
            return result

        return wrapper

    gv = camera.ground_view
    gv.draw = timed("ground warp", gv.draw)
    gv.fill_sky = timed("sky", gv.fill_sky)
    camera._visible_geometry = timed("cull", camera._visible_geometry)
    renderer.camera_faces = timed("faces+clip+project", renderer.camera_faces)
    renderer.painter_order = timed("painter order", renderer.painter_order)
    camera._draw_faces = timed("draw faces (incl. order)", camera._draw_faces)
    camera._compose = timed("compose (depth/tags/inst/rgb+fog)", camera._compose)
    camera._apply_noise = timed("noise", camera._apply_noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per lighting")
    parser.add_argument("--save", type=Path, help="write a few frames (rgb, semantic, depth) here")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(args.seed)

    start = time.perf_counter()
    ground = town_ground(args.seed)
    print(f"ground raster {ground.shape[1]}x{ground.shape[0]} built in {time.perf_counter() - start:.2f} s")
    static = town_static(rng)
    street_y = STREETS_Y[1]
    actors = Actors(rng, street_y)
    spec = CameraSpec("front", args.width, args.height, 90.0, 1.5, 0.0, 1.6, pitch_deg=3.0)
    camera = CameraRenderer(spec, ground, static)
    dt, speed = 0.05, 10.0
    poses = [(20.0 + speed * dt * k, street_y - 1.75 + 0.3 * math.sin(0.05 * k), 0.04 * math.sin(0.03 * k)) for k in range(args.frames)]
    frames = [actors.at(dt * k) for k in range(args.frames)]
    visible = [len(camera._visible_geometry(camera._viewpoint(p), None)) for p in poses[::30]]
    print(f"{len(static)} static boxes, {len(frames[0])} dynamic boxes, {np.mean(visible):.0f} static boxes in range+frustum")

    clear = Lighting(fog_density=0.0, noise_std=0.0)
    fog = Lighting(fog_density=0.004, noise_std=0.0)
    fog_noise = Lighting(fog_density=0.004, noise_std=3.0)
    print(f"frames/s over {args.frames} frames, best and median of {args.repeats} runs (a shared machine is noisy):")
    for name, lighting in (("no fog, no noise", clear), ("fog", fog), ("fog + noise", fog_noise)):
        camera.render(poses[0], frames[0], lighting)  # warm caches
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for pose, boxes in zip(poses, frames):
                camera.render(pose, boxes, lighting)
            rates.append(args.frames / (time.perf_counter() - start))
        best, median = max(rates), float(np.median(rates))
        print(f"  {name:>18}: best {best:6.1f} ({1e3 / best:.2f} ms/frame), median {median:6.1f}")

    times: dict[str, float] = defaultdict(float)
    _instrument(camera, times)
    start = time.perf_counter()
    for pose, boxes in zip(poses, frames):
        camera.render(pose, boxes, fog_noise)
    total = time.perf_counter() - start
    print(f"breakdown (fog + noise, instrumented, {1e3 * total / args.frames:.2f} ms/frame):")
    for name, seconds in times.items():
        print(f"  {name:>34}: {1e3 * seconds / args.frames:6.3f} ms")
    rest = total - sum(v for k, v in times.items() if k != "painter order")
    print(f"  {'rest (gain/fog of ground, RGBA->RGB)':>34}: {1e3 * rest / args.frames:6.3f} ms")

    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for k in range(0, args.frames, max(1, args.frames // 4)):
            out = camera.render(poses[k], frames[k], Lighting.sample(np.random.default_rng(k)))
            cv2.imwrite(str(args.save / f"rgb_{k:04d}.png"), cv2.cvtColor(out.rgb, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(args.save / f"sem_{k:04d}.png"), cv2.cvtColor(colorize(out.semantic), cv2.COLOR_RGB2BGR))
            depth = np.clip(np.log1p(out.depth) / np.log1p(camera.sky_depth_m) * 255, 0, 255).astype(np.uint8)
            cv2.imwrite(str(args.save / f"depth_{k:04d}.png"), depth)


if __name__ == "__main__":
    main()

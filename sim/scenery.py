"""Roadside scenery: buildings, trees and street lamps placed beside the roads from a seed.

Placement reads the ground raster: a distance transform of everything paved (road, road
line, sidewalk) gives each terrain cell its distance to the street, and its gradient the
direction the street lies in, so buildings face the road and nothing stands on it. No tree
grows within SIGNAL_CLEAR_M of a signal head: road design keeps a signal's face in sight of its
approach (the stopping sight distance of the MUTCD and its equivalents), and a crown over a
head at the stop line would hide its state from every camera for good.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from stagepilot.sim.render import palette
from stagepilot.sim.render.boxes import BoxSet
from stagepilot.sim.render.ground import GroundRaster

PAVED = (palette.ROAD, palette.ROAD_LINE, palette.SIDEWALK)
SIGNAL_CLEAR_M = 25.0  # [m] no tree's trunk this near a signal head
WALL_COLORS = np.array([(150, 120, 100), (180, 170, 150), (120, 110, 110), (200, 190, 170),
                        (140, 80, 60), (90, 100, 110), (170, 150, 120), (110, 120, 100)])


def build_scenery(ground: GroundRaster, rng: np.random.Generator, signals_xy=()) -> BoxSet:
    """Static boxes (instance 0) for buildings, trees and lamps over the whole map;
    ``signals_xy``: the signal heads' world positions, kept clear of trees."""
    step = max(ground.resolution_m, 0.25)
    paved = np.isin(ground.tags, PAVED)
    scale = max(int(round(step / ground.resolution_m)), 1)
    if scale > 1:  # a coarser grid keeps the distance transform cheap on big maps
        paved = cv2.resize(paved.astype(np.uint8), (paved.shape[1] // scale, paved.shape[0] // scale),
                           interpolation=cv2.INTER_AREA) > 0
    cell = ground.resolution_m * scale
    dist = cv2.distanceTransform((~paved).astype(np.uint8), cv2.DIST_L2, 5) * cell  # [m]
    gy, gx = np.gradient(cv2.GaussianBlur(dist, (0, 0), 3.0))
    sets = [
        _buildings(ground, rng, dist, gx, gy, cell, scale),
        _trees(ground, rng, dist, cell, scale, np.asarray(signals_xy, float).reshape(-1, 2)),
        _lamps(ground, rng, dist, gx, gy, cell, scale),
    ]
    return BoxSet.concat([s for s in sets if s is not None])


def _candidates(dist, low, high, spacing_cells, rng) -> np.ndarray:
    """(K, 2) grid cells (row, col) whose distance lies in [low, high), at most one per
    spacing x spacing block, chosen at random."""
    rows, cols = np.nonzero((dist >= low) & (dist < high))
    if len(rows) == 0:
        return np.zeros((0, 2), int)
    order = rng.permutation(len(rows))
    rows, cols = rows[order], cols[order]
    block = rows // spacing_cells * 1_000_003 + cols // spacing_cells
    _, first = np.unique(block, return_index=True)
    picked = np.sort(first)
    return np.stack([rows[picked], cols[picked]], 1)


def _to_world(ground: GroundRaster, cells: np.ndarray, scale: int) -> np.ndarray:
    colrow = cells[:, ::-1].astype(float) * scale + (scale - 1) / 2
    return ground.pixel_to_world(colrow)


def _facing(gx, gy, cells) -> np.ndarray:
    """World yaw pointing away from the road at each cell (raster rows run north to south)."""
    r, c = cells[:, 0], cells[:, 1]
    return np.arctan2(-gy[r, c], gx[r, c])


def _buildings(ground, rng, dist, gx, gy, cell, scale) -> BoxSet | None:
    cells = _candidates(dist, 9.0, 16.0, max(int(16.0 / cell), 1), rng)
    if len(cells) == 0:
        return None
    n = len(cells)
    xy = _to_world(ground, cells, scale)
    away = _facing(gx, gy, cells)
    depth = rng.uniform(8.0, 14.0, n)
    width = rng.uniform(8.0, 15.0, n)
    height = rng.choice([4.0, 7.0, 10.0, 14.0, 22.0], n) * rng.uniform(0.9, 1.2, n)
    # Push each building back so its front wall stands ~3-5 m off the pavement.
    front = dist[cells[:, 0], cells[:, 1]]
    back = np.maximum(depth / 2 + 3.5 - front, 0.0)
    cx = xy[:, 0] + np.cos(away) * back
    cy = xy[:, 1] + np.sin(away) * back
    keep = dist[cells[:, 0], cells[:, 1]] + back - depth / 2 > 2.5
    keep &= _clear(dist, ground, np.stack([cx, cy], 1), scale, np.hypot(depth, width) / 2 * 0.8)
    colors = WALL_COLORS[rng.integers(len(WALL_COLORS), size=n)] * rng.uniform(0.85, 1.1, (n, 1))
    boxes = BoxSet(np.stack([cx, cy, height / 2], 1), away, np.stack([depth, width, height], 1),
                   np.clip(colors, 0, 255), palette.BUILDING, 0)
    return boxes.select(keep)


def _clear(dist, ground, xy, scale, radius) -> np.ndarray:
    colrow = ground.world_to_pixel(xy) / scale
    col = np.clip(np.rint(colrow[:, 0]).astype(int), 0, dist.shape[1] - 1)
    row = np.clip(np.rint(colrow[:, 1]).astype(int), 0, dist.shape[0] - 1)
    return dist[row, col] > radius


def _trees(ground, rng, dist, cell, scale, signals_xy: np.ndarray) -> BoxSet | None:
    cells = _candidates(dist, 2.0, 6.0, max(int(9.0 / cell), 1), rng)
    if len(cells) == 0:
        return None
    n = len(cells)
    xy = _to_world(ground, cells, scale)
    trunk_h = rng.uniform(1.8, 3.0, n)
    crown = rng.uniform(2.5, 4.5, n)
    green = np.stack([rng.uniform(40, 90, n), rng.uniform(90, 150, n), rng.uniform(30, 60, n)], 1)
    yaw = rng.uniform(0, math.pi / 2, n)
    centers = np.concatenate([
        np.stack([xy[:, 0], xy[:, 1], trunk_h / 2], 1),
        np.stack([xy[:, 0], xy[:, 1], trunk_h + crown / 2], 1),
        np.stack([xy[:, 0], xy[:, 1], trunk_h + crown * 0.45], 1),
    ])
    sizes = np.concatenate([
        np.stack([np.full(n, 0.35), np.full(n, 0.35), trunk_h], 1),
        np.stack([crown, crown, crown], 1),
        np.stack([crown * 1.25, crown * 1.25, crown * 0.55], 1),
    ])
    rgb = np.concatenate([np.tile([[90, 65, 40]], (n, 1)), green, green * 0.85])
    yaws = np.concatenate([yaw, yaw, yaw + math.pi / 4])
    keep = np.ones(n, bool)
    if len(signals_xy):  # (drawn from the same rng either way: the rest of the scenery stays)
        keep = np.hypot(*(xy[:, None, :] - signals_xy[None, :, :]).transpose(2, 0, 1)).min(axis=1) > SIGNAL_CLEAR_M
    boxes = BoxSet(centers, yaws, sizes, np.clip(rgb, 0, 255), palette.VEGETATION, 0)
    return boxes.select(np.tile(keep, 3))


def _lamps(ground, rng, dist, gx, gy, cell, scale) -> BoxSet | None:
    cells = _candidates(dist, 0.4, 1.0, max(int(30.0 / cell), 1), rng)
    if len(cells) == 0:
        return None
    n = len(cells)
    xy = _to_world(ground, cells, scale)
    toward_road = _facing(gx, gy, cells) + math.pi
    arm_x = xy[:, 0] + np.cos(toward_road) * 0.9
    arm_y = xy[:, 1] + np.sin(toward_road) * 0.9
    centers = np.concatenate([np.stack([xy[:, 0], xy[:, 1], np.full(n, 3.5)], 1),
                              np.stack([arm_x, arm_y, np.full(n, 6.9)], 1)])
    sizes = np.concatenate([np.tile([[0.18, 0.18, 7.0]], (n, 1)), np.tile([[2.0, 0.25, 0.2]], (n, 1))])
    return BoxSet(centers, np.concatenate([toward_road, toward_road]), sizes, (110, 110, 115), palette.POLE, 0)

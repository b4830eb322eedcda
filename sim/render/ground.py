"""The flat ground (z = 0) of a map as two rasters: semantic tags and RGB appearance.

Built once per map and seed; cameras warp it into the image with a homography and a
bird's-eye-view drawer can read `tags` / `rgb` directly through `world_to_pixel`.
Raster rows run north to south (row 0 at ymax), columns west to east; pixel centres are at
integer raster coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, Sequence

import cv2
import numpy as np

from . import palette
from ._materials import MaterialTable, shade_materials

_SHIFT = 3  # fixed-point bits for sub-pixel polygon and line drawing
DASH_ON_M = 3.0
DASH_OFF_M = 6.0


class Marking(Protocol):
    """A painted line: anything with these attributes (e.g. core.lane_surfaces.LaneMarking)."""

    points: np.ndarray  # (N, 2) world [m]
    width_m: float
    rgb: tuple[int, int, int]
    dashed: bool


@dataclass(frozen=True)
class PaintedLine:
    """A plain `Marking` for maps built without the road map."""

    points: np.ndarray
    width_m: float = 0.15
    rgb: tuple[int, int, int] = (235, 235, 230)
    dashed: bool = False


@dataclass(frozen=True, eq=False)
class GroundRaster:
    """Tag and RGB rasters of the ground plane with the world <-> raster transform.

    tags: (H, W) uint8 CARLA tags; rgba_levels: (H, W, 4) uint8 albedo (alpha 255; four
    channels because OpenCV warps them several times faster than three) and its Gaussian
    pyramid (level L has cells 2**L times larger), used to filter distant ground.
    """

    bounds: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax [m]
    resolution_m: float
    tags: np.ndarray
    rgba_levels: tuple[np.ndarray, ...]
    default_tag: int
    default_rgb: tuple[int, int, int]  # what lies beyond the raster
    seed: int

    @classmethod
    def build(
        cls,
        polygons: Sequence[tuple[int, np.ndarray]],
        markings: Sequence[Marking],
        bounds: tuple[float, float, float, float],
        resolution_m: float = 0.1,
        seed: int = 0,
        default_tag: int = palette.TERRAIN,
    ) -> "GroundRaster":
        """Rasterise tagged world polygons (later over earlier) and painted markings.

        polygons: (tag, (N, 2) world xy) pairs; markings: objects with .points (N, 2),
        .width_m, .rgb and .dashed (3 m dash, 6 m gap); they get the ROAD_LINE tag.
        """
        xmin, ymin, xmax, ymax = (float(v) for v in bounds)
        if not (xmax > xmin and ymax > ymin and resolution_m > 0):
            raise ValueError(f"bad ground bounds {bounds} or resolution {resolution_m}")
        width = int(math.ceil((xmax - xmin) / resolution_m))
        height = int(math.ceil((ymax - ymin) / resolution_m))
        to_pixel = _world_to_pixel_matrix((xmin, ymin, xmax, ymax), resolution_m)
        materials = MaterialTable.for_seed(seed)

        material = np.full((height, width), default_tag, np.uint8)  # material id per cell
        for tag, points in polygons:
            pts = _fixed_point(to_pixel, np.asarray(points, float).reshape(-1, 2))
            cv2.fillPoly(material, [pts], int(tag), cv2.LINE_8, _SHIFT)
        _draw_markings(material, markings, to_pixel, resolution_m, materials)

        tags = cv2.LUT(material, materials.tag_lut)
        rgba = shade_materials(material, materials, resolution_m, (xmin, ymax), seed)
        levels = _pyramid(rgba)
        default_rgb = tuple(int(v) for v in materials.base_rgb[default_tag])
        return cls((xmin, ymin, xmax, ymax), float(resolution_m), tags, levels, int(default_tag), default_rgb, seed)  # type: ignore[arg-type]

    @cached_property
    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB albedo, contiguous (made on first use, for bird's-eye views)."""
        rgb = cv2.cvtColor(self.rgba_levels[0], cv2.COLOR_RGBA2RGB)
        rgb.flags.writeable = False
        return rgb

    @property
    def shape(self) -> tuple[int, int]:
        return self.tags.shape  # type: ignore[return-value]

    @property
    def world_to_pixel_matrix(self) -> np.ndarray:
        """(3, 3) affine: homogeneous world (x, y, 1) -> raster (col, row, 1)."""
        return _world_to_pixel_matrix(self.bounds, self.resolution_m)

    def world_to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) world xy [m] -> (N, 2) float raster (col, row)."""
        xy = np.asarray(xy, float).reshape(-1, 2)
        xmin, _, _, ymax = self.bounds
        return np.stack([(xy[:, 0] - xmin) / self.resolution_m - 0.5, (ymax - xy[:, 1]) / self.resolution_m - 0.5], 1)

    def pixel_to_world(self, colrow: np.ndarray) -> np.ndarray:
        """(N, 2) raster (col, row) -> (N, 2) world xy [m]."""
        colrow = np.asarray(colrow, float).reshape(-1, 2)
        xmin, _, _, ymax = self.bounds
        return np.stack([xmin + (colrow[:, 0] + 0.5) * self.resolution_m, ymax - (colrow[:, 1] + 0.5) * self.resolution_m], 1)

    def tag_at(self, xy: np.ndarray) -> np.ndarray:
        """(N,) tags at world points [m]; default_tag outside the raster."""
        colrow = np.rint(self.world_to_pixel(xy)).astype(np.int64)
        height, width = self.shape
        inside = (colrow[:, 0] >= 0) & (colrow[:, 0] < width) & (colrow[:, 1] >= 0) & (colrow[:, 1] < height)
        out = np.full(len(colrow), self.default_tag, np.uint8)
        out[inside] = self.tags[colrow[inside, 1], colrow[inside, 0]]
        return out


def _world_to_pixel_matrix(bounds: tuple[float, float, float, float], resolution_m: float) -> np.ndarray:
    xmin, _, _, ymax = bounds
    inv = 1.0 / resolution_m
    return np.array([[inv, 0.0, -xmin * inv - 0.5], [0.0, -inv, ymax * inv - 0.5], [0.0, 0.0, 1.0]])


def _fixed_point(to_pixel: np.ndarray, xy: np.ndarray) -> np.ndarray:
    colrow = xy @ to_pixel[:2, :2].T + to_pixel[:2, 2]
    return np.rint(colrow * (1 << _SHIFT)).astype(np.int32)


def _dashes(points: np.ndarray) -> list[np.ndarray]:
    """Split a polyline into its painted pieces: DASH_ON_M on, DASH_OFF_M off from the start."""
    seg = np.hypot(*np.diff(points, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    period = DASH_ON_M + DASH_OFF_M
    pieces = []
    for start in np.arange(0.0, s[-1], period):
        end = min(start + DASH_ON_M, s[-1])
        inner = (s > start) & (s < end)
        stations = np.concatenate([[start], s[inner], [end]])
        pieces.append(np.stack([np.interp(stations, s, points[:, 0]), np.interp(stations, s, points[:, 1])], 1))
    return pieces


def _draw_markings(
    material: np.ndarray,
    markings: Sequence[Marking],
    to_pixel: np.ndarray,
    resolution_m: float,
    materials: MaterialTable,
) -> None:
    """Fill each painted piece as quads of the exact width (cells whose centre is covered)."""
    for marking in markings:
        points = np.asarray(marking.points, float).reshape(-1, 2)
        if len(points) < 2:
            continue
        material_id = materials.marking_material(marking.rgb)
        for piece in _dashes(points) if marking.dashed else [points]:
            for quad in _segment_quads(piece, marking.width_m):
                cv2.fillConvexPoly(material, _fixed_point(to_pixel, quad), material_id, cv2.LINE_8, _SHIFT)


def _segment_quads(points: np.ndarray, width_m: float) -> np.ndarray:
    """(N-1, 4, 2) rectangles along a polyline; inner joints overlap by half a width."""
    start, end = points[:-1], points[1:]
    length = np.hypot(*(end - start).T)
    keep = length > 1e-9
    start, end, length = start[keep], end[keep], length[keep]
    if len(start) == 0:
        return np.zeros((0, 4, 2))
    direction = (end - start) / length[:, None]
    normal = np.column_stack([-direction[:, 1], direction[:, 0]]) * (width_m / 2)
    grow = np.full(len(start), width_m / 2)
    start = start - direction * np.where(np.arange(len(start)) > 0, grow, 0.0)[:, None]
    end = end + direction * np.where(np.arange(len(start)) < len(start) - 1, grow, 0.0)[:, None]
    return np.stack([start + normal, end + normal, end - normal, start - normal], 1)


def _pyramid(rgba: np.ndarray, min_side: int = 32, max_levels: int = 6) -> tuple[np.ndarray, ...]:
    levels = [rgba]
    while len(levels) < max_levels and min(levels[-1].shape[:2]) >= 2 * min_side:
        levels.append(cv2.pyrDown(levels[-1]))
    return tuple(levels)

"""Ground materials: per-material albedo, texture amplitudes and the raster shader.

A material id is a ground tag (0..28) or, from MARKING_MATERIAL0 on, one marking colour.
Tones are jittered by the map seed so a detector does not learn one asphalt grey.
"""

from __future__ import annotations

import cv2
import numpy as np

from . import palette

MARKING_MATERIAL0 = 100
_CHUNK_ROWS = 256
_GRAIN_TILE = 509  # px; prime so the repeat of the fine grain is hard to spot

# tag: (albedo, second albedo mixed in by large-scale noise, mix amount, large-scale
# brightness noise, fine grain, paving seam darkening)
_LOOKS = {
    palette.ROAD: ((92, 92, 95), (72, 72, 76), 0.35, 0.05, 0.09, 0.0),
    palette.SIDEWALK: ((166, 161, 153), (142, 138, 132), 0.3, 0.05, 0.06, 0.22),
    palette.TERRAIN: ((84, 106, 50), (128, 108, 78), 0.55, 0.12, 0.13, 0.0),
    palette.GROUND: ((128, 116, 98), (104, 97, 86), 0.5, 0.08, 0.12, 0.0),
    palette.WATER: ((48, 66, 84), (40, 58, 76), 0.4, 0.04, 0.03, 0.0),
    palette.ROAD_LINE: ((226, 226, 220), (200, 200, 196), 0.2, 0.05, 0.07, 0.0),
    palette.RAIL_TRACK: ((96, 88, 80), (120, 110, 100), 0.4, 0.06, 0.15, 0.0),
}


class MaterialTable:
    """Look-up tables indexed by material id (256 rows)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.tag_lut = np.zeros(256, np.uint8)
        self.base_rgb = np.zeros((256, 3), np.float32)
        self.alt_rgb = np.zeros((256, 3), np.float32)
        self.mix = np.zeros(256, np.float32)
        self.large_noise = np.zeros(256, np.float32)
        self.grain = np.zeros(256, np.float32)
        self.seam = np.zeros(256, np.float32)
        self._markings: dict[tuple[int, int, int], int] = {}
        for tag in range(len(palette.TAG_NAMES)):
            grey = tuple(0.35 * np.asarray(palette.CARLA_PALETTE[tag], float) + 70.0)
            self._set(tag, tag, _LOOKS.get(tag, (grey, grey, 0.0, 0.05, 0.06, 0.0)))

    @classmethod
    def for_seed(cls, seed: int) -> "MaterialTable":
        return cls(np.random.default_rng([seed, 0x6E0D]))

    def _set(self, material: int, tag: int, look: tuple) -> None:
        base, alt, mix, large, grain, seam = look
        gain = self.rng.uniform(0.85, 1.15)
        tint = 1.0 + self.rng.normal(0.0, 0.035, 3)
        self.tag_lut[material] = tag
        self.base_rgb[material] = np.asarray(base, float) * gain * tint
        self.alt_rgb[material] = np.asarray(alt, float) * gain * (1.0 + self.rng.normal(0.0, 0.05, 3))
        self.mix[material], self.large_noise[material], self.grain[material] = mix, large, grain
        self.seam[material] = -seam  # seams darken

    def marking_material(self, rgb: tuple[int, int, int]) -> int:
        """The material id of a marking colour, allocated on first use."""
        key = tuple(int(v) for v in rgb)
        if key not in self._markings:
            material = MARKING_MATERIAL0 + len(self._markings)
            if material > 255:
                raise ValueError("more than 156 distinct marking colours")
            _, _, mix, large, grain, seam = _LOOKS[palette.ROAD_LINE]
            look = (np.asarray(key) * 0.95, np.asarray(key) * 0.8, mix, large, grain, seam)
            self._set(material, palette.ROAD_LINE, look)
            self._markings[key] = material
        return self._markings[key]


class _SmoothNoise:
    """Value noise, std about 0.7, features about cell_px wide: a bilinear upsampling of a
    coarse random grid, evaluated a band of rows at a time."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int], cell_px: float):
        self.cell, self.width = float(cell_px), shape[1]
        self.coarse = rng.standard_normal((int(shape[0] / cell_px) + 3, int(shape[1] / cell_px) + 3)).astype(np.float32)

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """(r1 - r0, W) float32."""
        inv = 1.0 / self.cell
        to_coarse = np.array([[inv, 0.0, 0.5 * inv - 0.5], [0.0, inv, (r0 + 0.5) * inv - 0.5]])
        return cv2.warpAffine(
            self.coarse, to_coarse, (self.width, r1 - r0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
        )  # fmt: skip


def _seam_lines(count: int, origin_m: float, step_m: float, tile_m: float, resolution_m: float) -> np.ndarray:
    """(count,) float32, 1 on raster lines that hold a paving seam."""
    coord = origin_m + (np.arange(count) + 0.5) * step_m
    return (np.mod(coord, tile_m) < resolution_m).astype(np.float32)


def shade_materials(
    material: np.ndarray, table: MaterialTable, resolution_m: float, origin_xy: tuple[float, float], seed: int
) -> np.ndarray:
    """(H, W) material ids -> (H, W, 4) uint8 RGBA albedo (alpha 255) with grain, patches, seams."""
    rng = np.random.default_rng([seed, 0x7E87])
    height, width = material.shape
    large = _SmoothNoise(rng, (height, width), max(2.0, 4.0 / resolution_m))
    patches = _SmoothNoise(rng, (height, width), max(2.0, 14.0 / resolution_m))
    grain_tile = rng.standard_normal((_GRAIN_TILE, _GRAIN_TILE)).astype(np.float32)
    grain_tile = np.tile(grain_tile, (1, width // _GRAIN_TILE + 1))[:, :width]  # (tile, W)
    tile_m = rng.uniform(0.5, 0.9)
    seam_cols = _seam_lines(width, origin_xy[0], resolution_m, tile_m, resolution_m)
    seam_rows = _seam_lines(height, -origin_xy[1], resolution_m, tile_m, resolution_m)
    rgba = np.empty((height, width, 4), np.uint8)
    opaque = np.full((min(_CHUNK_ROWS, height), width), 255, np.uint8)
    for r0 in range(0, height, _CHUNK_ROWS):
        r1 = min(r0 + _CHUNK_ROWS, height)
        mat = material[r0:r1]
        grain = grain_tile[np.arange(r0, r1) % _GRAIN_TILE]
        seam = np.maximum(seam_rows[r0:r1, None], seam_cols[None, :])
        patch_mix = np.clip(0.5 + 1.3 * patches.rows(r0, r1), 0.0, 1.0)
        # factor = 1 + large-scale noise + grain - seam, each scaled per material
        factor = cv2.multiply(cv2.LUT(mat, table.large_noise), large.rows(r0, r1))
        cv2.accumulateProduct(cv2.LUT(mat, table.grain), grain, factor)
        cv2.accumulateProduct(cv2.LUT(mat, table.seam), seam, factor)
        factor += 1.0
        alt_weight = cv2.multiply(factor, cv2.multiply(cv2.LUT(mat, table.mix), patch_mix))
        base_weight = cv2.subtract(factor, alt_weight)
        channels = []
        for c in range(3):
            value = cv2.multiply(cv2.LUT(mat, table.base_rgb[:, c].copy()), base_weight)
            cv2.accumulateProduct(cv2.LUT(mat, table.alt_rgb[:, c].copy()), alt_weight, value)
            channels.append(cv2.convertScaleAbs(value))
        rgba[r0:r1] = cv2.merge(channels + [opaque[: r1 - r0]])
    return rgba

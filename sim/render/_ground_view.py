"""Per-camera ground and sky: what is fixed for a camera rigidly mounted on a planar ego.

The ground plane -> image map is a homography, so the ground is a perspective warp of the
ground raster; its depth, the horizon and hence the sky region do not change with the pose.
Distant rows read coarser levels of the raster pyramid to avoid aliasing.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from . import palette
from .camera import CameraSpec
from .ground import GroundRaster


class GroundView:
    """Ground/sky geometry of one camera, and the per-frame ground warp."""

    def __init__(self, spec: CameraSpec, ground: GroundRaster, sky_depth_m: float):
        self.spec, self.ground, self.sky_depth_m = spec, ground, float(sky_depth_m)
        height, width = spec.height, spec.width
        f, cx, cy = spec.focal_px, width / 2.0, height / 2.0
        self.ray_x = ((np.arange(width, dtype=np.float32) - cx) / f)[None, :].repeat(height, 0)  # (H, W)
        self.ray_y = ((np.arange(height, dtype=np.float32) - cy) / f)[:, None].repeat(width, 1)
        rot = spec.T_ego_cam[:3, :3]
        cam_height = spec.T_ego_cam[2, 3]
        if cam_height <= 0.0:
            raise ValueError(f"camera {spec.name!r} must be above the ground, z = {cam_height}")
        # ground plane z_ego = 0 in the camera frame: n_c . X = -h
        self.ground_plane = rot[2] / -cam_height  # (3,) 1/z = a rx + b ry + c
        a, b, c = self.ground_plane
        inv_depth = (a * self.ray_x + b * self.ray_y + c).astype(np.float32)
        self.is_ground = inv_depth > 1.0 / self.sky_depth_m  # (H, W) bool
        self._sky_inverse = np.full_like(inv_depth, np.float32(1.0 / self.sky_depth_m) * np.float32(1.0 - 1e-6))
        self._sky_depth = np.full_like(inv_depth, self.sky_depth_m)
        self.background_depth = self.depth_from_inverse(inv_depth)  # (H, W) [m]
        rows = np.flatnonzero(self.is_ground.any(axis=1))
        self.ground_row0 = int(rows[0]) if len(rows) else height  # rows above hold no ground
        sky_rows = np.flatnonzero((~self.is_ground).any(axis=1))
        self.sky_row1 = int(sky_rows[-1]) + 1 if len(sky_rows) else 0  # rows below hold no sky
        band = slice(self.ground_row0, self.sky_row1)
        self.band_sky_mask = (~self.is_ground[band]).astype(np.uint8)  # sky inside the horizon band
        ray_ego = np.stack([self.ray_x, self.ray_y, np.ones_like(self.ray_x)], -1) @ rot.T.astype(np.float32)
        self.elevation = np.arctan2(ray_ego[..., 2], np.hypot(ray_ego[..., 0], ray_ego[..., 1]))  # (H, W) rad
        self.row_levels = self._row_levels(rot, cam_height)

    def depth_from_inverse(self, inv_depth: np.ndarray) -> np.ndarray:
        """(H, W) float32 1/z -> z [m], exactly sky_depth_m where 1/z <= 1/sky_depth_m."""
        return cv2.min(1.0 / cv2.max(inv_depth, self._sky_inverse), self._sky_depth)

    def _row_levels(self, rot: np.ndarray, cam_height: float) -> list[tuple[int, int, int]]:
        """(row0, row1, pyramid level) bands covering the ground rows."""
        rays = np.stack([self.ray_x, self.ray_y, np.ones_like(self.ray_x)], -1).astype(np.float64) @ rot.T
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(self.is_ground, cam_height / -rays[..., 2], np.nan)
            ground_xy = self.spec.T_ego_cam[:2, 3] + rays[..., :2] * scale[..., None]  # (H, W, 2) ego
            du = np.gradient(ground_xy, axis=1)
            dv = np.gradient(ground_xy, axis=0)
            area = np.abs(du[..., 0] * dv[..., 1] - du[..., 1] * dv[..., 0])  # [m^2] per pixel
            level = np.log2(np.sqrt(area) / self.ground.resolution_m)
        max_level = len(self.ground.rgba_levels) - 1
        bands: list[tuple[int, int, int]] = []
        for row in range(self.ground_row0, self.spec.height):
            values = level[row][np.isfinite(level[row])]
            row_level = int(np.clip(math.floor(np.median(values)), 0, max_level)) if len(values) else max_level
            if bands and bands[-1][2] == row_level:
                bands[-1] = (bands[-1][0], row + 1, row_level)
            else:
                bands.append((row, row + 1, row_level))
        return bands

    def homography(self, ego_pose: tuple[float, float, float]) -> np.ndarray:
        """(3, 3) level-0 raster (col, row) -> image (u, v)."""
        rot_ce = self.spec.T_ego_cam[:3, :3].T
        t_ce = -rot_ce @ self.spec.T_ego_cam[:3, 3]
        image_from_ego = self.spec.K @ np.column_stack([rot_ce[:, 0], rot_ce[:, 1], t_ce])
        x, y, yaw = (float(v) for v in ego_pose)
        c, s = math.cos(yaw), math.sin(yaw)
        ego_from_world = np.array([[c, s, -(c * x + s * y)], [-s, c, s * x - c * y], [0.0, 0.0, 1.0]])
        world_from_raster = np.linalg.inv(self.ground.world_to_pixel_matrix)
        return image_from_ego @ ego_from_world @ world_from_raster

    def draw(self, ego_pose: tuple[float, float, float], rgba: np.ndarray, semantic: np.ndarray) -> None:
        """Warp the ground into rows ground_row0.. of rgba (H, W, 4) and semantic (H, W)."""
        if self.ground_row0 >= self.spec.height:
            return
        width, height = self.spec.width, self.spec.height
        raster_from_image = np.linalg.inv(self.homography(ego_pose))
        row0 = self.ground_row0
        cv2.warpPerspective(
            self.ground.tags, raster_from_image @ _shift_rows(row0), (width, height - row0), semantic[row0:],
            cv2.WARP_INVERSE_MAP | cv2.INTER_NEAREST, cv2.BORDER_CONSTANT, self.ground.default_tag,
        )  # fmt: skip
        border = self.ground.default_rgb + (255,)
        for r0, r1, level in self.row_levels:
            scale = float(2**level)
            raster0_from_level = np.array([[scale, 0.0, scale / 2 - 0.5], [0.0, scale, scale / 2 - 0.5], [0, 0, 1]])
            to_level = np.linalg.inv(raster0_from_level) @ raster_from_image @ _shift_rows(r0)
            cv2.warpPerspective(
                self.ground.rgba_levels[level], to_level, (width, r1 - r0), rgba[r0:r1],
                cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR, cv2.BORDER_CONSTANT, border,
            )  # fmt: skip

    def fill_sky(self, sky_rgba: np.ndarray, rgba: np.ndarray, semantic: np.ndarray) -> None:
        """Paint the fixed sky region: rows above the ground fully, the horizon band by mask."""
        r0, r1 = self.ground_row0, self.sky_row1
        rgba[:r0] = sky_rgba[:r0]
        semantic[:r0] = palette.SKY
        if r1 > r0:
            cv2.copyTo(sky_rgba[r0:r1], self.band_sky_mask, rgba[r0:r1])
            semantic[r0:r1][self.band_sky_mask.astype(bool)] = palette.SKY

    def sky_image(self, top_rgb: tuple[int, int, int], horizon_rgb: tuple[int, int, int]) -> np.ndarray:
        """(H, W, 3) float32 sky gradient from the horizon colour up to the zenith colour."""
        t = np.clip(self.elevation / 0.7, 0.0, 1.0) ** 0.6
        top, horizon = np.asarray(top_rgb, np.float32), np.asarray(horizon_rgb, np.float32)
        return horizon + (top - horizon) * t[..., None]


def _shift_rows(row0: int) -> np.ndarray:
    """(3, 3) output-band pixel -> full-image pixel."""
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, float(row0)], [0.0, 0.0, 1.0]])

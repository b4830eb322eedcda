"""Software camera: RGB, CARLA semantic tags, depth and instance ids from ground + boxes.

Per frame: warp the ground raster (a homography for a planar ego), paint the fixed sky
region, draw camera-facing box faces far to near into a face-id buffer, then derive every
output from the face ids with look-up tables (exact per-pixel depth from each face's plane,
since 1/z is affine in the image on a plane). Lighting, fog and sensor noise come last.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np

from ._faces import SHIFT, BoxGeometry, Faces, Viewpoint, camera_faces, cull
from ._ground_view import GroundView
from ._ordering import painter_order
from ._shading import FOG_BITS, FOG_LEVELS, LightingTables, face_colours
from .boxes import BoxSet
from .camera import CameraSpec, T_world_cam
from .ground import GroundRaster
from .lighting import Lighting

__all__ = ["OUTLINE_MARGIN_PX", "BoxSet", "CameraRenderer", "Lighting", "RenderOutput", "visible_boxes"]

# cv2.fillConvexPoly (LINE_8) fills the pixels a face's outline passes through as well as those
# inside it, so every silhouette, and the 2D box around it, reaches this far past the object's
# true outline on average [px]. Measured on a car 7-40 m ahead: box bottom edge minus the
# projected lowest point = 1.0 px in K's pixel coordinates (0.5 to 1.5; half a pixel of that is
# the edge-to-centre convention of perception/geometry.py, half this margin).
OUTLINE_MARGIN_PX = 0.5

_NOISE_PAD = 61  # px of slack around the frame in the noise tile; offsets pick the view


@dataclass(frozen=True, eq=False)
class RenderOutput:
    """One camera frame. rgb (H, W, 3) uint8 RGB; semantic (H, W) uint8 CARLA tags;
    depth (H, W) float32 camera-frame z [m] (sky: the renderer's sky_depth_m);
    instance (H, W) int32, 0 where no object."""

    rgb: np.ndarray
    semantic: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    # unoccluded silhouettes of instances: fixed-point (SHIFT) polygons and their instance ids
    silhouette_polygons: list[np.ndarray] = field(default_factory=list, repr=False)
    silhouette_instances: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32), repr=False)


class CameraRenderer:
    """Renders one camera for a given ground raster and static scenery (culled per frame).

    near_m clips faces that cross the camera's near plane; boxes farther than max_distance_m
    (bounding sphere) are not drawn; sky pixels get depth sky_depth_m, and ground farther
    than that counts as sky.
    """

    def __init__(
        self,
        spec: CameraSpec,
        ground: GroundRaster,
        static_boxes: BoxSet,
        *,
        max_distance_m: float = 150.0,
        near_m: float = 0.05,
        sky_depth_m: float = 1000.0,
    ):
        self.spec, self.ground = spec, ground
        self.max_distance_m, self.near_m, self.sky_depth_m = float(max_distance_m), float(near_m), float(sky_depth_m)
        self.static = BoxGeometry.of(static_boxes)
        self.ground_view = GroundView(spec, ground, sky_depth_m)
        self._lighting_cache: dict[Lighting, LightingTables] = {}
        self._noise_cache: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}

    def render(
        self,
        ego_pose: tuple[float, float, float],
        dynamic_boxes: BoxSet | None = None,
        lighting: Lighting | None = None,
        *,
        frame_index: int | None = None,
    ) -> RenderOutput:
        """Render at ego pose (x, y, yaw) [m, rad] with the given actors and lighting.

        frame_index only picks the sensor-noise pattern (default: derived from the pose), so
        the same inputs always give byte-identical outputs.
        """
        lighting = lighting or Lighting.default()
        tables = self._tables(lighting)
        view = self._viewpoint(ego_pose)
        height, width = self.spec.height, self.spec.width
        rgba = np.empty((height, width, 4), np.uint8)  # 4 channels: OpenCV's fast paths
        semantic = np.empty((height, width), np.uint8)
        ground = rgba[self.ground_view.ground_row0 :]
        self.ground_view.draw(ego_pose, rgba, semantic)
        cv2.multiply(ground, tables.ground_gain, ground, 1.0 / tables.gain_one)  # sun, exposure, fog
        cv2.add(ground, tables.ground_haze, ground)
        self.ground_view.fill_sky(tables.sky_rgba, rgba, semantic)

        geometry = self._visible_geometry(view, dynamic_boxes)
        faces = camera_faces(geometry, view)
        face_id, drawn = self._draw_faces(geometry, faces, view)
        depth, instance = self._compose(geometry, faces, drawn, face_id, lighting, rgba, semantic)
        rgba = self._apply_noise(rgba, lighting, ego_pose, frame_index)
        rgb = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
        with_instance = drawn[geometry.instance[faces.box[drawn]] > 0]
        polygons = [faces.polygons[i] for i in with_instance]
        return RenderOutput(rgb, semantic, depth, instance, polygons, geometry.instance[faces.box[with_instance]])

    # -- geometry --------------------------------------------------------------------------
    def _viewpoint(self, ego_pose: tuple[float, float, float]) -> Viewpoint:
        transform = T_world_cam(self.spec, ego_pose)
        spec = self.spec
        return Viewpoint(transform[:3, :3], transform[:3, 3], spec.focal_px, spec.width / 2.0, spec.height / 2.0, spec.width, spec.height, self.near_m)

    def _visible_geometry(self, view: Viewpoint, dynamic_boxes: BoxSet | None) -> BoxGeometry:
        geometry = self.static.select(cull(self.static, view, self.max_distance_m))
        if dynamic_boxes is not None and len(dynamic_boxes):
            dynamic = BoxGeometry.of(dynamic_boxes)
            geometry = BoxGeometry.concat([geometry, dynamic.select(cull(dynamic, view, self.max_distance_m))])
        return geometry

    def _draw_faces(self, geometry: BoxGeometry, faces: Faces, view: Viewpoint) -> tuple[np.ndarray, np.ndarray]:
        """Face-id buffer (H, W) int32 (0 = background, i + 1 = face i) and drawn faces in order."""
        face_id = np.zeros((view.height, view.width), np.int32)
        rects = faces.rects
        on_screen = (rects[:, 2] >= -0.5) & (rects[:, 0] <= view.width - 0.5)
        on_screen &= (rects[:, 3] >= -0.5) & (rects[:, 1] <= view.height - 0.5)
        candidates = np.flatnonzero(on_screen)
        if len(candidates) == 0:
            return face_id, candidates
        boxes_used, first = np.unique(faces.box[candidates], return_index=True)
        box_rects = np.concatenate(
            [np.minimum.reduceat(rects[candidates, :2], first), np.maximum.reduceat(rects[candidates, 2:], first)], 1
        )
        order = painter_order(
            geometry.center[boxes_used], geometry.yaw[boxes_used], geometry.half[boxes_used], box_rects, view.position
        )
        rank = np.empty(len(boxes_used), np.intp)
        rank[order] = np.arange(len(order))
        box_rank = rank[np.searchsorted(boxes_used, faces.box[candidates])]
        drawn = candidates[np.argsort(box_rank, kind="stable")]
        polygons = faces.polygons
        for index in drawn.tolist():
            cv2.fillConvexPoly(face_id, polygons[index], index + 1, cv2.LINE_8, SHIFT)
        return face_id, drawn

    # -- shading ----------------------------------------------------------------------------
    def _compose(
        self,
        geometry: BoxGeometry,
        faces: Faces,
        drawn: np.ndarray,
        face_id: np.ndarray,
        lighting: Lighting,
        rgba: np.ndarray,
        semantic: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Paint box pixels into rgba / semantic in place; return depth and instance images."""
        count = len(faces.box) + 1
        ground_view = self.ground_view
        if len(drawn) == 0:
            return ground_view.background_depth.copy(), np.zeros(face_id.shape, np.int32)
        index = face_id.astype(np.intp)  # np.take would convert on every call
        plane = np.empty((3, count), np.float32)  # 1/z coefficients; column 0: the ground plane
        plane[:, 0] = ground_view.ground_plane
        plane[:, 1:] = faces.inv_depth.T
        inv_depth = np.take(plane[0], index) * ground_view.ray_x
        inv_depth += np.take(plane[1], index) * ground_view.ray_y
        inv_depth += np.take(plane[2], index)
        depth = self.ground_view.depth_from_inverse(inv_depth)
        instance_lut = np.zeros(count, np.int32)
        instance_lut[1:] = geometry.instance[faces.box]
        instance = np.take(instance_lut, index)
        colours = face_colours(geometry, faces, lighting)  # (F + 1, levels) packed RGB + tag
        if colours.shape[1] > 1:  # fog: index the colour by face and quantised transmittance
            keep = cv2.exp(depth * np.float32(-lighting.fog_density))
            index = np.left_shift(face_id, FOG_BITS)
            index |= cv2.convertScaleAbs(keep, alpha=-(FOG_LEVELS - 1), beta=FOG_LEVELS - 1)
        face_rgbt = np.take(colours.ravel(), index).view(np.uint8).reshape(rgba.shape)
        covered = cv2.compare(face_id, 0, cv2.CMP_GT)
        cv2.copyTo(cv2.extractChannel(face_rgbt, 3), covered, semantic)
        cv2.copyTo(face_rgbt, covered, rgba)  # rgba's alpha is dropped at the end
        return depth, instance

    def _tables(self, lighting: Lighting) -> LightingTables:
        """What a lighting fixes for this camera: ground gain and haze, the fogged sky."""
        tables = self._lighting_cache.get(lighting)
        if tables is None:
            if len(self._lighting_cache) >= 8:
                self._lighting_cache.clear()
            tables = LightingTables.build(self.ground_view, lighting)
            self._lighting_cache[lighting] = tables
        return tables

    def _apply_noise(
        self, rgba: np.ndarray, lighting: Lighting, ego_pose: tuple[float, float, float], frame_index: int | None
    ) -> np.ndarray:
        if lighting.noise_std <= 0.0:
            return rgba
        up, down = self._noise_tiles(lighting.noise_seed, lighting.noise_std)
        if frame_index is None:
            key = zlib.crc32(struct.pack("<3d", *(float(v) for v in ego_pose)))
        else:
            key = zlib.crc32(struct.pack("<q", int(frame_index)))
        oy, ox = key % (_NOISE_PAD + 1), (key >> 12) % (_NOISE_PAD + 1)
        height, width = rgba.shape[:2]
        window = (slice(oy, oy + height), slice(ox, ox + width))
        return cv2.subtract(cv2.add(rgba, up[window]), down[window])

    def _noise_tiles(self, seed: int, std: float) -> tuple[np.ndarray, np.ndarray]:
        """Positive and negative parts of a Gaussian RGB noise tile a bit larger than the frame."""
        key = (int(seed), float(std))
        tiles = self._noise_cache.get(key)
        if tiles is None:
            if len(self._noise_cache) >= 4:
                self._noise_cache.clear()
            shape = (self.spec.height + _NOISE_PAD, self.spec.width + _NOISE_PAD, 4)
            noise = np.rint(np.random.default_rng(key[0]).standard_normal(shape, np.float32) * std)
            noise[..., 3] = 0.0
            tiles = (np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8))
            self._noise_cache[key] = tiles
        return tiles


def visible_boxes(output: RenderOutput, dynamic_boxes: BoxSet) -> dict[int, tuple[int, int, int, int, float]]:
    """Occlusion-aware 2D boxes: instance -> (x0, y0, x1, y1, visible_fraction).

    Bounds are pixel indices with x1, y1 exclusive (width = x1 - x0) around the instance's
    visible pixels; visible_fraction = visible pixels / pixels its unoccluded silhouette
    covers inside the image. Instances with no visible pixel are left out.
    """
    wanted = set(np.unique(dynamic_boxes.instance[dynamic_boxes.instance > 0]).tolist())
    height, width = output.instance.shape
    result: dict[int, tuple[int, int, int, int, float]] = {}
    by_instance: dict[int, list[np.ndarray]] = {}
    for polygon, inst in zip(output.silhouette_polygons, output.silhouette_instances.tolist()):
        if inst in wanted:
            by_instance.setdefault(inst, []).append(polygon)
    for inst, polygons in by_instance.items():
        points = np.concatenate(polygons) >> SHIFT
        x0, y0 = np.maximum(points.min(axis=0) - 1, 0)
        x1, y1 = np.minimum(points.max(axis=0) + 2, (width, height))
        if x1 <= x0 or y1 <= y0:
            continue
        visible = (output.instance[y0:y1, x0:x1] == inst).view(np.uint8)
        seen = cv2.countNonZero(visible)
        if seen == 0:
            continue
        silhouette = np.zeros((y1 - y0, x1 - x0), np.uint8)
        offset = np.array([x0, y0], np.int32) << SHIFT
        for polygon in polygons:
            cv2.fillConvexPoly(silhouette, polygon - offset, 1, cv2.LINE_8, SHIFT)
        bx, by, bw, bh = cv2.boundingRect(visible)
        result[inst] = (int(x0 + bx), int(y0 + by), int(x0 + bx + bw), int(y0 + by + bh), seen / max(cv2.countNonZero(silhouette), seen))
    return result

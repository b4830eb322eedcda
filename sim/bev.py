"""Bird's-eye views for videos: the whole map with the route, and an ego-centred close-up.

Both read the ground raster's RGB texture, so the views show the same roads, sidewalks and
markings the cameras see.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from stagepilot.sim.render.ground import GroundRaster

KIND_BGR = {"vehicle": (200, 120, 30), "pedestrian": (60, 60, 230), "static": (0, 140, 255)}
LIGHT_BGR = {"red": (40, 40, 230), "yellow": (20, 200, 240), "green": (60, 200, 60)}
EGO_BGR = (40, 220, 40)
ROUTE_BGR = (230, 80, 230)
PLAN_BGR = (255, 255, 0)


class BevDrawer:
    def __init__(self, ground: GroundRaster, route_points: np.ndarray, size: tuple[int, int] = (640, 360)):
        self.ground = ground
        self.size = size
        self.route = route_points
        rows, cols = ground.shape
        self.scale = min(size[0] / cols, size[1] / rows)  # view px per raster px
        small = cv2.resize(ground.rgb, (max(int(cols * self.scale), 1), max(int(rows * self.scale), 1)),
                           interpolation=cv2.INTER_AREA)
        self.map_bgr = np.full((size[1], size[0], 3), 40, np.uint8)
        self.offset = ((size[0] - small.shape[1]) // 2, (size[1] - small.shape[0]) // 2)
        self.map_bgr[self.offset[1]:self.offset[1] + small.shape[0],
                     self.offset[0]:self.offset[0] + small.shape[1]] = small[..., ::-1]
        cv2.polylines(self.map_bgr, [self._global_px(route_points)], False, ROUTE_BGR, 2, cv2.LINE_AA)

    def _global_px(self, xy: np.ndarray) -> np.ndarray:
        px = self.ground.world_to_pixel(xy) * self.scale + np.array(self.offset)
        return np.rint(px).astype(np.int32)

    def global_view(self, ego, agents, lights) -> np.ndarray:
        img = self.map_bgr.copy()
        for agent in agents:
            cv2.fillPoly(img, [self._global_px(agent.corners())], KIND_BGR.get(agent.kind, (255, 255, 255)))
        for light_xy, state in lights:
            cv2.circle(img, tuple(self._global_px(np.array([light_xy]))[0]), 3, LIGHT_BGR[state], -1)
        cv2.fillPoly(img, [self._global_px(ego.corners())], EGO_BGR)
        center = tuple(self._global_px(np.array([[ego.x, ego.y]]))[0])
        cv2.circle(img, center, 9, EGO_BGR, 2, cv2.LINE_AA)
        return img

    def local_view(self, ego, agents, lights, meters_per_px: float = 0.125, plan=None) -> np.ndarray:
        """Ego-centred view, heading up, ego a third from the bottom."""
        w, h = self.size
        # world -> view: rotate so the ego heading points up, scale, translate.
        c, s = math.cos(ego.yaw), math.sin(ego.yaw)
        k = 1.0 / meters_per_px
        anchor = np.array([w / 2, h * 0.68])
        world_to_view = np.array([[s * k, -c * k, 0.0], [-c * k, -s * k, 0.0]])
        world_to_view[:, 2] = anchor - world_to_view[:, :2] @ np.array([ego.x, ego.y])
        raster_to_world = np.linalg.inv(self.ground.world_to_pixel_matrix)[:2]
        raster_to_view = world_to_view[:, :2] @ raster_to_world[:, :2]
        raster_offset = world_to_view[:, :2] @ raster_to_world[:, 2] + world_to_view[:, 2]
        affine = np.hstack([raster_to_view, raster_offset[:, None]])
        img = cv2.warpAffine(self.ground.rgb, affine, (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(60, 60, 60))[..., ::-1].copy()

        def view(xy):
            xy = np.asarray(xy, float).reshape(-1, 2)
            return np.rint(xy @ world_to_view[:, :2].T + world_to_view[:, 2]).astype(np.int32)

        cv2.polylines(img, [view(self.route)], False, ROUTE_BGR, 2, cv2.LINE_AA)
        for agent in agents:
            cv2.fillPoly(img, [view(agent.corners())], KIND_BGR.get(agent.kind, (255, 255, 255)), cv2.LINE_AA)
        for light_xy, state in lights:
            cv2.circle(img, tuple(view(light_xy)[0]), 5, LIGHT_BGR[state], -1, cv2.LINE_AA)
        if plan is not None and len(plan.x) > 1:
            cv2.polylines(img, [view(np.stack([plan.x, plan.y], 1))], False, PLAN_BGR, 3, cv2.LINE_AA)
        cv2.fillPoly(img, [view(ego.corners())], EGO_BGR, cv2.LINE_AA)
        return img

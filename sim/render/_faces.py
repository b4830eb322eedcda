"""Box geometry prepared for drawing: culling, camera-facing faces, near clipping, projection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes import FACE_AXIS, FACE_CORNERS, FACE_SIGN, BoxSet

SHIFT = 4  # fixed-point bits handed to cv2.fillConvexPoly
_ONE = 1 << SHIFT
_MAX_PX = 4.0e7  # keep fixed-point coordinates inside int32
_GUARD_PX = 1000.0  # polygons reaching farther outside the image than this are clipped


_COLUMNS = ("center", "yaw", "half", "rgb", "tag", "instance", "emissive", "corners", "normals", "offsets", "radius")


@dataclass(frozen=True, eq=False)
class BoxGeometry:
    """Boxes as plain arrays plus their world-frame geometry (computed once for scenery)."""

    center: np.ndarray  # (N, 3)
    yaw: np.ndarray  # (N,)
    half: np.ndarray  # (N, 3) half sizes
    rgb: np.ndarray  # (N, 3) uint8
    tag: np.ndarray  # (N,) uint8
    instance: np.ndarray  # (N,) int32
    emissive: np.ndarray  # (N,) bool
    corners: np.ndarray  # (N, 8, 3)
    normals: np.ndarray  # (N, 6, 3) outward unit face normals
    offsets: np.ndarray  # (N, 6) n . x on each face plane
    radius: np.ndarray  # (N,) bounding-sphere radius

    @classmethod
    def of(cls, boxes: BoxSet) -> "BoxGeometry":
        x_axis, y_axis = boxes.axes()
        z_axis = np.broadcast_to([0.0, 0.0, 1.0], x_axis.shape)
        local_axes = np.stack([x_axis, y_axis, z_axis], 1)  # (N, 3, 3) rows = box axes
        normals = local_axes[:, FACE_AXIS] * FACE_SIGN[None, :, None]  # (N, 6, 3)
        half = boxes.size / 2.0
        face_points = boxes.center[:, None, :] + normals * half[:, FACE_AXIS][..., None]
        offsets = np.einsum("nfk,nfk->nf", normals, face_points)
        radius = np.linalg.norm(half, axis=1)
        return cls(
            boxes.center, boxes.yaw, half, boxes.rgb, boxes.tag, boxes.instance, boxes.emissive,
            boxes.corners(), normals, offsets, radius,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.center)

    def select(self, index: np.ndarray) -> "BoxGeometry":
        return BoxGeometry(*(getattr(self, name)[index] for name in _COLUMNS))

    @staticmethod
    def concat(parts: list["BoxGeometry"]) -> "BoxGeometry":
        return BoxGeometry(*(np.concatenate([getattr(p, name) for p in parts]) for name in _COLUMNS))


@dataclass(frozen=True)
class Viewpoint:
    """A camera pose in the world plus its frustum, for one frame."""

    rotation: np.ndarray  # (3, 3) R_world_cam
    position: np.ndarray  # (3,) camera centre, world [m]
    focal_px: float
    cx: float
    cy: float
    width: int
    height: int
    near_m: float

    def frustum_normals(self) -> np.ndarray:
        """(4, 3) outward unit normals of the side planes, camera frame."""
        tx, ty = (self.width / 2.0) / self.focal_px, (self.height / 2.0) / self.focal_px
        normals = np.array([[1.0, 0.0, -tx], [-1.0, 0.0, -tx], [0.0, 1.0, -ty], [0.0, -1.0, -ty]])
        return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def cull(geometry: BoxGeometry, view: Viewpoint, max_distance_m: float) -> np.ndarray:
    """Indices of boxes whose bounding sphere is within range and touches the frustum."""
    if len(geometry) == 0:
        return np.zeros(0, np.intp)
    rel = geometry.center - view.position
    cam = rel @ view.rotation  # (N, 3) camera frame
    r = geometry.radius
    keep = (np.einsum("nk,nk->n", rel, rel) < (max_distance_m + r) ** 2) & (cam[:, 2] > view.near_m - r)
    keep &= np.all(cam @ view.frustum_normals().T <= r[:, None], axis=1)
    return np.flatnonzero(keep)


@dataclass(frozen=True, eq=False)
class Faces:
    """Camera-facing faces of a set of boxes, projected; faces are grouped by box."""

    box: np.ndarray  # (F,) index into the BoxGeometry
    polygons: list[np.ndarray]  # F fixed-point (k, 2) int32 image polygons
    rects: np.ndarray  # (F, 4) float x0, y0, x1, y1 image bounds [px], clipped to [-1, W] x [-1, H]
    normals: np.ndarray  # (F, 3) world unit normals
    inv_depth: np.ndarray  # (F, 3) a, b, c with 1/z = a (u-cx)/f + b (v-cy)/f + c


def camera_faces(geometry: BoxGeometry, view: Viewpoint) -> Faces:
    """Back-face cull, clip at the near plane and project every box face."""
    facing = np.einsum("nfk,k->nf", geometry.normals, view.position) - geometry.offsets > 1e-6
    box, face = np.nonzero(facing)
    verts = geometry.corners[box[:, None], FACE_CORNERS[face]]  # (F, 4, 3) world
    verts = (verts - view.position) @ view.rotation  # camera frame
    z = verts[..., 2]
    front = z.max(axis=1) > view.near_m
    box, face, verts, z = box[front], face[front], verts[front], z[front]
    whole = z.min(axis=1) > view.near_m

    uv = np.zeros(verts.shape[:2] + (2,))
    uv[whole] = _project(verts[whole], view)
    polygons = list(np.rint(uv * _ONE).astype(np.int32))
    rects = np.concatenate([uv.min(axis=1), uv.max(axis=1)], axis=1)
    guard = (-_GUARD_PX, -_GUARD_PX, view.width - 1 + _GUARD_PX, view.height - 1 + _GUARD_PX)
    oversized = (rects[:, 0] < guard[0]) | (rects[:, 1] < guard[1]) | (rects[:, 2] > guard[2]) | (rects[:, 3] > guard[3])
    for i in np.flatnonzero(~whole | oversized):
        polygon = uv[i] if whole[i] else _project(_clip_near(verts[i], view.near_m), view)
        # OpenCV's fill walks every scanline of a polygon, so cut huge ones to the image
        polygon = _clip_rect(polygon, guard)
        if len(polygon) < 3:
            polygon = np.full((3, 2), -_GUARD_PX - 1.0)  # wholly outside the image
        polygons[i] = np.rint(polygon * _ONE).astype(np.int32)
        rects[i] = (*polygon.min(axis=0), *polygon.max(axis=0))
    np.clip(rects, -1.0, [view.width, view.height, view.width, view.height], out=rects)

    normals = geometry.normals[box, face]
    normals_cam = normals @ view.rotation
    plane_offset = np.einsum("fk,fk->f", normals_cam, verts[:, 0])  # n . X for X on the face (< 0)
    inv_depth = normals_cam / plane_offset[:, None]
    return Faces(box, polygons, rects, normals, inv_depth)


def _project(points: np.ndarray, view: Viewpoint) -> np.ndarray:
    """(..., 3) camera-frame points in front of the camera -> (..., 2) pixels."""
    uv = points[..., :2] / points[..., 2:3] * view.focal_px + (view.cx, view.cy)
    return np.clip(uv, -_MAX_PX, _MAX_PX)


def _clip_near(polygon: np.ndarray, near_m: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a (k, 3) convex polygon to z >= near_m."""
    out = []
    count = len(polygon)
    for i in range(count):
        a, b = polygon[i], polygon[(i + 1) % count]
        a_in, b_in = a[2] >= near_m, b[2] >= near_m
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (near_m - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out)


def _clip_rect(polygon: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    """Sutherland-Hodgman clip of a (k, 2) convex polygon to x0 <= x <= x1, y0 <= y <= y1."""
    x0, y0, x1, y1 = rect
    for axis, bound, keep_below in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        if len(polygon) == 0:
            break
        out = []
        count = len(polygon)
        for i in range(count):
            a, b = polygon[i], polygon[(i + 1) % count]
            a_in = a[axis] <= bound if keep_below else a[axis] >= bound
            b_in = b[axis] <= bound if keep_below else b[axis] >= bound
            if a_in:
                out.append(a)
            if a_in != b_in:
                t = (bound - a[axis]) / (b[axis] - a[axis])
                out.append(a + t * (b - a))
        polygon = np.array(out).reshape(-1, 2)
    return polygon

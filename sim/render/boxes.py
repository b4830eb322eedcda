"""Oriented 3D boxes in the world frame, the only solid primitive the renderer draws."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Corner k of a box has local sign (sx, sy, sz) = bits of k: x from bit 0, y bit 1, z bit 2.
CORNER_SIGNS = np.array([[(k & 1) * 2 - 1, (k >> 1 & 1) * 2 - 1, (k >> 2 & 1) * 2 - 1] for k in range(8)], float)
# Faces: +x, -x, +y, -y, +z, -z as corner quads in boundary order, and their local normals.
FACE_CORNERS = np.array(
    [[1, 3, 7, 5], [0, 4, 6, 2], [2, 6, 7, 3], [0, 1, 5, 4], [4, 5, 7, 6], [0, 2, 3, 1]], np.intp
)
FACE_AXIS = np.array([0, 0, 1, 1, 2, 2], np.intp)  # which local axis a face's normal lies on
FACE_SIGN = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])


def _column(values, n: int, dtype, width: int | None = None) -> np.ndarray:
    shape = (n,) if width is None else (n, width)
    array = np.ascontiguousarray(np.broadcast_to(np.asarray(values, dtype), shape))
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class BoxSet:
    """N oriented boxes, struct of arrays, world frame [m, rad].

    center (N, 3): box centre (z is the centre height); yaw (N,): about world z, CCW from +x;
    size (N, 3): length along the box x, width, height; rgb (N, 3) uint8 albedo; tag (N,)
    uint8 CARLA semantic tag; instance (N,) int32, 0 = not an object (buildings, trees);
    boxes sharing an instance id form one actor. emissive (N,) bool: drawn unshaded at full
    colour (lit lamps). Inputs broadcast, so scalars work for the per-box columns.
    """

    center: np.ndarray
    yaw: np.ndarray
    size: np.ndarray
    rgb: np.ndarray
    tag: np.ndarray
    instance: np.ndarray
    emissive: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __post_init__(self) -> None:
        n = int(np.asarray(self.center).reshape(-1, 3).shape[0])
        emissive = self.emissive if np.size(self.emissive) else False
        columns = {
            "center": _column(np.asarray(self.center, float).reshape(-1, 3), n, np.float64, 3),
            "yaw": _column(self.yaw, n, np.float64),
            "size": _column(self.size, n, np.float64, 3),
            "rgb": _column(self.rgb, n, np.uint8, 3),
            "tag": _column(self.tag, n, np.uint8),
            "instance": _column(self.instance, n, np.int32),
            "emissive": _column(emissive, n, bool),
        }
        for name, value in columns.items():
            object.__setattr__(self, name, value)
        if np.any(self.size <= 0.0):
            raise ValueError("box sizes must be positive")

    def __len__(self) -> int:
        return int(self.center.shape[0])

    @classmethod
    def empty(cls) -> "BoxSet":
        return cls(np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))

    @classmethod
    def concat(cls, boxsets: list["BoxSet"]) -> "BoxSet":
        boxsets = [b for b in boxsets if len(b)]
        if not boxsets:
            return cls.empty()
        return cls(*(np.concatenate([getattr(b, name) for b in boxsets]) for name in _FIELDS))

    def select(self, index: np.ndarray) -> "BoxSet":
        """The boxes at `index` (int indices or a bool mask)."""
        return BoxSet(*(getattr(self, name)[index] for name in _FIELDS))

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit box x and y axes in the world, each (N, 3)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        zeros = np.zeros_like(c)
        return np.stack([c, s, zeros], 1), np.stack([-s, c, zeros], 1)

    def corners(self) -> np.ndarray:
        """(N, 8, 3) world corners, indexed as CORNER_SIGNS."""
        half = self.size / 2.0
        local = CORNER_SIGNS[None] * half[:, None, :]  # (N, 8, 3)
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        world = np.empty_like(local)
        world[..., 0] = c * local[..., 0] - s * local[..., 1]
        world[..., 1] = s * local[..., 0] + c * local[..., 1]
        world[..., 2] = local[..., 2]
        return world + self.center[:, None, :]


_FIELDS = ("center", "yaw", "size", "rgb", "tag", "instance", "emissive")

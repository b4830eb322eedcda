"""Far-to-near drawing order of boxes (painter's algorithm) that respects occlusion.

Two disjoint convex boxes have a separating plane; the box on the camera's side of it can
hide the other but never the reverse. For yaw-only boxes the separating axes to try are the
world z axis and the four horizontal box axes (the edge cross products add nothing new).
Every pair whose image rectangles overlap gets such a constraint, and the distance order is
then repaired until it satisfies them all (cycles, which need interpenetrating or very
unusual layouts, keep the distance order for the pairs involved).
"""

from __future__ import annotations

import numpy as np

_TOUCH_M = 1e-3  # boxes closer than this are treated as touching, not intersecting
_MAX_REPAIR_ROUNDS = 32


def painter_order(
    center: np.ndarray, yaw: np.ndarray, half: np.ndarray, rects: np.ndarray, camera: np.ndarray
) -> np.ndarray:
    """(M,) box indices, far first: draw in this order and nearer boxes cover farther ones.

    center (M, 3), yaw (M,), half (M, 3) half sizes, rects (M, 4) image x0, y0, x1, y1,
    camera (3,) camera centre; world frame [m].
    """
    count = len(center)
    cos, sin = np.cos(yaw), np.sin(yaw)
    axes = np.stack([np.stack([cos, sin, 0 * cos], 1), np.stack([-sin, cos, 0 * cos], 1)], 1)  # (M, 2, 3)
    key = _distance_rank(center, axes, half, camera)
    if count < 2:
        return np.argsort(key)
    i, j = _overlapping_pairs(rects)
    if len(i) == 0:
        return np.argsort(key, kind="stable")
    back, front = _occlusion_edges(i, j, center, axes, half, camera)
    for _ in range(_MAX_REPAIR_ROUNDS):
        violated = key[back] >= key[front]
        if not violated.any():
            break
        # lift each violated front box just past its back box; repeat until consistent
        np.maximum.at(key, front[violated], key[back[violated]] + 1e-3)
    return np.argsort(key, kind="stable")


def _distance_rank(center: np.ndarray, axes: np.ndarray, half: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """(M,) float rank, 0 for the box whose nearest point is farthest from the camera."""
    rel = camera - center
    local = np.stack([np.einsum("mk,mk->m", rel, axes[:, 0]), np.einsum("mk,mk->m", rel, axes[:, 1]), rel[:, 2]], 1)
    outside = local - np.clip(local, -half, half)
    distance = np.einsum("mk,mk->m", outside, outside)
    rank = np.empty(len(center))
    rank[np.argsort(-distance, kind="stable")] = np.arange(len(center))
    return rank


def _overlapping_pairs(rects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = rects.T
    overlap = (x0[:, None] <= x1[None, :]) & (x0[None, :] <= x1[:, None])
    overlap &= (y0[:, None] <= y1[None, :]) & (y0[None, :] <= y1[:, None])
    return np.nonzero(np.triu(overlap, 1))


def _occlusion_edges(
    i: np.ndarray, j: np.ndarray, center: np.ndarray, axes: np.ndarray, half: np.ndarray, camera: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(back, front) box pairs: back must be drawn before front."""
    z_axis = np.broadcast_to([0.0, 0.0, 1.0], (len(i), 3))
    candidates = [z_axis, axes[i, 0], axes[i, 1], axes[j, 0], axes[j, 1]]
    decided = np.zeros(len(i), bool)
    i_front = np.zeros(len(i), bool)
    for axis in candidates:
        ci, cj = np.einsum("pk,pk->p", center[i], axis), np.einsum("pk,pk->p", center[j], axis)
        ri, rj = _radius(axes[i], half[i], axis), _radius(axes[j], half[j], axis)
        cam = axis @ camera
        i_low = ci + ri <= cj - rj + _TOUCH_M
        j_low = cj + rj <= ci - ri + _TOUCH_M
        new = ~decided & (i_low | j_low)
        # the box on the camera's side of the gap is in front
        i_front[new & i_low] = cam[new & i_low] < (cj - rj)[new & i_low]
        i_front[new & ~i_low] = cam[new & ~i_low] >= (ci - ri)[new & ~i_low]
        decided |= new
    i, j, i_front = i[decided], j[decided], i_front[decided]
    return np.where(i_front, j, i), np.where(i_front, i, j)


def _radius(axes: np.ndarray, half: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Half-extent of boxes projected on unit axes (P, 3)."""
    return (
        half[:, 0] * np.abs(np.einsum("pk,pk->p", axes[:, 0], axis))
        + half[:, 1] * np.abs(np.einsum("pk,pk->p", axes[:, 1], axis))
        + half[:, 2] * np.abs(axis[:, 2])
    )

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

_TOUCH_M = 0.02  # boxes overlapping by less than this count as touching, not interpenetrating
_MAX_REPAIR_ROUNDS = 32


def painter_order(
    center: np.ndarray, yaw: np.ndarray, half: np.ndarray, rects: np.ndarray, camera: np.ndarray
) -> np.ndarray:
    """(M,) box indices, far first: draw in this order and nearer boxes cover farther ones.

    center (M, 3), yaw (M,), half (M, 3) half sizes, rects (M, 4) image x0, y0, x1, y1,
    camera (3,) camera centre; world frame [m].
    """
    key = _distance_rank(center, yaw, half, camera)
    i, j = _overlapping_pairs(rects)
    if len(i) == 0:
        return np.argsort(key, kind="stable")
    back, front = _occlusion_edges(i, j, center, yaw, half, camera)
    for _ in range(_MAX_REPAIR_ROUNDS):
        violated = key[back] >= key[front]
        if not violated.any():
            break
        # lift each violated front box just past its back box; repeat until consistent
        np.maximum.at(key, front[violated], key[back[violated]] + 1e-3)
    return np.argsort(key, kind="stable")


def _distance_rank(center: np.ndarray, yaw: np.ndarray, half: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """(M,) float rank, 0 for the box whose nearest point is farthest from the camera."""
    rel = camera - center
    cos, sin = np.cos(yaw), np.sin(yaw)
    local = np.stack([cos * rel[:, 0] + sin * rel[:, 1], cos * rel[:, 1] - sin * rel[:, 0], rel[:, 2]], 1)
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
    i: np.ndarray, j: np.ndarray, center: np.ndarray, yaw: np.ndarray, half: np.ndarray, camera: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(back, front) box pairs: back must be drawn before front."""
    # candidate axes: world z, then box i's x and y, then box j's x and y
    theta = np.stack([yaw[i], yaw[i] + np.pi / 2, yaw[j], yaw[j] + np.pi / 2], 1)  # (P, 4)
    ax, ay = np.cos(theta), np.sin(theta)
    turn = yaw[i] - yaw[j]
    c, s = np.abs(np.cos(turn)), np.abs(np.sin(turn))
    hi, hj = half[i], half[j]
    radius_i = np.stack([hi[:, 2], hi[:, 0], hi[:, 1], hi[:, 0] * c + hi[:, 1] * s, hi[:, 0] * s + hi[:, 1] * c], 1)
    radius_j = np.stack([hj[:, 2], hj[:, 0] * c + hj[:, 1] * s, hj[:, 0] * s + hj[:, 1] * c, hj[:, 0], hj[:, 1]], 1)
    proj_i = np.column_stack([center[i, 2], center[i, 0:1] * ax + center[i, 1:2] * ay])  # (P, 5)
    proj_j = np.column_stack([center[j, 2], center[j, 0:1] * ax + center[j, 1:2] * ay])
    cam = np.column_stack([np.full(len(i), camera[2]), camera[0] * ax + camera[1] * ay])
    lo_i, hi_i = proj_i - radius_i, proj_i + radius_i
    lo_j, hi_j = proj_j - radius_j, proj_j + radius_j
    i_low = hi_i <= lo_j + _TOUCH_M
    separated = i_low | (hi_j <= lo_i + _TOUCH_M)
    decided = separated.any(axis=1)
    pick = np.argmax(separated, axis=1)[:, None]  # first separating axis
    i_low, cam = np.take_along_axis(i_low, pick, 1)[:, 0], np.take_along_axis(cam, pick, 1)[:, 0]
    lo_i, lo_j = np.take_along_axis(lo_i, pick, 1)[:, 0], np.take_along_axis(lo_j, pick, 1)[:, 0]
    # the box on the camera's side of the gap is in front
    i_front = np.where(i_low, cam < lo_j, cam >= lo_i)[decided]
    i, j = i[decided], j[decided]
    return np.where(i_front, j, i), np.where(i_front, i, j)

"""RoadExtractor: drivable area and lane boundaries on the ground, from a segmentation map.

Inverse perspective mapping: every cell of a bird's-eye grid on the ground plane z = 0 of the
ego frame (x forward, y left) is looked up in the image through one homography, precomputed
from K and T_ego_cam, with cv2.warpPerspective (nearest neighbour, so class ids stay class ids).
The grid is sampled twice as finely across (y) as its cells, so that a 0.15 m painted line is
never missed between two 0.2 m cell centres.

Lane boundaries, each side of the ego: evidence is road_line cells, or, when they give no
boundary on that side, road edges (drivable next to seen off-road). The seed is, per grid row
up to SEED_X_M, the nearest evidence cell within lane_search_m of y = 0. A polynomial y(x) is
fitted to it, then followed outwards in steps (GROW_X_M): each row takes the evidence cell
nearest the prediction within track_gate_m, and the fit is redone. Fits reject outliers by
their median absolute residual; the degree rises with the x span of the evidence (0, 1, 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from stagepilot.perception.labels import SEG_CLASSES
from stagepilot.core.messages import RoadSurface

UNSEEN = 255  # warp border value: no pixel behind this cell
SUPERSAMPLE_Y = 2  # lateral samples per cell
DRIVABLE, LINE, OFF_ROAD = 1, 2, 4  # flag bits per class
DRIVABLE_CLASSES = ("road", "road_line")
NOT_AN_EDGE = ("vehicle", "pedestrian")  # stand on the road: their outline is no road edge
MIN_CAMERA_DEPTH_M = 0.5  # cells nearer the camera plane than this are never looked up
SEED_X_M = 15.0  # [m] seed rows: the lane is near-straight this close
GROW_X_M = (22.0, 30.0)  # [m] follow the fit out to these x, then to x_max
DEGREE_SPAN_M = ((12.0, 2), (2.0, 1))  # (min x span of the evidence [m], polynomial degree)
OUTLIER_MAD = 3.0  # residuals beyond this many robust standard deviations are outliers
MIN_OUTLIER_M = 0.15  # [m] never call a residual below this an outlier
FIT_ROUNDS = 3


def ground_to_image_homography(K: np.ndarray, T_ego_cam: np.ndarray) -> np.ndarray:
    """(3, 3) H mapping ego ground points (x, y, 1) [m], z = 0, to pixels (u, v, w) [px]."""
    T_cam_ego = np.linalg.inv(np.asarray(T_ego_cam, dtype=float))
    # A ground point has z = 0: only the x, y and translation columns of [R | t] act on it.
    return np.asarray(K, dtype=float) @ T_cam_ego[:3, [0, 1, 3]]


class RoadExtractor:
    """One segmentation map (H, W) of SEG_CLASSES indices -> RoadSurface in the ego frame.

    K: (3, 3) intrinsics of the map's own size (scale them if the network's map is smaller);
    T_ego_cam: (4, 4) camera pose in the ego frame; image_size: (H, W) of the maps [px].
    The grid covers x in x_range [m] and y in [-y_half_width, y_half_width] [m] at resolution [m].
    """

    def __init__(self, K: np.ndarray, T_ego_cam: np.ndarray, image_size: tuple[int, int], *,
                 resolution: float = 0.2, x_range: tuple[float, float] = (3.0, 40.0),
                 y_half_width: float = 12.0, lane_search_m: tuple[float, float] = (0.3, 4.5),
                 track_gate_m: float = 0.6, min_evidence_m: float = 5.0, open_drivable: bool = True,
                 seg_classes: Sequence[str] = SEG_CLASSES):
        x_min, x_max = (float(v) for v in x_range)
        if resolution <= 0 or not x_max > x_min or y_half_width <= 0:
            raise ValueError(f"bad road grid: resolution {resolution}, x_range {x_range}, "
                             f"y_half_width {y_half_width}")
        self.image_size = (int(image_size[0]), int(image_size[1]))  # (H, W) [px]
        self.resolution = float(resolution)
        self.x_max, self.y_max = x_max, float(y_half_width)
        self.lane_search_m = (float(lane_search_m[0]), float(lane_search_m[1]))
        self.track_gate_m = float(track_gate_m)
        self.min_evidence_m = float(min_evidence_m)
        self.open_drivable = open_drivable
        rows = round((x_max - x_min) / resolution)
        cols = round(2 * y_half_width / resolution)
        self.shape = (rows, cols)
        self.row_x = x_max - (np.arange(rows) + 0.5) * resolution  # (rows,) [m], decreasing
        self.col_y = self.y_max - (np.arange(cols) + 0.5) * resolution  # (cols,) [m], decreasing

        fine_y = resolution / SUPERSAMPLE_Y
        # Fine grid pixel (j, i) -> ground (x, y): x = x_max - (i + 0.5) res, y = y_max - (j + 0.5) fine_y.
        fine_to_ground = np.array([[0.0, -resolution, x_max - 0.5 * resolution],
                                   [-fine_y, 0.0, self.y_max - 0.5 * fine_y],
                                   [0.0, 0.0, 1.0]])
        ground_to_image = ground_to_image_homography(K, T_ego_cam)
        self._fine_to_image = ground_to_image @ fine_to_ground
        self._fine_size = (cols * SUPERSAMPLE_Y, rows)  # (width, height) as OpenCV wants it

        depth = self._camera_depth(T_ego_cam, fine_y)  # (rows, fine cols) [m]
        self._behind = depth < MIN_CAMERA_DEPTH_M  # a homography would mirror these into the image
        if not self._behind.any():
            self._behind = None
        self._flags = self._class_flags(seg_classes)
        self._seed_columns = {side: self._columns_outward(side) for side in (1, -1)}
        gate = int(np.ceil(self.track_gate_m / resolution))
        self._gate_offsets = np.array([0] + [o for k in range(1, gate + 1) for o in (-k, k)])  # nearest first
        self.visible = self._visible_cells()  # (rows, cols) bool: cell centre inside the image, ahead

    def _columns_outward(self, side: int) -> np.ndarray:
        """Columns with side * y in lane_search_m (1 left, -1 right), nearest to y = 0 first."""
        near_m, far_m = self.lane_search_m
        columns = np.flatnonzero((side * self.col_y >= near_m) & (side * self.col_y <= far_m))
        return columns[::-1] if side > 0 else columns

    def _camera_depth(self, T_ego_cam: np.ndarray, fine_y: float) -> np.ndarray:
        cols = self.shape[1]
        x = self.row_x[:, None]
        y = self.y_max - (np.arange(cols * SUPERSAMPLE_Y) + 0.5) * fine_y
        T_cam_ego = np.linalg.inv(np.asarray(T_ego_cam, dtype=float))
        return T_cam_ego[2, 0] * x + T_cam_ego[2, 1] * y[None, :] + T_cam_ego[2, 3]

    def _class_flags(self, seg_classes: Sequence[str]) -> np.ndarray:
        flags = np.zeros(256, dtype=np.uint8)  # class id -> DRIVABLE | LINE | OFF_ROAD
        for index, name in enumerate(seg_classes):
            if name in DRIVABLE_CLASSES:
                flags[index] |= DRIVABLE
            elif name not in NOT_AN_EDGE:
                flags[index] |= OFF_ROAD
            if name == "road_line":
                flags[index] |= LINE
        flags[UNSEEN] = 0
        return flags

    def _visible_cells(self) -> np.ndarray:
        h, w = self.image_size
        probe = np.zeros((h, w), dtype=np.uint8)
        seen = self._warp(probe) != UNSEEN
        return seen[:, 0::SUPERSAMPLE_Y] & seen[:, 1::SUPERSAMPLE_Y]

    def _warp(self, seg: np.ndarray) -> np.ndarray:
        """(H, W) uint8 image -> (rows, fine cols) uint8 on the fine ground grid; UNSEEN where none."""
        fine = cv2.warpPerspective(seg, self._fine_to_image, self._fine_size,
                                   flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=UNSEEN)
        if self._behind is not None:
            fine[self._behind] = UNSEEN
        return fine

    def extract(self, seg: np.ndarray) -> RoadSurface:
        """seg: (H, W) integer SEG_CLASSES indices at image_size -> RoadSurface (ego frame, [m])."""
        seg = np.asarray(seg)
        if seg.shape != self.image_size:
            raise ValueError(f"segmentation map is {seg.shape}, the extractor was built for {self.image_size}")
        if seg.dtype != np.uint8:
            seg = seg.astype(np.uint8)
        flags = cv2.LUT(self._warp(np.ascontiguousarray(seg)), self._flags)  # (rows, fine cols)
        a, b = flags[:, 0::SUPERSAMPLE_Y], flags[:, 1::SUPERSAMPLE_Y]
        drivable = (a & b & DRIVABLE) != 0  # a cell half on the sidewalk is not drivable
        if self.open_drivable:
            drivable = cv2.morphologyEx(drivable.view(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) != 0
        lines = ((a | b) & LINE) != 0  # a line needs only one sample: it is thinner than a cell
        off_road = ((a | b) & OFF_ROAD) != 0
        boundaries = []
        for side in (1, -1):  # left, right
            found = self._boundary(lines, side)
            if found is None:
                found = self._boundary(self._road_edges(drivable, off_road, side), side)
            boundaries.append(found)
        return RoadSurface(drivable=drivable, resolution=self.resolution, x_max=self.x_max, y_max=self.y_max,
                           left_boundary=boundaries[0], right_boundary=boundaries[1])

    @staticmethod
    def _road_edges(drivable: np.ndarray, off_road: np.ndarray, side: int) -> np.ndarray:
        """Drivable cells whose neighbour on `side` (1 left = column - 1, -1 right) is seen off-road."""
        edges = np.zeros_like(drivable)
        if side > 0:
            edges[:, 1:] = drivable[:, 1:] & off_road[:, :-1]
        else:
            edges[:, :-1] = drivable[:, :-1] & off_road[:, 1:]
        return edges

    def _boundary(self, evidence: np.ndarray, side: int) -> np.ndarray | None:
        """(rows, cols) bool evidence -> (N, 2) points [x, y] every 1 m, or None when too little."""
        seed_rows = np.flatnonzero(self.row_x <= SEED_X_M)
        window = evidence[seed_rows][:, self._seed_columns[side]]  # (rows, columns outward from y = 0)
        found = window.any(axis=1)
        nearest = self._seed_columns[side][window.argmax(axis=1)]
        fit = _robust_polyfit(self.row_x[seed_rows[found]], self.col_y[nearest[found]])
        for limit in (*GROW_X_M, self.x_max):
            if fit is None:
                return None
            x, y = self._follow(evidence, fit[0], np.flatnonzero(self.row_x <= limit))
            fit = _robust_polyfit(x, y)
        if fit is None or len(fit[1]) * self.resolution < self.min_evidence_m:
            return None
        coeffs, x_kept = fit
        xs = np.arange(np.ceil(x_kept.min()), np.floor(x_kept.max()) + 0.5, 1.0)
        return np.column_stack([xs, _polyval(coeffs, xs)])

    def _follow(self, evidence: np.ndarray, coeffs: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the evidence cell nearest the fitted y within the gate -> (x, y) [m] of the rows with one."""
        x = self.row_x[rows]
        predicted = _polyval(coeffs, x)
        centre = np.rint((self.y_max - predicted) / self.resolution - 0.5).astype(np.intp)  # (n,) column
        columns = centre[:, None] + self._gate_offsets[None, :]  # (n, k), nearest first
        inside = (columns >= 0) & (columns < self.shape[1])
        hits = evidence[rows[:, None], np.clip(columns, 0, self.shape[1] - 1)] & inside
        found = hits.any(axis=1)
        y = self.col_y[columns[found, hits[found].argmax(axis=1)]]
        keep = np.abs(y - predicted[found]) <= self.track_gate_m
        return x[found][keep], y[keep]


def _polyval(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    y = np.full_like(x, coeffs[0])
    for c in coeffs[1:]:  # Horner; np.polyval costs more than the fit for these short arrays
        y = y * x + c
    return y


def _degree(span_m: float) -> int:
    return next((degree for min_span, degree in DEGREE_SPAN_M if span_m >= min_span), 0)


def _robust_polyfit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Least-squares y(x) polynomial that drops outliers -> (coefficients, x of the inliers) or None."""
    keep = np.ones(len(x), dtype=bool)
    for _ in range(FIT_ROUNDS):
        n = int(keep.sum())
        if n < 3:
            return None
        xk = x[keep]
        A = np.vander(xk, _degree(float(xk.max() - xk.min())) + 1)  # (n, degree + 1)
        coeffs = np.linalg.solve(A.T @ A, A.T @ y[keep])
        residual = np.abs(_polyval(coeffs, x) - y)
        spread = 1.4826 * np.partition(residual[keep], n // 2)[n // 2]  # robust std from the median
        inliers = residual <= max(MIN_OUTLIER_M, OUTLIER_MAD * spread)
        if np.array_equal(inliers, keep):
            break
        keep = inliers
    return coeffs, xk

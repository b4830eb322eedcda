"""RoadExtractor on frames of the embedded simulator, against its ground truth.

The input is the simulator's ground-truth semantic image of the front camera (CARLA tags mapped
to SEG_CLASSES), at the camera's size and at the network's smaller map size. The truth is the map:
3.5 m lanes (LaneTruth.lane_width), the ego route along its lane centre, and on the straight map
a road from world y = -7 m to 7 m with the ego lane centred at y = -1.75 m (configs/maps/README.md).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from stagepilot.perception.geometry import scale_intrinsics
from stagepilot.perception.labels import SEG_CLASSES, seg_mask_from_tags
from stagepilot.perception.road import RoadExtractor
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.world import EmbeddedSimulator

FRAMES = {  # name -> (scenario, overrides): the ego starts centred in lane -1
    "straight": ("lead_vehicle_braking", []),
    "left_curve": ("curve_lane_keeping", ["ego.start.s=100"]),  # inside the R 120 left curve
    "right_curve": ("curve_lane_keeping", ["ego.start.s=270"]),  # inside the R 180 right curve
}
MAP_SIZES = [(360, 640), (288, 512)]  # the camera's size, and the network's map size
BOUNDARY_TOLERANCE_M = 0.3


@pytest.fixture(scope="module")
def frames(stack):
    sim = EmbeddedSimulator(stack)
    return {name: sim.reset(load_scenario(scenario, overrides)) for name, (scenario, overrides) in FRAMES.items()}


def segmentation(obs, size: tuple[int, int]) -> np.ndarray:
    """Ground-truth tags of the front camera at (H, W) -> (H, W) int64 SEG_CLASSES indices,
    resized with pixel centres aligned as the network's maps are (and as scale_intrinsics
    assumes); plain INTER_NEAREST would shift them half a camera pixel."""
    tags = obs.ground_truth.semantic["front"]
    tags = cv2.resize(tags, (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    return seg_mask_from_tags(torch.from_numpy(tags)).numpy()


def extractor(obs, size: tuple[int, int]) -> RoadExtractor:
    cam = obs.cameras["front"]
    h0, w0 = cam.rgb.shape[:2]
    return RoadExtractor(scale_intrinsics(cam.K, size[1] / w0, size[0] / h0), cam.T_ego_cam, size)


def cell(surface, x: float, y: float) -> tuple[int, int]:
    return int((surface.x_max - x) / surface.resolution), int((surface.y_max - y) / surface.resolution)


def boundary_truth(obs, offset_m: float, x: np.ndarray) -> np.ndarray:
    """y [m] at ego x [m] of the line offset_m left of the ego's lane centre (its route)."""
    ego = obs.ego
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    d = obs.route.points - (ego.x, ego.y)
    centre = np.column_stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]])  # (N, 2) ego frame
    tangent = np.gradient(centre, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    line = centre + offset_m * np.column_stack([-tangent[:, 1], tangent[:, 0]])
    ahead = (line[:, 0] > 0) & (line[:, 0] < 60)
    return np.interp(x, line[ahead, 0], line[ahead, 1])


@pytest.mark.parametrize("size", MAP_SIZES)
@pytest.mark.parametrize("name", FRAMES)
def test_lane_boundaries_follow_the_map(frames, name, size):
    obs = frames[name]
    surface = extractor(obs, size).extract(segmentation(obs, size))
    half_lane = obs.ground_truth.lane.lane_width / 2
    for boundary, offset in ((surface.left_boundary, half_lane), (surface.right_boundary, -half_lane)):
        assert boundary is not None
        x, y = boundary[:, 0], boundary[:, 1]
        assert np.all(np.diff(x) > 0)
        assert x.min() <= 10.0 and x.max() >= 30.0  # seen over most of the range
        if name == "straight":
            assert np.interp(10.0, x, y) == pytest.approx(offset, abs=BOUNDARY_TOLERANCE_M)
        # Beyond 30 m a row of the 288-row map spans 1.5-2 m of range, and a curving line moves
        # sideways across it: the bound widens by 1 cm per metre there.
        tolerance = BOUNDARY_TOLERANCE_M + 0.01 * np.clip(x - 30.0, 0.0, None)
        assert np.all(np.abs(y - boundary_truth(obs, offset, x)) <= tolerance), (name, size, offset)


@pytest.mark.parametrize("name, bend", [("straight", 0), ("left_curve", 1), ("right_curve", -1)])
def test_boundaries_bend_with_the_road(frames, name, bend):
    obs = frames[name]
    surface = extractor(obs, MAP_SIZES[1]).extract(segmentation(obs, MAP_SIZES[1]))
    for boundary in (surface.left_boundary, surface.right_boundary):
        drift = np.interp(30.0, *boundary.T) - np.interp(10.0, *boundary.T)  # [m] left over 20 m
        if bend == 0:
            assert abs(drift) < 0.2
        else:
            assert bend * drift > 1.0


@pytest.mark.parametrize("size", MAP_SIZES)
def test_drivable_area_is_the_road_on_the_straight(frames, size):
    obs = frames["straight"]
    road = extractor(obs, size)
    surface = road.extract(segmentation(obs, size))
    grid = surface.drivable
    assert grid.shape == road.shape and grid.dtype == bool
    assert grid[cell(surface, 10.0, 0.0)]
    for y in (-11.0, 11.0):  # beyond the sidewalks, and in view
        assert road.visible[cell(surface, 20.0, y)] and not grid[cell(surface, 20.0, y)]
    # The road spans world y -7..7 m; the ego is at y = -1.75 m, so ego y -5.25..8.75 m.
    row = grid[cell(surface, 15.0, 0.0)[0]]
    y_drivable = surface.y_max - (np.flatnonzero(row) + 0.5) * surface.resolution
    assert y_drivable.min() == pytest.approx(-5.25, abs=BOUNDARY_TOLERANCE_M)
    assert y_drivable.max() == pytest.approx(8.75, abs=BOUNDARY_TOLERANCE_M)
    assert len(y_drivable) * surface.resolution == pytest.approx(14.0, abs=2 * BOUNDARY_TOLERANCE_M)


def test_road_edge_stands_in_for_missing_lines(frames):
    obs = frames["left_curve"]
    seg = segmentation(obs, MAP_SIZES[1])
    seg[seg == SEG_CLASSES.index("road_line")] = SEG_CLASSES.index("road")
    surface = extractor(obs, MAP_SIZES[1]).extract(seg)
    half_lane = obs.ground_truth.lane.lane_width / 2
    # Right: the road edge is the lane's edge. Left: the far edge of the oncoming lane is 5.25 m
    # away, beyond the 4.5 m search, and the centre line is gone.
    assert surface.left_boundary is None
    x, y = surface.right_boundary.T
    np.testing.assert_allclose(y, boundary_truth(obs, -half_lane, x), atol=BOUNDARY_TOLERANCE_M)


def test_nothing_drivable_without_road(frames):
    obs = frames["straight"]
    seg = np.full(MAP_SIZES[0], SEG_CLASSES.index("sidewalk"), dtype=np.uint8)
    surface = extractor(obs, MAP_SIZES[0]).extract(seg)
    assert not surface.drivable.any()
    assert surface.left_boundary is None and surface.right_boundary is None


def test_rejects_a_map_of_another_size(frames):
    obs = frames["straight"]
    with pytest.raises(ValueError, match="288, 512"):
        extractor(obs, MAP_SIZES[0]).extract(segmentation(obs, MAP_SIZES[1]))

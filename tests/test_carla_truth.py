"""CARLA camera ground truth (sim/carla/truth.py): 2D boxes from 3D boxes, depth and semantics.

The acceptance check renders one synthetic scene with the embedded renderer and compares
`project_boxes` on its depth and semantic images with the renderer's own `visible_boxes`.
The two differ by design: the renderer draws real shapes with a ~0.5 px outline margin
(OUTLINE_MARGIN_PX), `project_boxes` sees cuboids through pixel centres.
"""

from __future__ import annotations

import numpy as np
import pytest

from stagepilot.sim.carla.truth import Box3D, project_boxes
from stagepilot.sim.render import (
    BoxSet,
    CameraRenderer,
    CameraSpec,
    GroundRaster,
    Lighting,
    T_world_cam,
    palette,
    project_points,
    shapes,
    visible_boxes,
)

SPEC = CameraSpec("front", 640, 360, 90.0, 1.5, 0.0, 1.6, pitch_deg=3.0)  # configs/stack.yaml front camera
EGO = (0.0, 0.0, 0.0)  # world = ego frame; the camera is at x = 1.5 m
T_CAM = T_world_cam(SPEC, EGO)
SKY_M = 1000.0
CAR, TRUCK, WALKER = (4.5, 1.85, 1.5), (8.0, 2.5, 3.2), (0.5, 0.6, 1.75)  # [m] sim/traffic.py sizes
CLEAR, PARTLY, TRUCK_ID, HIDDEN, PED, BEHIND = 1, 2, 3, 4, 5, 6
# id: (x, y, yaw, size) [m, rad], world frame
SCENE = {
    CLEAR: (16.5, 0.0, 0.15, CAR),  # 15 m ahead of the camera
    PARTLY: (26.5, 1.8, 0.0, CAR),  # behind CLEAR's left side
    TRUCK_ID: (14.0, -5.0, 0.0, TRUCK),  # a parked truck in the right lane
    HIDDEN: (26.0, -9.0, 0.3, CAR),  # in the truck's shadow
    PED: (10.0, 4.0, -2.3, WALKER),  # on the left, walking towards the road at an angle
    BEHIND: (-10.0, 0.0, 0.0, CAR),  # behind the ego
}


def _actor(instance: int) -> BoxSet:
    x, y, yaw, (length, width, height) = SCENE[instance]
    if instance == PED:
        return shapes.pedestrian(x, y, yaw, instance, height=height, width=width, walk_phase=1.2)
    return shapes.car(x, y, yaw, instance, length=length, width=width, height=height)


def _box3d(instance: int) -> Box3D:
    x, y, yaw, size = SCENE[instance]
    tag = palette.PEDESTRIAN if instance == PED else palette.CAR
    return Box3D(instance, tag, (x, y, size[2] / 2), yaw, size)


def _iou(a, b) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _sky() -> np.ndarray:
    return np.full((SPEC.height, SPEC.width), SKY_M, np.float32)


@pytest.fixture(scope="module")
def scene():
    """(renderer's boxes, project_boxes' boxes) on one rendered frame of SCENE."""
    road = np.array([[-30.0, -12.0], [80.0, -12.0], [80.0, 12.0], [-30.0, 12.0]])
    ground = GroundRaster.build([(palette.ROAD, road)], [], (-30.0, -20.0, 80.0, 20.0), 0.1, seed=1)
    renderer = CameraRenderer(SPEC, ground, BoxSet.empty(), sky_depth_m=SKY_M)
    actors = BoxSet.concat([_actor(i) for i in SCENE])
    out = renderer.render(EGO, actors, Lighting(fog_density=0.0, noise_std=0.0, brightness=1.0))
    boxes = [_box3d(i) for i in SCENE]
    return visible_boxes(out, actors), project_boxes(boxes, SPEC.K, T_CAM, out.depth, out.semantic)


# -- against the embedded renderer ---------------------------------------------------------------


def test_same_objects_are_visible(scene) -> None:
    rendered, projected = scene
    assert set(rendered) == set(projected) == {CLEAR, PARTLY, TRUCK_ID, PED}


def test_hidden_car_is_in_view_and_absent_only_through_occlusion() -> None:
    unoccluded = project_boxes([_box3d(HIDDEN), _box3d(BEHIND)], SPEC.K, T_CAM, _sky())
    assert set(unoccluded) == {HIDDEN}


@pytest.mark.parametrize(("instance", "min_iou"), [(CLEAR, 0.8), (PED, 0.8), (TRUCK_ID, 0.8), (PARTLY, 0.7)])
def test_boxes_and_fractions_agree_with_renderer(scene, instance: int, min_iou: float) -> None:
    rendered, projected = scene
    assert _iou(rendered[instance], projected[instance]) >= min_iou
    assert abs(rendered[instance][4] - projected[instance][4]) <= 0.15


def test_partly_hidden_car_has_clearly_lower_fraction(scene) -> None:
    for boxes in scene:
        assert 0.3 <= boxes[PARTLY][4] <= 0.7
        assert boxes[CLEAR][4] - boxes[PARTLY][4] >= 0.25


# -- pure geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize("pose", [(12.0, 0.0, 0.0), (20.0, -4.0, 0.7), (8.0, 3.0, -1.2), (30.0, 6.0, 2.5)])
def test_unoccluded_box_fills_its_projected_corners(pose) -> None:
    x, y, yaw = pose
    box = Box3D(7, palette.CAR, (x, y, 0.75), yaw, CAR)
    x0, y0, x1, y1, fraction = project_boxes([box], SPEC.K, T_CAM, _sky())[7]
    corners = BoxSet([box.center], yaw, [box.extent], (0, 0, 0), palette.CAR, 7).corners()[0]
    uv, _ = project_points(SPEC, EGO, corners)
    (u_min, v_min), (u_max, v_max) = uv.min(axis=0), uv.max(axis=0)
    # the box holds the pixel centres inside the silhouette: within a pixel of the corners' span
    assert u_min <= x0 <= u_min + 1 and u_max - 1 <= x1 - 1 <= u_max
    assert v_min <= y0 <= v_min + 1 and v_max - 1 <= y1 - 1 <= v_max
    assert fraction == 1.0


def test_fraction_counts_only_pixels_inside_the_image() -> None:
    # a 4 m board square to the camera 10 m ahead, centred on the right image edge (90 deg fov)
    board = Box3D(8, palette.STATIC, (11.5, -10.0, 1.6), 0.0, (0.02, 4.0, 2.0))
    depth = _sky()
    x0, _, x1, _, fraction = project_boxes([board], SPEC.K, T_CAM, depth)[8]
    assert x1 == SPEC.width and x0 == pytest.approx(SPEC.width / 2 + SPEC.focal_px * 0.8, abs=1.0)
    assert fraction == 1.0  # half the board is outside the image and does not count
    middle = (x0 + x1) // 2
    depth[:, x0:middle] = 1.0  # something 1 m ahead hides the left half of what is in view
    x0_seen, _, x1_seen, _, fraction = project_boxes([board], SPEC.K, T_CAM, depth)[8]
    assert (x0_seen, x1_seen) == (middle, SPEC.width)
    assert fraction == pytest.approx((x1 - middle) / (x1 - x0), abs=0.02)


def test_box_behind_the_camera_is_absent() -> None:
    behind = Box3D(9, palette.CAR, (-10.0, 0.0, 0.75), 0.0, CAR)
    assert project_boxes([behind], SPEC.K, T_CAM, _sky()) == {}


def test_box_reaching_behind_the_camera_is_cut_at_the_near_plane() -> None:
    # a car alongside, its rear 0.25 m behind the camera and its front corners all in view: the
    # side running past the camera reaches the image's left and bottom edges
    alongside = Box3D(10, palette.CAR, (3.5, 2.0, 0.75), 0.0, CAR)
    x0, y0, x1, y1, fraction = project_boxes([alongside], SPEC.K, T_CAM, _sky())[10]
    front = np.array([[5.75, 2.925, 0.0], [5.75, 1.075, 0.0], [5.75, 2.925, 1.5], [5.75, 1.075, 1.5]])
    uv, _ = project_points(SPEC, EGO, front)
    assert (uv > 0).all() and (uv < (SPEC.width, SPEC.height)).all()
    assert (x0, y1) == (0, SPEC.height) and x1 - 1 == pytest.approx(uv[:, 0].max(), abs=1.0)
    assert y0 == pytest.approx(uv[:, 1].min(), abs=1.0)  # the roof falls away towards the camera
    assert fraction == 1.0


def test_semantic_tag_keeps_the_box_to_the_objects_own_pixels() -> None:
    board = Box3D(11, palette.CAR, (11.5, 0.0, 1.6), 0.0, (0.02, 4.0, 2.0))
    semantic = np.full((SPEC.height, SPEC.width), palette.SKY, np.uint8)
    semantic[:, 300:340] = palette.CAR  # the car fills only these columns of its box
    x0, _, x1, _, _ = project_boxes([board], SPEC.K, T_CAM, _sky(), semantic)[11]
    assert (x0, x1) == (300, 340)
    semantic[:] = palette.SKY
    assert project_boxes([board], SPEC.K, T_CAM, _sky(), semantic) == {}


def test_an_actors_own_semantic_tags_count_as_its_pixels() -> None:
    """A truck is a vehicle to the stack but its pixels are Truck (15) on CARLA's semantic camera."""
    truck = Box3D(12, palette.CAR, (15.0, 0.0, 1.6), 0.0, (8.0, 2.5, 3.2))
    semantic = np.full((SPEC.height, SPEC.width), palette.TRUCK, np.uint8)
    assert project_boxes([truck], SPEC.K, T_CAM, _sky(), semantic) == {}
    tagged = Box3D(12, palette.CAR, (15.0, 0.0, 1.6), 0.0, (8.0, 2.5, 3.2), other_tags=(palette.TRUCK,))
    assert project_boxes([tagged], SPEC.K, T_CAM, _sky(), semantic)[12][4] == 1.0

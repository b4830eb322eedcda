"""Camera renderer of the embedded simulator: geometry, labels, occlusion and determinism."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from stagepilot.sim.render import (
    CARLA_PALETTE,
    BoxSet,
    CameraRenderer,
    CameraSpec,
    GroundRaster,
    Lighting,
    PaintedLine,
    colorize,
    palette,
    project_points,
    shapes,
    visible_boxes,
)

WIDTH, HEIGHT, FOV_DEG = 320, 180, 90.0
FOCAL = WIDTH / (2 * math.tan(math.radians(FOV_DEG) / 2))  # 160 px
CAM_X, CAM_H = 1.5, 1.5  # camera 1.5 m ahead of the rear axle, 1.5 m above the ground
PLAIN = Lighting(fog_density=0.0, noise_std=0.0, brightness=1.0)


@pytest.fixture(scope="module")
def ground() -> GroundRaster:
    """A straight east-west road (|y| < 5 m) with sidewalks and a solid centre line."""
    polygons = [
        (palette.SIDEWALK, np.array([[-60.0, -8.0], [160.0, -8.0], [160.0, 8.0], [-60.0, 8.0]])),
        (palette.ROAD, np.array([[-60.0, -5.0], [160.0, -5.0], [160.0, 5.0], [-60.0, 5.0]])),
    ]
    markings = [PaintedLine(np.array([[-60.0, 0.0], [160.0, 0.0]]), 0.15, (235, 235, 230), dashed=False)]
    return GroundRaster.build(polygons, markings, (-60.0, -40.0, 160.0, 40.0), 0.1, seed=7)


@pytest.fixture(scope="module")
def spec() -> CameraSpec:
    return CameraSpec("front", WIDTH, HEIGHT, FOV_DEG, CAM_X, 0.0, CAM_H)


@pytest.fixture(scope="module")
def empty_renderer(spec: CameraSpec, ground: GroundRaster) -> CameraRenderer:
    return CameraRenderer(spec, ground, BoxSet.empty())


def _render(renderer: CameraRenderer, boxes: BoxSet, lighting: Lighting = PLAIN, pose=(0.0, 0.0, 0.0)):
    return renderer.render(pose, boxes, lighting)


# -- camera model --------------------------------------------------------------------------------


def test_intrinsics_follow_carla(spec: CameraSpec) -> None:
    np.testing.assert_allclose(spec.K, [[FOCAL, 0, WIDTH / 2], [0, FOCAL, HEIGHT / 2], [0, 0, 1]])


@pytest.mark.parametrize("yaw", [0.0, math.pi / 2, -2.0])
def test_known_point_projects_to_expected_pixel(spec: CameraSpec, yaw: float) -> None:
    # 10 m ahead of the camera, 1 m to its left, 0.5 m below it: u = cx - f/10, v = cy + f/20
    ego = (10.0, 5.0, yaw)
    forward, left = np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])
    camera_xy = np.array(ego[:2]) + CAM_X * forward
    point = np.array([*(camera_xy + 10.0 * forward + 1.0 * left), CAM_H - 0.5])
    uv, z = project_points(spec, ego, point[None])
    np.testing.assert_allclose(uv[0], [WIDTH / 2 - FOCAL / 10, HEIGHT / 2 + FOCAL / 20], atol=1e-9)
    np.testing.assert_allclose(z, [10.0])


def test_point_behind_camera_has_no_pixel(spec: CameraSpec) -> None:
    uv, z = project_points(spec, (0.0, 0.0, 0.0), np.array([[-5.0, 0.0, 1.0]]))
    assert z[0] < 0 and np.isnan(uv).all()


def test_positive_pitch_looks_down() -> None:
    pitched = CameraSpec("down", WIDTH, HEIGHT, FOV_DEG, 0.0, 0.0, 2.0, pitch_deg=10.0)
    along_axis = np.array([[math.cos(math.radians(10)) * 8.0, 0.0, 2.0 - math.sin(math.radians(10)) * 8.0]])
    uv, z = project_points(pitched, (0.0, 0.0, 0.0), along_axis)
    np.testing.assert_allclose(uv[0], [WIDTH / 2, HEIGHT / 2], atol=1e-9)
    np.testing.assert_allclose(z, [8.0])
    np.testing.assert_allclose(pitched.T_ego_cam[:3, 2], [math.cos(math.radians(10)), 0, -math.sin(math.radians(10))])


# -- ground and sky ------------------------------------------------------------------------------


def test_ground_depth_is_plane_distance_and_sky_is_above_horizon(empty_renderer: CameraRenderer) -> None:
    out = _render(empty_renderer, BoxSet.empty())
    cy = HEIGHT / 2
    rows = np.arange(int(cy) + 1, HEIGHT)
    expected = FOCAL * CAM_H / (rows - cy)  # level camera: z = f h / (v - cy)
    np.testing.assert_allclose(out.depth[rows], np.broadcast_to(expected[:, None], (len(rows), WIDTH)), rtol=1e-5)
    assert (out.semantic[: int(cy)] == palette.SKY).all()
    assert (out.depth[: int(cy)] == empty_renderer.sky_depth_m).all()
    assert out.depth.dtype == np.float32 and out.rgb.dtype == np.uint8 and out.rgb.shape == (HEIGHT, WIDTH, 3)
    assert (out.instance == 0).all()


def test_markings_render_as_road_line_on_the_road(spec: CameraSpec, empty_renderer: CameraRenderer) -> None:
    out = _render(empty_renderer, BoxSet.empty())
    distances = np.linspace(7.0, 20.0, 30)
    line = np.column_stack([distances, np.zeros_like(distances), np.zeros_like(distances)])
    road = np.column_stack([distances, np.full_like(distances, 2.0), np.zeros_like(distances)])
    uv, _ = project_points(spec, (0.0, 0.0, 0.0), line)
    cols, rows = np.rint(uv).astype(int).T
    near_line = np.stack([out.semantic[rows, cols + k] for k in (-1, 0, 1)], 1)  # the 0.15 m line is ~2 px wide
    assert (near_line == palette.ROAD_LINE).any(axis=1).all()
    uv, _ = project_points(spec, (0.0, 0.0, 0.0), road)
    cols, rows = np.rint(uv).astype(int).T
    assert (out.semantic[rows, cols] == palette.ROAD).all()


def test_ground_raster_fills_later_polygons_over_earlier(ground: GroundRaster) -> None:
    tags = ground.tag_at(np.array([[10.0, 3.0], [10.0, 6.5], [10.0, 20.0], [500.0, 0.0]]))
    assert tags.tolist() == [palette.ROAD, palette.SIDEWALK, palette.TERRAIN, palette.TERRAIN]
    xy = np.array([[12.34, -5.67]])
    np.testing.assert_allclose(ground.pixel_to_world(ground.world_to_pixel(xy)), xy)


# -- boxes ---------------------------------------------------------------------------------------


def test_car_box_is_mostly_car_and_instance_pixels_are_car(empty_renderer: CameraRenderer) -> None:
    car = shapes.car(14.0, 0.0, 0.3, instance=7)
    out = _render(empty_renderer, car)
    boxes = visible_boxes(out, car)
    x0, y0, x1, y1, fraction = boxes[7]
    assert x1 > x0 and y1 > y0 and fraction == pytest.approx(1.0)
    assert (out.semantic[y0:y1, x0:x1] == palette.CAR).mean() > 0.7
    mask = out.instance == 7
    assert mask.sum() > 100 and (out.semantic[mask] == palette.CAR).all()
    rows, cols = np.nonzero(mask)
    assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def test_occluded_car_has_smaller_visible_fraction(empty_renderer: CameraRenderer) -> None:
    front, rear = shapes.car(9.0, 0.4, 0.0, instance=1), shapes.car(18.0, -1.2, 0.0, instance=2)
    alone = visible_boxes(_render(empty_renderer, rear), rear)[2]
    both_boxes = BoxSet.concat([front, rear])
    both = visible_boxes(_render(empty_renderer, both_boxes), both_boxes)
    assert alone[4] == pytest.approx(1.0)
    assert 0.0 < both[2][4] < 0.8 * alone[4]
    assert both[1][4] == pytest.approx(1.0)
    hidden = shapes.car(18.0, 0.4, 0.0, instance=2)  # right behind the front car: no pixel left
    assert set(visible_boxes(_render(empty_renderer, BoxSet.concat([front, hidden])), hidden)) == set()


def test_car_behind_camera_gets_no_box_and_no_pixels(empty_renderer: CameraRenderer) -> None:
    car = shapes.car(-8.0, 0.0, 0.0, instance=3)
    out = _render(empty_renderer, car)
    assert visible_boxes(out, car) == {}
    empty = _render(empty_renderer, BoxSet.empty())
    np.testing.assert_array_equal(out.semantic, empty.semantic)
    np.testing.assert_array_equal(out.rgb, empty.rgb)


def test_wall_beside_and_behind_camera_stays_on_its_side(spec: CameraSpec, ground: GroundRaster) -> None:
    # crosses the near plane; it lies left of the camera, so it may only cover u < cx
    wall = BoxSet([[5.0, 3.0, 2.5]], 0.0, [[50.0, 0.3, 5.0]], [(120, 110, 100)], palette.WALL, 0)
    out = _render(CameraRenderer(spec, ground, wall), BoxSet.empty())
    rows, cols = np.nonzero(out.semantic == palette.WALL)
    assert len(cols) > 1000
    assert cols.max() < WIDTH / 2


def test_box_depth_is_exact_on_faces(spec: CameraSpec, ground: GroundRaster) -> None:
    # a wall facing the camera 20 m ahead of it, and a side wall along y = 3
    facing = BoxSet([[CAM_X + 21.0, 0.0, 3.0]], 0.0, [[2.0, 6.0, 6.0]], [(90, 90, 90)], palette.BUILDING, 0)
    side = BoxSet([[10.0, 3.2, 1.0]], 0.0, [[24.0, 0.4, 2.0]], [(90, 90, 90)], palette.WALL, 0)  # from behind
    out = _render(CameraRenderer(spec, ground, BoxSet.concat([facing, side])), BoxSet.empty())
    front_face = out.semantic == palette.BUILDING
    assert front_face.sum() > 100
    np.testing.assert_allclose(out.depth[front_face], 20.0, rtol=1e-5)
    rows, cols = np.nonzero(out.semantic == palette.WALL)
    expected = FOCAL * 3.0 / (WIDTH / 2 - cols)  # optical x = -3 on the plane y = 3
    np.testing.assert_allclose(out.depth[rows, cols], expected, rtol=1e-4)


def test_car_in_front_of_long_wall_is_not_hidden(spec: CameraSpec, ground: GroundRaster) -> None:
    # the wall's nearest point is far nearer than the car, yet the car stands in front of it
    wall = BoxSet([[30.0, 8.0, 4.0]], 0.0, [[60.0, 1.0, 8.0]], [(150, 140, 128)], palette.BUILDING, 0)
    car = shapes.car(40.0, 5.4, 0.0, instance=4)
    out = _render(CameraRenderer(spec, ground, wall), car)
    assert visible_boxes(out, car)[4][4] == pytest.approx(1.0)


def test_emissive_lamp_keeps_its_colour(spec: CameraSpec, ground: GroundRaster) -> None:
    light = shapes.traffic_light(6.0, 0.0, math.pi, instance=9, state="green", pole_height=1.0)
    out = _render(CameraRenderer(spec, ground, BoxSet.empty()), light, Lighting(fog_density=0.0, noise_std=0.0, ambient=0.2))
    green_lamp = light.center[4]
    uv, _ = project_points(spec, (0.0, 0.0, 0.0), green_lamp[None])
    col, row = np.rint(uv[0]).astype(int)
    assert tuple(out.rgb[row, col]) == shapes.LAMP_RGB["green"]
    assert out.semantic[row, col] == palette.TRAFFIC_LIGHT
    assert out.instance[row, col] == 9


# -- lighting and determinism ----------------------------------------------------------------------


def test_same_inputs_give_byte_identical_outputs(spec: CameraSpec, ground: GroundRaster) -> None:
    scenery = BoxSet.concat([shapes.building(30.0, 15.0, 0.0, 20.0, 8.0, 12.0), shapes.tree(12.0, -7.0)])
    actors = BoxSet.concat([shapes.car(15.0, 1.7, math.pi, 1), shapes.pedestrian(10.0, -6.0, 0.5, 2)])
    lighting = Lighting.sample(np.random.default_rng(3))
    lighting = dataclasses.replace(lighting, noise_std=3.0, fog_density=0.01)
    first = CameraRenderer(spec, ground, scenery).render((1.0, -1.0, 0.05), actors, lighting)
    second = CameraRenderer(spec, ground, scenery).render((1.0, -1.0, 0.05), actors, lighting)
    for name in ("rgb", "semantic", "depth", "instance"):
        assert getattr(first, name).tobytes() == getattr(second, name).tobytes(), name


def test_lighting_sample_varies_and_is_valid() -> None:
    rng = np.random.default_rng(0)
    samples = [Lighting.sample(rng) for _ in range(40)]
    assert len({s.sky_top_rgb for s in samples}) > 5
    assert len({round(s.fog_density, 2) >= 0.015 for s in samples}) == 2  # some fog, some clear
    assert all(0.0 <= s.ambient <= 1.0 and s.brightness > 0 for s in samples)
    assert Lighting.default() == Lighting() and hash(Lighting.default())


def test_palette_is_carla_cityscapes() -> None:
    assert CARLA_PALETTE.shape == (256, 3) and CARLA_PALETTE.dtype == np.uint8
    assert tuple(CARLA_PALETTE[palette.CAR]) == (0, 0, 142)
    assert tuple(CARLA_PALETTE[palette.ROAD_LINE]) == (157, 234, 50)
    assert not CARLA_PALETTE[29:].any()
    tags = np.array([[palette.ROAD, palette.SKY]], np.uint8)
    np.testing.assert_array_equal(colorize(tags), [[(128, 64, 128), (70, 130, 180)]])

"""Camera geometry against the renderer: pixel conventions and ground placement.

K follows OpenCV (pixel centres at integer coordinates); 2D boxes count pixel edges. These tests
pin the half pixel between them, which once put a lead car half a metre short."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import yaml

from stagepilot.core.camera import camera_pose, pinhole_intrinsics
from stagepilot.perception.geometry import (
    box_to_pixels,
    centre_from_box,
    project_to_image,
    scale_intrinsics,
)
from stagepilot.perception.evaluate import camera_record
from stagepilot.perception.learned import ground_in_view
from stagepilot.core.config import LearnedPerceptionConfig, load_stack
from stagepilot.core.messages import CameraImage
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.render.camera import CameraSpec
from stagepilot.sim.world import EmbeddedSimulator

from conftest import ROOT


def test_ground_truth_boxes_place_the_car_they_box(tmp_path):
    """The bottom-centre of a rendered car's box, put on the road through K and T_ego_cam (edges
    to pixel centres, less the renderer's outline margin) and pushed back the contact depth, lands
    on the car's centre from 7 to 40 m. Reading the box edges as K's pixel coordinates put the car
    up to 0.9 m short at 30 m; pushing back half its length, 0.45 m long nearer than 20 m."""
    scenario = yaml.safe_load((ROOT / "configs" / "scenarios" / "lead_vehicle_braking.yaml").read_text())
    sim = EmbeddedSimulator(load_stack(), render=True)
    depth = LearnedPerceptionConfig().contact_depth_m["vehicle"]
    errors = []
    for s in np.arange(26.0, 60.0, 1.37):  # the lead car from 7 m to 40 m ahead of the ego
        scenario["actors"][0]["start"]["s"] = float(s)
        path = tmp_path / "lead.yaml"
        path.write_text(yaml.safe_dump(scenario))
        obs = sim.reset(load_scenario(str(path)))
        car = next(o for o in obs.ground_truth.objects if o.kind == "vehicle")
        box, cam = car.boxes_2d["front"], obs.cameras["front"]
        centre = centre_from_box(np.array([box.x0, box.y0, box.x1, box.y1]), depth, cam.K, cam.T_ego_cam,
                                 cam.outline_margin_px)
        errors.append((car.center_ego[0], centre[0] - car.center_ego[0]))
    ahead, error = np.array(errors).T
    assert ahead.min() < 8.0 and ahead.max() > 38.0
    # one pixel of the box is 0.15 m at 10 m and 1.6 m at 30 m: the bound widens with the distance
    assert np.all(np.abs(error) <= 0.15 + 0.0018 * ahead**2), np.round(errors, 2)
    assert abs(np.mean(error)) < 0.15, np.round(errors, 2)


def test_box_edges_are_half_a_pixel_from_pixel_centres():
    assert box_to_pixels([10, 20, 12, 24]).tolist() == [9.5, 19.5, 11.5, 23.5]  # columns 10-11, rows 20-23


@pytest.mark.parametrize("scale", [0.5, 0.25])
def test_scaled_intrinsics_see_a_resized_image_where_resize_puts_it(scale):
    """A point projected with the scaled K lands on the centroid of the blob its pixel becomes
    when the image is resized by cv2 (half-pixel aligned, as F.interpolate with align_corners=False)."""
    K = np.array([[320.0, 0.0, 320.0], [0.0, 320.0, 180.0], [0.0, 0.0, 1.0]])
    T = np.eye(4)  # camera frame = ego frame, for this check only
    block = int(round(1 / scale))
    u0, v0 = 200, 60  # the top-left pixel of one block of the resize (both divisible by 2 and 4)
    image = np.zeros((360, 640), np.float32)
    image[v0:v0 + block, u0:u0 + block] = 1.0   # one whole block: its pixel centres average to...
    centre = (u0 + (block - 1) / 2, v0 + (block - 1) / 2)  # ...this, in K's pixel coordinates
    point = np.linalg.solve(K, np.array([*centre, 1.0])) * 10.0  # a point 10 m out on that pixel's ray
    uv, _ = project_to_image(point[None], scale_intrinsics(K, scale, scale), T)
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    rows, cols = np.nonzero(small > 0.5)
    assert uv[0] == pytest.approx([cols.mean(), rows.mean()], abs=1e-6)


@pytest.mark.parametrize("mount", [
    {"width": 640, "height": 360, "fov_deg": 90.0, "x": 1.5, "y": 0.0, "z": 1.6, "pitch_deg": 3.0},
    {"width": 800, "height": 600, "fov_deg": 70.0, "x": 0.3, "y": -0.4, "z": 2.2,
     "roll_deg": 2.0, "pitch_deg": -5.0, "yaw_deg": 30.0},
])
def test_the_camera_model_points_where_its_mount_says(mount):
    """core/camera.py: the optical axis lands on the principal point, the field of view's edge
    on the image's edge, and the axis points along the mount's yaw and pitch."""
    K = pinhole_intrinsics(mount["width"], mount["height"], mount["fov_deg"])
    angles = {k: mount.get(k, 0.0) for k in ("roll_deg", "pitch_deg", "yaw_deg")}
    T = camera_pose(mount["x"], mount["y"], mount["z"], **angles)
    half_fov = math.radians(mount["fov_deg"]) / 2
    centre, edge = K @ np.array([0.0, 0.0, 1.0]), K @ np.array([math.tan(half_fov), 0.0, 1.0])
    assert centre[:2] == pytest.approx([mount["width"] / 2, mount["height"] / 2])
    assert edge[0] == pytest.approx(mount["width"])
    yaw, pitch = math.radians(angles["yaw_deg"]), math.radians(angles["pitch_deg"])
    axis = [math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), -math.sin(pitch)]  # nose down: z < 0
    assert T[:3, 2] == pytest.approx(axis, abs=1e-12)
    assert T[:3, 3] == pytest.approx([mount["x"], mount["y"], mount["z"]])
    spec = CameraSpec(name="cam", **mount)  # the renderer uses the same model
    assert np.array_equal(spec.K, K) and np.array_equal(spec.T_ego_cam, T)


def test_ground_in_view_is_what_the_front_camera_frames():
    camera = camera_record(load_stack())  # 640x360, fov 90, 1.5 m ahead of the rear axle, 1.6 m up, pitched 3 deg down
    image = CameraImage(name="front", rgb=np.zeros((360, 640, 3), np.uint8), K=np.array(camera["K"]),
                        T_ego_cam=np.array(camera["T_ego_cam"]))
    points = np.array([[10.0, 0.0], [40.0, -5.0], [2.5, 0.0], [5.0, 8.0], [-5.0, 0.0]])
    # ahead; far ahead and right; under the bonnet (the road 1 m ahead of the lens is below the
    # frame); 58 degrees left, beyond the 45 of half the field of view; behind
    assert ground_in_view(image, points).tolist() == [True, True, False, False, False]

"""LearnedPerception: the trained PerceptionNet as the perception stage, over the camera rig.

One frame goes through, in order:
1. ``FrameCheck`` per camera: a missing, NaN, blank or frozen frame, or a NaN ego state, gives
   an unusable Perception;
2. ``NetworkRunner`` (perception/runner.py): every rig image in one batch; boxes come back in
   each camera's pixels, the segmentation for the main (first) camera (raw outputs that are
   not finite make the frame unusable);
3. ego-frame placement: each vehicle, pedestrian and static-obstacle box is put on the road
   through its bottom-centre ground contact and its camera's model, then pushed back half the
   object's assumed depth (perception/geometry.py);
4. fusion (perception/fusion.py): an object that two overlapping views both see is one
   measurement;
5. tracking (perception/tracking.py): association and a constant-velocity Kalman filter in the
   world frame give each object a track id and a velocity over the ground; a track continues
   when its object moves from one camera's view to another's, and is kept a while when it
   leaves them all (a track gone non-finite: frame unusable);
6. the road (perception/road.py): drivable area and the lane boundaries either side of the
   ego, on the ground plane, from the main camera's segmentation;
7. the traffic light ahead (perception/lights.py): read only from the signal head that governs
   the route's next signalised stop line, matched by where the map says it stands and which
   way it faces; unread when no box is that head's.

Nothing here reads the simulator's ground truth.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import cv2
import numpy as np
import torch

from stagepilot.core.config import LearnedPerceptionConfig
from stagepilot.core.messages import CameraImage, Observation, Perception
from stagepilot.core.spans import Spans
from stagepilot.perception import operating
from stagepilot.perception.checks import FrameCheck, ego_fault
from stagepilot.perception.fusion import Placed, fuse, in_any_view, is_cut
from stagepilot.perception.geometry import (
    centre_from_box,
    centre_pixel,
    point_at_height,
    project_to_image,
    scale_intrinsics,
)
from stagepilot.perception.lights import LightReader, LightSighting
from stagepilot.perception.refine import resolve_refiner
from stagepilot.perception.road import RoadExtractor
from stagepilot.perception.runner import (  # noqa: F401  (re-exported: the stage's public names)
    SHIPPED_CHECKPOINT,
    STAGE_SEG_STRIDE,
    NetworkOutput,
    NetworkRunner,
    native_bf16,
    resolve_checkpoint,
    select_device,
)
from stagepilot.perception.tracking import Measurement, Tracker
from stagepilot.perception.zoom import merge_arrays, zoom_of

# network class -> Detection.kind
KINDS = {"vehicle": "vehicle", "pedestrian": "pedestrian", "static_obstacle": "static"}
LIGHT_PREFIX = "traffic_light_"
# seg class -> a CARLA tag id that stands for it, for Perception.semantic (background -> 0, unlabelled)
SEG_TO_CARLA_TAG = {"background": 0, "road": 1, "road_line": 24, "sidewalk": 2, "vehicle": 14, "pedestrian": 12,
                    "traffic_light": 7, "pole": 6, "vegetation": 9, "building": 3, "sky": 11}


def ground_in_view(image: CameraImage, points_xy: np.ndarray) -> np.ndarray:
    """(N, 2) ego-frame ground points [m] -> (N,) bool: in front of `image`'s camera and inside its
    frame (pixel centres at 0 .. W - 1, perception/geometry.py), so that it could see them."""
    h, w = image.rgb.shape[:2]
    points = np.column_stack([np.asarray(points_xy, dtype=float).reshape(-1, 2), np.zeros(len(points_xy))])
    uv, in_front = project_to_image(points, image.K, image.T_ego_cam)
    inside = (uv[:, 0] >= -0.5) & (uv[:, 0] <= w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= h - 0.5)
    return in_front & inside


def _unusable(obs: Observation, reason: str) -> Perception:
    return Perception(t=obs.t, frame=obs.frame, detections=(), usable=False, reason=reason)


class LearnedPerception:
    """One stage: Observation (the rig's camera frames) -> Perception, with no ground truth."""

    name = "perception"

    def __init__(self, config: LearnedPerceptionConfig, road_map=None, cameras: tuple[str, ...] | None = None,
                 runner: NetworkRunner | None = None, stop_reach_m: float | None = None, signal_heads=None,
                 camera_specs=None, budget_ms: float | None = None):
        """``cameras``: the rig, main camera first (default: every camera in the observation, in
        its order). ``signal_heads``: the map's signalised approaches (default: the road map's,
        core/signals.py). ``stop_reach_m``: rear axle to where the planner puts the front
        bumper's stop (perception/lights.py). ``camera_specs``: the rig's CameraConfig, in the
        order of ``cameras``, and ``budget_ms`` the stage's budget: with both, `operating_point:
        auto` is timed on this machine (perception/operating.py); without, it reads the full rig."""
        self.config = config
        self.cameras = tuple(cameras) if cameras else None
        self.road_map = road_map
        warm = runner is None
        if runner is None:
            batch = len(self.cameras) if self.cameras else 1
            runner = NetworkRunner(config, batch=batch)
        self.runner = runner
        # small vehicle boxes looked at again (perception/refine.py); a model handed in has no file to match
        self.refinement, self._refiner_why = resolve_refiner(config.box_refiner, runner.checkpoint_path)
        specs = operating.spec_cameras(camera_specs) if camera_specs else None
        if specs:
            self.point = operating.choose(runner, config.operating_point, specs, config.side_band_elevation_deg,
                                          budget_ms, config.network_share, self._zoom_setting)
        else:
            setting = config.operating_point if config.operating_point != "auto" else "full"
            self.point = operating.PointChoice(operating.BY_NAME[setting], "configured")
        self._specs = specs
        if warm and specs:
            self._prepare()
        elif warm:
            runner.warm_up(len(self.cameras) if self.cameras else 1)
        self._views: dict[str, tuple[tuple, operating.View]] = {}
        if signal_heads is None:
            signal_heads = road_map.signal_heads if road_map is not None else ()
        self.lights = LightReader(config, tuple(signal_heads), stop_reach_m)
        self.checks: dict[str, FrameCheck] = {}
        self.tracker = Tracker(config.tracker)
        seg_classes = list(self.runner.model.seg_classes)
        lut = np.zeros(256, dtype=np.uint8)
        for i, name in enumerate(seg_classes):
            lut[i] = SEG_TO_CARLA_TAG.get(name, 0)
        self._seg_to_tags = lut
        self._road: RoadExtractor | None = None
        self._road_key: tuple | None = None
        # the parts of the last call, for the trace and the latency table (core/spans.py)
        self.spans = Spans(torch.cuda.synchronize if self.runner.device.type == "cuda" else None)

    def _prepare(self) -> None:
        """The path chosen again on the shapes of a tick at the stage's point, and warmed up on them."""
        groups = operating.batches(operating.views(self.point.point, self._specs, self.runner.input_size,
                                                   self.config.side_band_elevation_deg, zoom=self._zoom_setting))
        shapes = [(len(idx), size) for size, idx in groups.items()]
        self.runner.choose_for(shapes)
        self.runner.warm_up(shapes=shapes)

    def step_down(self, frame: int, why: str) -> str | None:
        """Read the rig at the next operating point down from ``frame`` on (a measured drive's
        guard, perception/operating.py), remembered for this machine: the new point's name, or
        None when there is none (the cheapest, or a configured point)."""
        lower = self.point.step_down(frame, why)
        if lower is None:
            return None
        self._views = {}
        if self._specs:
            self._prepare()
        return lower.name

    def use_point(self, name: str) -> None:
        """Read the rig at operating point ``name`` from the next call on: a replay following a
        drive's step down."""
        if name != self.point.point.name:
            self.point.point = operating.BY_NAME[name]
            self._views = {}

    @property
    def _zoom_setting(self) -> tuple[float, int, float] | None:
        """The horizon zoom's (magnification, rows, width share) from the config, None when it is off."""
        return zoom_of(self.config)

    @property
    def path(self) -> dict:
        """What runs the network (perception/paths.py) and how much of the rig it reads
        (perception/operating.py), with how each was chosen: for run.json."""
        refiner = ({**self.refinement.describe(), "why": self._refiner_why} if self.refinement is not None
                   else {"file": None, "why": self._refiner_why})
        return {**self.runner.path, "operating_point": self.point.describe(), "box_refiner": refiner}

    def reset(self) -> None:
        self.tracker.reset()
        self.checks = {}
        self.lights.reset()

    def _rig(self, obs: Observation) -> tuple[str, ...]:
        return self.cameras or tuple(obs.cameras or ())

    def _problem(self, obs: Observation, rig: tuple[str, ...]) -> str | None:
        if not rig:
            return "no camera in the observation"
        for name in rig:
            check = self.checks.setdefault(name, FrameCheck(name))
            problem = check.reason(obs)
            if problem is not None:
                return problem
        return ego_fault(obs.ego)

    def step(self, obs: Observation) -> Perception:
        spans = self.spans
        spans.restart()
        rig = self._rig(obs)
        # Only the cameras this tick reads are checked: one the operating point leaves unread
        # cannot spoil the output (a dropped or frozen side frame at main_only is not a fault)
        indices = [i for i in range(len(rig)) if operating.reads(self.point.point, i, len(rig), obs.frame)]
        with spans.part("checks"):
            problem = self._problem(obs, tuple(rig[i] for i in indices))
        if problem is not None:
            return _unusable(obs, problem)
        images = [obs.cameras.get(rig[i]) for i in indices]
        if any(image is None for image in images):  # a run without cameras has nothing to perceive from
            return _unusable(obs, f"no {rig[indices[images.index(None)]]} camera in the observation")
        views_read = [self._view(i, image) for i, image in zip(indices, images)]
        zoom = self._view(-1, images[0])  # the main camera's horizon band, magnified (None: not read)
        reading = views_read + [zoom] if zoom is not None else views_read
        frames = images + [images[0]] if zoom is not None else images
        outputs = self.runner.run([image.rgb[view.top:view.bottom, view.left:view.right]
                                   for image, view in zip(frames, reading)], spans,
                                  [view.size for view in reading])
        if outputs[0].nonfinite:
            return _unusable(obs, f"network output is not finite ({', '.join(outputs[0].nonfinite)})")
        if zoom is not None:
            with spans.part("zoom"):
                outputs[0] = self._zoomed(outputs[0], outputs.pop(), zoom)
        if self.refinement is not None:
            with spans.part("refine"):
                floor = self.config.score_threshold.get("vehicle", 0.5)
                for k, (image, view) in enumerate(zip(images, views_read)):
                    out = outputs[k]
                    boxes = self.refinement.apply_frame(image.rgb[view.top:view.bottom, view.left:view.right],
                                                        out.boxes, out.scores, out.labels, min_score=floor)
                    outputs[k] = replace(out, boxes=boxes)
        with spans.part("placement"):
            placed, sightings = [], []
            for out, image, view in zip(outputs, images, views_read):
                more, lights = self._measurements(out, image, view.top)
                placed += more
                sightings += lights
        with spans.part("tracking"):
            views = [partial(ground_in_view, image) for image in images]
            detections = self.tracker.update(obs.t, obs.ego, fuse(placed), in_view=partial(in_any_view, views))
        if self.tracker.dropped_nonfinite:
            return _unusable(obs, f"tracker state is not finite (dropped track {list(self.tracker.dropped_nonfinite)})")
        main, seg = images[0], outputs[0].seg
        with spans.part("segmentation"):
            semantic_small = cv2.LUT(np.ascontiguousarray(seg, np.uint8), self._seg_to_tags)  # (h, w) CARLA tags
            h0, w0 = main.rgb.shape[:2]
            semantic = cv2.resize(semantic_small, (w0, h0), interpolation=cv2.INTER_NEAREST)
        with spans.part("lights"):  # where a head stays in view: only of the frames read whole
            light = self.lights.read(obs, sightings, [img for img, v in zip(images, views_read) if v.top == 0])
        with spans.part("road"):
            road = self._road_surface(seg, main)
        return Perception(t=obs.t, frame=obs.frame, detections=detections, traffic_light=light,
                          semantic=semantic, road=road)

    def _view(self, index: int, image: CameraImage) -> operating.View | None:
        """How camera ``index`` of the rig goes to the network at the stage's operating point when
        it is read (its band follows its own calibration; worked out once per calibration);
        ``index`` -1: the main camera's horizon zoom, None when the point reads none."""
        key = (index, image.rgb.shape, np.asarray(image.K).tobytes(), np.asarray(image.T_ego_cam).tobytes())
        slot = image.name if index >= 0 else ("zoom", image.name)
        known = self._views.get(slot)
        if known is None or known[0] != key:
            h, w = image.rgb.shape[:2]
            if index < 0:
                view = operating.zoom_view(self.point.point, h, w, image.K, image.T_ego_cam, self.runner.input_size,
                                           self._zoom_setting)
            else:
                view = operating.view(self.point.point, index == 0, h, w, image.K, image.T_ego_cam,
                                      self.runner.input_size, self.config.side_band_elevation_deg)
            known = self._views[slot] = (key, view)
        return known[1]

    def _zoomed(self, whole: NetworkOutput, band: NetworkOutput, view: operating.View) -> NetworkOutput:
        """The main camera's output with the horizon band's boxes joined (perception/zoom.py)."""
        boxes, scores, labels = merge_arrays(whole.boxes, whole.scores, whole.labels, band.boxes, band.scores,
                                             band.labels, view, self.config.nms_iou)
        return NetworkOutput(boxes, scores, labels, whole.seg, whole.nonfinite)

    # ---- objects -----------------------------------------------------------------------------
    def _measurements(self, out: NetworkOutput, image: CameraImage, top: int = 0
                      ) -> tuple[list[Placed], list[LightSighting]]:
        """Boxes of the rows from ``top`` down (a side camera's band) -> placed objects and light
        sightings in the whole frame's pixels; a box at the band's top edge counts as cut."""
        cfg = self.config
        K, T = np.asarray(image.K, dtype=float), np.asarray(image.T_ego_cam, dtype=float)
        h_img, w_img = image.rgb.shape[:2]
        placed, lights = [], []
        for box, score, label in zip(out.boxes, out.scores, out.labels):
            cut = is_cut(box, w_img, h_img - top)
            box = box + np.array([0.0, top, 0.0, top]) if top else box
            if label.startswith(LIGHT_PREFIX):
                # A housing cut by the image edge may hide the lit lamp: its state is not read.
                if score >= cfg.score_threshold.get("traffic_light", 0.5) and not cut:
                    housing = point_at_height(*centre_pixel(box), K, T, cfg.light_height_m)
                    if housing is not None:
                        lights.append(LightSighting(float(score), label[len(LIGHT_PREFIX):], housing[:2], image))
                continue
            kind = KINDS.get(label)
            if kind is None or score < cfg.score_threshold.get(label, 0.5):
                continue
            extent = tuple(float(v) for v in cfg.extent_m.get(label, (1.0, 1.0, 1.0)))
            depth = cfg.contact_depth_m.get(label, extent[0] / 2)
            centre = centre_from_box(box, depth, K, T, image.outline_margin_px)
            if centre is None or math.hypot(*centre) > cfg.max_range_m:
                continue
            m = Measurement(kind=kind, score=float(score), position=(float(centre[0]), float(centre[1])),
                            extent=extent, box_2d=tuple(float(v) for v in box), camera=image.name)
            placed.append(Placed(m, cut))
        return placed, lights

    # ---- road --------------------------------------------------------------------------------
    def _road_surface(self, seg: np.ndarray, image: CameraImage):
        h0, w0 = image.rgb.shape[:2]
        h, w = seg.shape
        key = (h, w, h0, w0, np.asarray(image.K).tobytes(), np.asarray(image.T_ego_cam).tobytes())
        if self._road is None or key != self._road_key:
            K = scale_intrinsics(np.asarray(image.K, dtype=float), w / w0, h / h0)
            self._road = RoadExtractor(K, np.asarray(image.T_ego_cam, dtype=float), (h, w))
            self._road_key = key
        return self._road.extract(seg)

"""LearnedPerception: the trained PerceptionNet as the perception stage.

One frame goes through, in order:
1. ``FrameCheck``: a missing, NaN, blank or frozen frame, or a NaN ego state, gives an unusable Perception;
2. ``NetworkRunner``: the uint8 frame is copied to the device once, scaled to the network's
   input size there (area filter, as the training data was), and run under
   ``torch.inference_mode`` with channels-last memory and bf16 autocast where the device runs it
   natively; boxes come back in camera pixels, the segmentation at the network's size (raw outputs
   that are not finite make the frame unusable);
3. ego-frame placement: each vehicle, pedestrian and static-obstacle box is put on the road
   through its bottom-centre ground contact and the camera model, then pushed back half the
   object's assumed depth (perception/geometry.py);
4. tracking (perception/tracking.py): association and a constant-velocity Kalman filter give
   each object a track id and a velocity over the ground (a track gone non-finite: frame unusable);
5. the road (perception/road.py): drivable area and the lane boundaries either side of the
   ego, on the ground plane, from the segmentation;
6. the traffic light ahead: the next stop line on the route comes from the map; its state is
   read from the light boxes whose housing, placed at ``light_height_m`` through the camera
   model, lies near that stop line. Unseen, a light last read red or yellow stays so (the car
   must not run it on a missed detection); green turns ``unknown`` after ``light_hold_s``. A
   light in view is never taken from red to yellow (signals go red, green, yellow). The
   reported stop line is moved back where needed so that the car stops with the signal still
   in the camera's view, and so sees it turn green.

Nothing here reads the simulator's ground truth.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from stagepilot.perception.checks import FrameCheck, ego_fault
from stagepilot.perception.geometry import (
    centre_from_box,
    centre_pixel,
    point_at_height,
    project_to_image,
    scale_intrinsics,
    stop_line_ahead,
    world_to_ego,
)
from stagepilot.perception.checkpoint import load_checkpoint
from stagepilot.perception.network import PerceptionNet
from stagepilot.perception.road import RoadExtractor
from stagepilot.perception.tracking import Measurement, Tracker
from stagepilot.core.config import ConfigError, LearnedPerceptionConfig
from stagepilot.core.messages import CameraImage, Observation, Perception, TrafficLightAhead
from stagepilot.core.paths import Polyline

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_CHECKPOINT = WEIGHTS_DIR / "mtl_mbv3small_fpn96_s48_seg4_cs.pt"
# network class -> Detection.kind
KINDS = {"vehicle": "vehicle", "pedestrian": "pedestrian", "static_obstacle": "static"}
LIGHT_PREFIX = "traffic_light_"
LIGHT_SEQUENCE_GAP_S = 1.0  # [s] a light unseen longer than this may have gone through green meanwhile
# The stage takes the segmentation class every 2 px and repeats it (perception/decode.py seg_class_map):
# on the 2-core CPU that is about 3 ms a frame less. It differs from the full-size decision only
# along class edges (about 1 % of the pixels): over the 600 Town02 validation frames the stage's
# map scores mIoU 0.870 against the card's 0.876 (docs/perception.md); `eval perception` keeps 1.
STAGE_SEG_STRIDE = 2
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


def select_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU. Asking for CUDA without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("perception.learned.device: cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Does this device run bf16 natively? CUDA: torch says so. CPU: the processor has AVX-512 BF16
    or AMX (Linux /proc/cpuinfo flags); emulated bf16 on other CPUs is slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_checkpoint(path: str | None) -> Path:
    checkpoint = SHIPPED_CHECKPOINT if path is None else Path(path).expanduser()
    if not checkpoint.is_file():
        where = "perception.learned.checkpoint" if path is not None else "the shipped model"
        raise ConfigError(f"{where}: checkpoint {checkpoint} not found")
    return checkpoint


@dataclass(frozen=True)
class NetworkOutput:
    """Decoded network output for one frame: boxes in camera px."""

    boxes: np.ndarray   # (N, 4) xyxy camera px
    scores: np.ndarray  # (N,)
    labels: list[str]   # class names, (N,)
    seg: np.ndarray     # (h, w) uint8 seg class ids at the network's input size
    nonfinite: tuple[str, ...] = ()  # raw heads holding NaN or inf (then nothing is decoded)


def nonfinite_heads(raw: dict, strides: tuple[int, ...]) -> tuple[str, ...]:
    """Names of the raw outputs (``cls_s4``, ``box_s8``, ``seg``, ...) holding NaN or inf, by their float32
    sums (finite unless a value is; on the CPU 0.12 ms a frame against 2 ms for bf16 isfinite().all())."""
    heads = {**{f"cls_s{s}": t for s, t in zip(strides, raw["cls"])},
             **{f"box_s{s}": t for s, t in zip(strides, raw["box"])}, "seg": raw["seg"]}
    sums = torch.stack([t.sum(dtype=torch.float32) for t in heads.values()]).tolist()
    return tuple(name for name, total in zip(heads, sums) if not math.isfinite(total))


class NetworkRunner:
    """A checkpoint on its device with the inference settings of ``LearnedPerceptionConfig``."""

    def __init__(self, config: LearnedPerceptionConfig, model: PerceptionNet | None = None):
        self.config = config
        self.device = select_device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        if model is None:
            path = resolve_checkpoint(config.checkpoint)
            model, self.meta = load_checkpoint(path, map_location=self.device)
        else:
            self.meta = {}
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=memory_format)
        self.memory_format = memory_format
        self.classes = list(self.model.classes)
        self.input_size = tuple(self.model.input_size)  # (H, W)
        use_bf16 = config.precision == "bf16" or (config.precision == "auto" and native_bf16(self.device))
        self.dtype = torch.bfloat16 if use_bf16 else torch.float32
        self.min_score = min(config.score_threshold.values())

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, h, w) float in [0, 1] at the input size, on the device."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device, non_blocking=True)  # (H, W, 3) uint8
        x = x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)                            # (1, 3, H, W)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="area")
        return x.contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> NetworkOutput:
        h0, w0 = rgb.shape[:2]
        x = self.preprocess(rgb)
        with self._autocast():
            raw = self.model(x)
        nonfinite = nonfinite_heads(raw, self.model.strides)
        if nonfinite:  # decoding NaN scores would report an empty road, not a broken model
            return NetworkOutput(np.zeros((0, 4)), np.zeros(0), [], np.zeros(self.input_size, np.uint8), nonfinite)
        det = self.model.decode(raw, score_threshold=self.min_score, nms_iou=self.config.nms_iou,
                                seg_stride=STAGE_SEG_STRIDE)[0]
        sx, sy = w0 / self.input_size[1], h0 / self.input_size[0]
        boxes = det["boxes"].float().cpu().numpy() * np.array([sx, sy, sx, sy])
        return NetworkOutput(boxes=boxes, scores=det["scores"].float().cpu().numpy(),
                             labels=[self.classes[int(i)] for i in det["labels"].cpu()],
                             seg=det["seg"].to(torch.uint8).cpu().numpy())


def _unusable(obs: Observation, reason: str) -> Perception:
    return Perception(t=obs.t, frame=obs.frame, detections=(), usable=False, reason=reason)


class LearnedPerception:
    """One stage: Observation (camera frames) -> Perception, with no ground truth."""

    name = "perception"

    def __init__(self, config: LearnedPerceptionConfig, road_map=None, camera: str = "front",
                 runner: NetworkRunner | None = None, stop_reach_m: float | None = None):
        """``stop_reach_m``: rear axle to where the planner puts the front bumper's stop, i.e. the
        bumper's reach plus the stop-line margin; with it, a stop line is moved back where the
        signal would otherwise leave the camera's view before the car stops (see _view_limit)."""
        self.config = config
        self.stop_reach_m = stop_reach_m
        self._view_limit_world: tuple[float, float] | None = None  # (x, y) the rear axle should not pass
        self.camera = camera
        self.road_map = road_map
        self.runner = runner or NetworkRunner(config)
        self.check = FrameCheck(camera)
        self.tracker = Tracker(config.tracker)
        seg_classes = list(self.runner.model.seg_classes)
        lut = np.zeros(256, dtype=np.uint8)
        for i, name in enumerate(seg_classes):
            lut[i] = SEG_TO_CARLA_TAG.get(name, 0)
        self._seg_to_tags = lut
        self._road: RoadExtractor | None = None
        self._road_key: tuple | None = None
        self._route: Polyline | None = None
        self._light_memory: tuple[int, str, float] | None = None  # (stop line id, state, t last seen)
        self._pending: tuple[str, int] = ("", 0)  # a new reading and how many frames in a row it came

    def reset(self) -> None:
        self.tracker.reset()
        self.check = FrameCheck(self.camera)
        self._light_memory = None
        self._pending = ("", 0)
        self._view_limit_world = None

    def step(self, obs: Observation) -> Perception:
        problem = self.check.reason(obs) or ego_fault(obs.ego)
        image = obs.cameras.get(self.camera) if obs.cameras else None
        if problem is None and image is None:  # a run without cameras has nothing to perceive from
            problem = f"no {self.camera} camera in the observation"
        if problem is not None:
            return _unusable(obs, problem)
        out = self.runner(image.rgb)
        if out.nonfinite:
            return _unusable(obs, f"network output is not finite ({', '.join(out.nonfinite)})")
        measurements, lights = self._measurements(out, image)
        detections = self.tracker.update(obs.t, obs.ego, measurements, in_view=partial(ground_in_view, image))
        if self.tracker.dropped_nonfinite:
            return _unusable(obs, f"tracker state is not finite (dropped track {list(self.tracker.dropped_nonfinite)})")
        semantic_small = self._seg_to_tags[out.seg]                                   # (h, w) CARLA tags
        h0, w0 = image.rgb.shape[:2]
        semantic = cv2.resize(semantic_small, (w0, h0), interpolation=cv2.INTER_NEAREST)
        return Perception(t=obs.t, frame=obs.frame, detections=detections,
                          traffic_light=self._light_ahead(obs, lights),
                          semantic=semantic, road=self._road_surface(out.seg, image))

    # ---- objects -----------------------------------------------------------------------------
    def _measurements(self, out: NetworkOutput, image: CameraImage):
        cfg = self.config
        K, T = np.asarray(image.K, dtype=float), np.asarray(image.T_ego_cam, dtype=float)
        h_img, w_img = image.rgb.shape[:2]
        measurements, lights = [], []
        for box, score, label in zip(out.boxes, out.scores, out.labels):
            if label.startswith(LIGHT_PREFIX):
                cut = box[0] < 2 or box[1] < 2 or box[2] > w_img - 2 or box[3] > h_img - 2
                # A housing cut by the image edge may hide the lit lamp: its state is not read.
                if score >= cfg.score_threshold.get("traffic_light", 0.5) and not cut:
                    housing = point_at_height(*centre_pixel(box), K, T, cfg.light_height_m)
                    if housing is not None:
                        lights.append((float(score), label[len(LIGHT_PREFIX):], housing, image))
                continue
            kind = KINDS.get(label)
            if kind is None or score < cfg.score_threshold.get(label, 0.5):
                continue
            extent = tuple(float(v) for v in cfg.extent_m.get(label, (1.0, 1.0, 1.0)))
            depth = cfg.contact_depth_m.get(label, extent[0] / 2)
            centre = centre_from_box(box, depth, K, T, image.outline_margin_px)
            if centre is None or math.hypot(*centre) > cfg.max_range_m:
                continue
            measurements.append(Measurement(kind=kind, score=float(score), position=(float(centre[0]), float(centre[1])),
                                            extent=extent, box_2d=tuple(float(v) for v in box)))
        return measurements, lights

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

    # ---- traffic light -----------------------------------------------------------------------
    def _next_stop_line(self, obs: Observation):
        """(index in the map's stop lines, the line) of the next stop line the route crosses."""
        if self.road_map is None:
            return None
        if self._route is None or self._route.points is not obs.route.points:
            self._route = Polyline(obs.route.points)
        reach = self.config.max_range_m + 10.0
        near = ((index, line.p0, line.p1) for index, line in enumerate(self.road_map.stop_lines)
                if math.hypot(line.center[0] - obs.ego.x, line.center[1] - obs.ego.y) <= reach)
        found = stop_line_ahead(self._route, obs.route_progress, near, self.config.max_range_m)
        return None if found is None else (found[0], self.road_map.stop_lines[found[0]])

    def _light_ahead(self, obs: Observation, lights) -> TrafficLightAhead | None:
        found = self._next_stop_line(obs)
        if found is None:
            self._light_memory = None
            return None
        index, line = found
        ego = obs.ego
        c, s = math.cos(ego.yaw), math.sin(ego.yaw)
        p0, p1 = (tuple(map(float, p)) for p in world_to_ego(np.array([line.p0, line.p1]), ego))
        # The signal stands at the stop line: along the line's own direction the housing may be
        # anywhere within the approach's width plus the gate, across it within the gate.
        gate = self.config.light_gate_m
        centre = np.array([(p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2])
        along = np.array([p1[0] - p0[0], p1[1] - p0[1]])
        half = float(np.linalg.norm(along)) / 2
        along = along / max(2 * half, 1e-6)
        normal = np.array([-along[1], along[0]])
        best = None
        for score, state, housing, image in lights:
            d = housing - centre
            if abs(float(d @ normal)) <= gate and abs(float(d @ along)) <= half + gate:
                if best is None or score > best[0]:
                    best = (score, state, housing, image)
        state = "unknown"
        if best is not None:
            state = self._confirmed_state(index, best[1], obs.t)
            if self.stop_reach_m is not None:
                advance = self._view_limit(best[2], best[3])
                self._view_limit_world = (ego.x + advance * c, ego.y + advance * s)
        elif self._light_memory is not None and self._light_memory[0] == index:
            # Unseen now: a red or yellow light is taken to stay so until it is seen otherwise
            # (running it on a missed detection is the worse error); green fades to unknown.
            last_state, last_seen = self._light_memory[1], self._light_memory[2]
            if last_state in ("red", "yellow") or obs.t - last_seen <= self.config.light_hold_s:
                state = last_state
        if self._light_memory is None or self._light_memory[0] != index:
            self._view_limit_world = None
        if self._view_limit_world is not None:
            # Stop where the signal is still in view: move the line back (towards the ego) until
            # the bumper's stop leaves the rear axle short of the view limit.
            lx = float(world_to_ego(np.array(self._view_limit_world), ego)[0, 0])
            forward = normal if float(normal @ np.array([1.0, 0.0])) >= 0 else -normal
            ahead = float(centre @ forward)
            shift = max(0.0, ahead - (lx + self.stop_reach_m))
            if shift > 0.0:
                p0 = (p0[0] - shift * forward[0], p0[1] - shift * forward[1])
                p1 = (p1[0] - shift * forward[0], p1[1] - shift * forward[1])
        return TrafficLightAhead(id=index, state=state, stop_line=(*p0, *p1))

    def _confirmed_state(self, index: int, reading: str, t: float) -> str:
        """The light's state given this frame's reading. The first reading of a stop line's light
        counts at once; a change of state needs ``light_confirm_frames`` equal readings in a
        row, so that one misread frame neither starts nor stops the car. Red never turns yellow
        while the light stays in view (``LIGHT_SEQUENCE_GAP_S``)."""
        memory = self._light_memory
        if memory is None or memory[0] != index:
            self._view_limit_world = None
            self._light_memory, self._pending = (index, reading, t), ("", 0)
            return reading
        if reading == memory[1]:
            self._light_memory, self._pending = (index, reading, t), ("", 0)
            return reading
        if (memory[1] == "red" and reading == "yellow" and self._pending[0] != "yellow"
                and t - memory[2] <= LIGHT_SEQUENCE_GAP_S):  # (a yellow streak only starts after a gap)
            # Signals go red -> green -> yellow: a yellow read straight after red, with the light in
            # view, is a misread, and taking it would let the yellow rule release a stop under way.
            self._light_memory, self._pending = (index, "red", t), ("", 0)
            return "red"
        count = self._pending[1] + 1 if self._pending[0] == reading else 1
        self._pending = (reading, count)
        if count >= self.config.light_confirm_frames:
            self._light_memory, self._pending = (index, reading, t), ("", 0)
            return reading
        self._light_memory = (index, memory[1], t)
        return memory[1]

    def _view_limit(self, housing: np.ndarray, image: CameraImage) -> float:
        """How far the ego may drive straight ahead [m] before the signal housing at `housing`
        (x, y ego frame, centre ``light_height_m`` up) leaves the camera's view, keeping
        ``light_view_margin_px`` from the image edges. Bisection: moving closer only ever pushes
        the housing outwards in the image."""
        cfg = self.config
        K, T = np.asarray(image.K, dtype=float), np.asarray(image.T_ego_cam, dtype=float)
        h_img, w_img = image.rgb.shape[:2]
        hw, hh = cfg.light_housing_m[0] / 2, cfg.light_housing_m[1] / 2
        offsets = np.array([[0.0, dy, dz] for dy in (-hw, hw) for dz in (-hh, hh)])  # (4, 3)
        centre = np.array([float(housing[0]), float(housing[1]), cfg.light_height_m])
        m = cfg.light_view_margin_px

        def visible(advance: float) -> bool:
            uv, in_front = project_to_image(centre - np.array([advance, 0.0, 0.0]) + offsets, K, T)
            return bool(in_front.all() and np.all((uv[:, 0] >= m) & (uv[:, 0] <= w_img - m)
                                                  & (uv[:, 1] >= m) & (uv[:, 1] <= h_img - m)))

        if not visible(0.0):
            return 0.0
        low, high = 0.0, float(housing[0])
        for _ in range(20):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if visible(mid) else (low, mid)
        return low

"""Messages that cross stage boundaries (DESIGN.md, Messages between stages).

Immutable dataclasses holding numpy arrays; torch tensors never cross a stage boundary.
Every message carries the sim time ``t`` [s] and the sensor ``frame`` id it derives from.
All poses are in the world frame (OpenDRIVE inertial: x east, y north, yaw CCW from +x)
unless a field says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Control:
    """A command with CARLA VehicleControl semantics.

    steer in [-1, 1], positive turns right (as in CARLA); throttle and brake in [0, 1].
    """

    steer: float = 0.0
    throttle: float = 0.0
    brake: float = 0.0
    hand_brake: bool = False
    reverse: bool = False

    def clipped(self) -> "Control":
        """The same command with every channel clipped to its valid range; NaN becomes 0."""

        def clip(value: float, low: float, high: float) -> float:
            value = float(value)
            return 0.0 if value != value else min(max(value, low), high)

        return Control(
            steer=clip(self.steer, -1.0, 1.0),
            throttle=clip(self.throttle, 0.0, 1.0),
            brake=clip(self.brake, 0.0, 1.0),
            hand_brake=bool(self.hand_brake),
            reverse=bool(self.reverse),
        )


@dataclass(frozen=True)
class EgoState:
    """The ego vehicle as measured. Pose of the rear-axle centre in the world frame."""

    x: float  # [m]
    y: float  # [m]
    yaw: float  # [rad]
    speed: float  # [m/s] signed along the body x axis
    yaw_rate: float  # [rad/s]
    accel: float  # [m/s^2] longitudinal
    steer_angle: float  # [rad] front-wheel angle, positive left (right-handed frame)
    lateral_speed: float = 0.0  # [m/s] body y velocity


@dataclass(frozen=True)
class CameraImage:
    """One RGB camera frame with its calibration.

    rgb: (H, W, 3) uint8. K: (3, 3) intrinsics in OpenCV's pixel convention (the centre of pixel
    (row r, column c) at (c, r)); a camera whose K counts pixel centres at c + 0.5 converts at its
    boundary (its principal point moves by -0.5 px on both axes). T_ego_cam: (4, 4) pose of the
    camera in the ego frame, mapping camera-frame points (OpenCV: x right, y down, z forward) to
    ego frame. encoded: the frame as the camera sent it (``encoding`` jpeg or png; core/camera.py),
    of which ``rgb`` is the decoded image; None for a frame that never went over a camera link
    (or that a fault changed after it arrived). 2D boxes count pixel edges, half a pixel from K's coordinates: see
    perception/geometry.py. outline_margin_px: how far this
    camera's silhouettes reach past an object's true outline (the embedded renderer's
    OUTLINE_MARGIN_PX; 0 for a camera that samples pixel centres), so that boxes drawn around
    them, or learned from them, are read back at the true outline.
    """

    name: str
    rgb: np.ndarray
    K: np.ndarray
    T_ego_cam: np.ndarray
    outline_margin_px: float = 0.0
    encoded: bytes | None = None
    encoding: str = ""


@dataclass(frozen=True)
class Box2D:
    """An occlusion-aware 2D box in one camera, pixels, x0 <= x < x1."""

    x0: float
    y0: float
    x1: float
    y1: float
    visible_fraction: float  # visible pixels / pixels the object would cover unoccluded


@dataclass(frozen=True)
class ObjectTruth:
    """Ground truth of one actor. Box centre is the 3D box centre (not the ground point)."""

    id: int
    kind: str  # vehicle | pedestrian | static | traffic_light
    tag: int  # CARLA semantic tag id
    center_world: tuple[float, float, float]
    yaw_world: float
    extent: tuple[float, float, float]  # full length, width, height [m]
    center_ego: tuple[float, float, float]
    yaw_ego: float
    velocity_world: tuple[float, float]  # [m/s]
    velocity_ego: tuple[float, float]  # [m/s], relative to the ground, ego axes
    boxes_2d: dict[str, Box2D] = field(default_factory=dict)


@dataclass(frozen=True)
class TrafficLightTruth:
    id: int
    state: str  # red | yellow | green
    stop_line: tuple[float, float, float, float]  # x0, y0, x1, y1 of the stop line [m]
    position: tuple[float, float, float]  # housing centre [m]
    controls: tuple[tuple[int, int], ...]  # (road id, lane id) pairs it governs


@dataclass(frozen=True)
class LaneTruth:
    road_id: int
    lane_id: int
    lane_width: float  # [m]
    lateral_offset: float  # [m] of the ego from its lane centre, positive left
    is_junction: bool
    on_road: bool


@dataclass(frozen=True)
class GroundTruth:
    objects: tuple[ObjectTruth, ...]
    semantic: dict[str, np.ndarray]  # per camera, (H, W) uint8 CARLA tag ids
    depth: dict[str, np.ndarray]  # per camera, (H, W) float32, camera-frame z [m]
    traffic_lights: tuple[TrafficLightTruth, ...]
    lane: LaneTruth


@dataclass(frozen=True)
class Event:
    """Something that happened this tick: collision, contact_at_standstill, lane_departure,
    off_road, red_light, route_completed, ..."""

    t: float
    kind: str
    detail: str
    other_id: int | None = None


@dataclass(frozen=True)
class Route:
    """The ego route as a dense polyline. points: (N, 2) world [m]; s: (N,) arc length [m]."""

    points: np.ndarray
    s: np.ndarray
    speed_limit: float  # [m/s]


@dataclass(frozen=True)
class Observation:
    t: float  # [s]
    frame: int
    cameras: dict[str, CameraImage]
    ego: EgoState
    route: Route
    route_progress: float  # [m] along route
    events: tuple[Event, ...] = ()
    ground_truth: GroundTruth | None = None


@dataclass(frozen=True)
class Detection:
    """One perceived object. Positions and velocities in the ego frame at the frame's time."""

    track_id: int
    kind: str  # vehicle | pedestrian | static | traffic_light
    score: float
    position: tuple[float, float]  # [m] box centre on the ground, ego frame
    yaw: float  # [rad] ego frame
    extent: tuple[float, float, float]  # [m] length, width, height
    velocity: tuple[float, float]  # [m/s] over ground, ego axes
    box_2d: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 [px] in `camera`'s image
    camera: str = ""  # the rig camera that saw it this frame ("" when none did)


@dataclass(frozen=True)
class TrafficLightAhead:
    """The signal that governs the ego's lane at the next stop line on its route."""

    id: int
    state: str  # red | yellow | green | unknown
    stop_line: tuple[float, float, float, float]  # x0, y0, x1, y1 [m], ego frame


@dataclass(frozen=True)
class RoadSurface:
    """The road as the camera sees it, on the ground plane of the ego frame.

    drivable: (H, W) bool bird's-eye grid; cell (i, j) covers x = x_max - (i + 0.5) * resolution,
    y = y_max - (j + 0.5) * resolution (row 0 is farthest ahead, column 0 leftmost).
    Boundaries are (N, 2) ego-frame points [m] ordered by x, or None when not seen.
    """

    drivable: np.ndarray
    resolution: float  # [m] per cell
    x_max: float  # [m] far edge of the grid
    y_max: float  # [m] left edge of the grid
    left_boundary: np.ndarray | None = None  # nearest lane boundary left of the ego
    right_boundary: np.ndarray | None = None  # nearest lane boundary right of the ego


@dataclass(frozen=True)
class Perception:
    """What the perception stage knows at frame `frame`.

    usable is False when the input frame could not be trusted (NaN, frozen camera, ...);
    `reason` says why, and the planner must not drive on it.
    """

    t: float
    frame: int
    detections: tuple[Detection, ...]
    traffic_light: TrafficLightAhead | None = None
    semantic: np.ndarray | None = None  # (H, W) uint8 CARLA tags, main camera
    road: RoadSurface | None = None  # drivable area and lane boundaries (learned perception)
    usable: bool = True
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    """A time-parameterised trajectory in the world frame, with the behaviour decision.

    Arrays are (N,): t [s] from the plan's time, x, y [m], yaw [rad], v [m/s], a [m/s^2],
    curvature [1/m].
    """

    t: float
    frame: int
    times: np.ndarray
    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    v: np.ndarray
    a: np.ndarray
    curvature: np.ndarray
    decision: str  # cruise | follow | stop_obstacle | stop_light | stop_goal | emergency_stop | pass
    reason: str  # one line: "stop: pedestrian 3 at 11.8 m, TTC 2.1 s"

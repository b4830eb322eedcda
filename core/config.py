"""The stack's typed, strict config schema and the default stack (configs/stack.yaml, whose
values are the schema defaults: tests/test_config_defaults.py).

An unknown key, a wrong type or an out-of-range value raises ConfigError with one message that
names the file (or "command line"), the dotted key path and what was expected
(core/config_load.py reads and layers the files and overrides).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, create_model, field_validator

from stagepilot.core.config_base import ConfigError, Strict  # noqa: F401  (re-exported)
from stagepilot.core.config_base import (MAX_ACCEL_MPS2, MAX_DELAY_MS, MAX_DELAY_S, MAX_DISTANCE_M,
                                         MAX_DURATION_S, MAX_SEED, MAX_SPEED_MPS, STRICT_CONFIG)
from stagepilot.core.config_control import ControllerConfig
from stagepilot.core.config_lattice import LatticeConfig
from stagepilot.core.config_load import load_config
from stagepilot.core.vehicle_params import VehicleParams

CONFIG_ROOT = Path(str(resources.files("stagepilot.configs")))
DEFAULT_STACK = CONFIG_ROOT / "stack.yaml"

Accel = Annotated[float, Field(ge=0.0, le=MAX_ACCEL_MPS2)]  # [m/s^2]
DelayMs = Annotated[float, Field(ge=0.0, le=MAX_DELAY_MS)]  # [ms]
Size = Annotated[float, Field(gt=0.0, le=100.0)]  # [m] of an object
Depth = Annotated[float, Field(ge=-100.0, le=100.0)]  # [m] along a viewing ray
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


# ---------------------------------------------------------------- stack schema


class CameraConfig(Strict):
    width: int = Field(640, ge=16, le=4096)  # [px]
    height: int = Field(360, ge=16, le=4096)  # [px]
    fov_deg: float = Field(90.0, gt=1.0, lt=179.0)
    x: float = Field(1.5, ge=-50.0, le=50.0)  # [m] ego frame, forward of the rear axle
    y: float = Field(0.0, ge=-50.0, le=50.0)  # [m] left
    z: float = Field(1.6, gt=0.0, le=50.0)  # [m] above ground
    roll_deg: float = Field(0.0, ge=-360.0, le=360.0)
    pitch_deg: float = Field(0.0, ge=-45.0, le=45.0)  # positive looks down
    yaw_deg: float = Field(0.0, ge=-360.0, le=360.0)
    # How the camera sends its frames (core/camera.py); the stack sees the decoded frame.
    stream: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = Field(95, ge=50, le=100)  # 95: the JPEG quality of the training frames


class RenderConfig(Strict):
    ground_resolution_m: float = Field(0.1, gt=0.01, le=1.0)
    view_distance_m: float = Field(150.0, gt=10.0, le=10_000.0)
    scenery: bool = True  # buildings, trees and poles beside the roads


class TrafficLightConfig(Strict):
    green_s: float = Field(12.0, gt=0.0, le=MAX_DURATION_S)
    yellow_s: float = Field(3.0, ge=0.0, le=MAX_DURATION_S)
    all_red_s: float = Field(1.0, ge=0.0, le=MAX_DURATION_S)


class IdmConfig(Strict):
    """Intelligent Driver Model for NPC vehicles (REFERENCE.md: T 1.5 s, s0 2 m, delta 4)."""

    time_headway_s: float = Field(1.5, gt=0.0, le=MAX_DELAY_S)
    min_gap_m: float = Field(2.0, gt=0.0, le=1000.0)
    max_accel: float = Field(1.5, gt=0.0, le=MAX_ACCEL_MPS2)  # [m/s^2]
    comfortable_decel: float = Field(2.5, gt=0.0, le=MAX_ACCEL_MPS2)  # [m/s^2]
    delta: float = Field(4.0, gt=0.0, le=20.0)
    look_ahead_m: float = Field(80.0, gt=0.0, le=10_000.0)


class TrafficConfig(Strict):
    idm: IdmConfig = IdmConfig()
    traffic_lights: TrafficLightConfig = TrafficLightConfig()


class FollowerConfig(Strict):
    """The reference follower, a placeholder controller until the planner lands."""

    lookahead_min_m: float = Field(4.0, gt=0.0, le=1000.0)
    lookahead_gain_s: float = Field(0.4, ge=0.0, le=MAX_DELAY_S)  # look-ahead grows with speed [s]
    max_lateral_accel: float = Field(2.0, gt=0.0, le=MAX_ACCEL_MPS2)  # [m/s^2] sets the curve speed
    speed_gain: float = Field(0.5, gt=0.0, le=100.0)  # throttle or brake per m/s of speed error
    stop_for_red: bool = True


def _vehicle_config_model() -> type[BaseModel]:
    # Mirror the vehicle dataclass so its defaults and field names have one home.
    fields = {
        f.name: (float, Field(f.default, gt=0.0, le=MAX_SPEED_MPS if f.name.endswith("_mps") else 1e9))
        for f in dataclasses.fields(VehicleParams)
    }
    return create_model("VehicleConfig", __config__=STRICT_CONFIG, **fields)


VehicleConfig = _vehicle_config_model()


# The default rig (docs/perception.md, "Camera rig"): three 90 deg cameras at the same mount, the
# front one and two turned 60 deg either way, as the CARLA Leaderboard's camera agents have them.
# Together they see 210 deg, each side view overlapping the front one by 30 deg, so that traffic
# crossing a junction is in view before the car enters it.
DEFAULT_RIG = {"front": CameraConfig(pitch_deg=3.0),
               "front_left": CameraConfig(y=0.3, pitch_deg=3.0, yaw_deg=60.0),
               "front_right": CameraConfig(y=-0.3, pitch_deg=3.0, yaw_deg=-60.0)}


class SimConfig(Strict):
    source: Literal["embedded", "carla"] = "embedded"  # the world: the embedded simulator or a CARLA server
    dt_s: float = Field(0.05, ge=0.001, le=0.2)  # fixed step
    # The camera rig by name; the first is the main camera (the road and the semantic image come
    # from it). `null` removes a camera that an earlier layer configured.
    cameras: dict[str, CameraConfig | None] = DEFAULT_RIG
    render: RenderConfig = RenderConfig()
    ground_truth: bool = True

    @field_validator("cameras")
    @classmethod
    def _drop_removed(cls, cameras: dict) -> dict:
        return {name: cam for name, cam in cameras.items() if cam is not None}


class CarlaConfig(Strict):
    """The CARLA server that `sim.source: carla` drives (sim/carla; docs/carla.md)."""

    host: str = Field("localhost", min_length=1)
    port: int = Field(2000, ge=1, le=65535)  # the server's RPC port (-carla-rpc-port)
    tm_port: int = Field(8000, ge=1, le=65535)  # the Traffic Manager's port
    timeout_s: float = Field(10.0, gt=0.0, le=600.0)  # connecting, loading a map, and each tick
    # More servers, "host:port[:tm_port]": parallel workers of evaluate and tune take one each.
    servers: list[str] = []
    vehicle_blueprint: str = Field("vehicle.lincoln.mkz_2020", min_length=1)  # the ego
    recorder: bool = False  # also run CARLA's own recorder; the recording's metadata names its file

    @field_validator("servers")
    @classmethod
    def _endpoints(cls, servers: list[str]) -> list[str]:
        for entry in servers:
            parts = entry.rsplit(":", 2) if entry.count(":") >= 1 else []
            if len(parts) < 2 or not all(p.isdigit() and 0 < int(p) < 65536 for p in parts[1:]) or not parts[0]:
                raise ValueError(f"{entry!r}: expected host:port or host:port:tm_port")
        return servers


class BehaviourConfig(Strict):
    """The behaviour layer: which speed to aim for and where to stop, and why."""

    max_lateral_accel: float = Field(3.0, gt=0.0, le=MAX_ACCEL_MPS2)  # [m/s^2] sets the curve speed
    comfort_decel: float = Field(2.5, gt=0.0, le=MAX_ACCEL_MPS2)  # [m/s^2] planned stops
    max_decel: float = Field(6.0, gt=0.0, le=MAX_ACCEL_MPS2)  # [m/s^2] emergency stop
    time_headway_s: float = Field(1.8, gt=0.0, le=MAX_DELAY_S)  # following
    min_gap_m: float = Field(5.0, gt=0.0, le=1000.0)  # [m] bumper to bumper when stopped behind a vehicle
    stop_margin_m: float = Field(4.0, ge=0.0, le=1000.0)  # [m] left before a stopped obstacle or pedestrian
    stop_line_margin_m: float = Field(1.0, ge=0.0, le=1000.0)  # [m] front bumper before the stop line
    corridor_margin_m: float = Field(0.6, ge=0.0, le=50.0)  # [m] added to half widths to call something "in path"
    look_ahead_m: float = Field(80.0, gt=0.0, le=10_000.0)  # [m] along the route
    goal_tolerance_m: float = Field(1.0, ge=0.0, le=1000.0)
    # [s] while the car moves, a pedestrian it stops for stays, as last seen, this long after its
    # track is lost (0: off; see docs/perception.md for what 1.0 did to the learned drives)
    pedestrian_hold_s: float = Field(0.0, ge=0.0, le=MAX_DELAY_S)


class PlannerConfig(Strict):
    behaviour: BehaviourConfig = BehaviourConfig()
    lattice: LatticeConfig = LatticeConfig()
    stitch_tolerance_m: float = Field(0.5, ge=0.0, le=1000.0)  # replan from the measured state beyond this
    stitch_heading_tolerance_rad: float = Field(0.15, ge=0.0, le=2 * math.pi)


class PerfectPerceptionConfig(Strict):
    """Ground truth as the Perception message, with optional imperfections."""

    position_noise_m: float = Field(0.0, ge=0.0, le=1000.0)  # std of position noise [m]
    velocity_noise_mps: float = Field(0.0, ge=0.0, le=MAX_SPEED_MPS)  # std of velocity noise [m/s]
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # probability an object is missed in a frame
    extra_latency_s: float = Field(0.0, ge=0.0, le=MAX_DELAY_S)  # detections are this old
    max_range_m: float = Field(80.0, gt=0.0, le=MAX_DISTANCE_M)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # rig: only what the rig's cameras could see (inside a view, not fully occluded; a light's
    # state only while its head is in view), so that perfect and learned perception see the same
    # field; all: everything in range, in every direction (planning on its own).
    coverage: Literal["rig", "all"] = "rig"


class TrackerConfig(Strict):
    """Multi-object tracking of the learned detections (perception/tracking.py): association by
    gated assignment, a constant-velocity Kalman filter per track, in the world frame."""

    # Mahalanobis distance beyond which a detection starts a new track
    gate_sigma: float = Field(3.5, gt=0.0, le=1000.0)
    min_hits: int = Field(2, ge=1, le=10_000)  # frames a track needs before it is reported
    # frames a track may go unseen in the camera's view before it is dropped
    max_misses: int = Field(4, ge=0, le=10_000)
    # [s] how long a track whose predicted ground point the camera cannot see (beside the view,
    # under the bonnet) is kept on its prediction: it left the view, it did not vanish
    hidden_max_s: float = Field(1.5, ge=0.0, le=MAX_DELAY_S)
    # [m/s^2] process noise per kind: a hard-braking car (7 m/s^2) stays inside it; walkers change pace gently
    accel_std: dict[Literal["vehicle", "pedestrian", "static"], Accel] = {"vehicle": 8.0, "pedestrian": 1.5,
                                                                          "static": 0.5}
    position_std_m: float = Field(0.3, gt=0.0, le=1000.0)  # [m] measurement noise at 0 m
    # Along the viewing ray a pixel of ground contact is worth range^2 / (f h) metres
    # (f 320 px at the network's 640x360 input, camera 1.6 m up): ~0.7 px of box error.
    depth_std_per_m2: float = Field(0.0014, ge=0.0, le=10.0)  # [1/m]
    bearing_std_rad: float = Field(0.003, ge=0.0, le=10.0)  # across the ray: ~0.7 px
    # A track's velocity is reported once its speed stands this many standard deviations out of
    # the filter's own velocity uncertainty; before that it is reported at rest. A new track's
    # speed is its first two positions differenced, metres of noise at 30 m over 50 ms.
    velocity_sigma: float = Field(2.0, ge=0.0, le=1000.0)


class LearnedPerceptionConfig(Strict):
    """The trained network (perception/learned.py) as the perception stage."""

    checkpoint: str | None = None  # null: the shipped model (perception/weights/)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present, else CPU
    threads: int | None = Field(None, ge=1, le=4096)  # torch CPU threads; null: torch's default
    # auto: bf16 autocast on CUDA; on a CPU with AVX-512 BF16/AMX bf16 is one of the paths `auto` times
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # torch: the network in PyTorch (device and precision as above); onnxruntime: its ONNX
    # export on onnxruntime's CPU provider in fp32 (exported once per checkpoint, then cached);
    # openvino: the same export on OpenVINO's CPU plugin, in bf16 where the precision and CPU
    # allow, else fp32; auto: torch on CUDA; on a CPU the fastest of the paths the precision
    # allows, timed on the stage's batch once per machine and remembered (perception/paths.py)
    backend: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
    channels_last: bool = True
    # How much of the rig the network reads each tick (perception/operating.py): full | side_band |
    # side_band_in_turn | main_only | main_unzoomed | main_reduced; auto: the first of these whose network time
    # per tick, timed once per machine on the chosen path, is at most network_share of the
    # perception stage's budget
    operating_point: Literal["auto", "full", "side_band", "side_band_in_turn", "main_only",
                             "main_unzoomed", "main_reduced"] = "auto"
    side_band_elevation_deg: float = Field(10.0, ge=-20.0, le=60.0)  # [deg] the side cameras' band ends this far above the horizon
    network_share: float = Field(0.35, gt=0.0, le=1.0)
    # The horizon zoom (perception/zoom.py): the main camera's band of horizon_zoom_rows rows (at
    # the network's input scale) around the horizon and horizon_zoom_width of its width, read again
    # magnified horizon_zoom times, so
    # that far, small objects are placed; 1 turns it off. The operating points from full to
    # main_only read it, main_unzoomed and main_reduced do not.
    horizon_zoom: float = Field(2.0, ge=1.0, le=4.0)
    horizon_zoom_rows: int = Field(80, ge=0, le=256)  # 0 turns the zoom off too
    horizon_zoom_width: float = Field(0.675, ge=0.1, le=1.0)  # share of the frame's width, about its centre
    # Small vehicle boxes looked at again on the frame's own pixels (perception/refine.py): auto: the
    # shipped refiner when the checkpoint is the detector it was trained on, else none; off; or a
    # refiner file from `stagepilot train-refiner`
    box_refiner: str = "auto"
    score_threshold: dict[str, Probability] = {"vehicle": 0.4, "pedestrian": 0.6, "static_obstacle": 0.4,
                                               "traffic_light": 0.4}
    nms_iou: float = Field(0.5, gt=0.0, le=1.0)
    max_range_m: float = Field(60.0, gt=0.0, le=MAX_DISTANCE_M)  # detections projected beyond this are dropped
    # Assumed length, width, height of what a box shows: the footprint its track gives the planner.
    extent_m: dict[str, tuple[Size, Size, Size]] = {
        "vehicle": (4.5, 1.9, 1.5), "pedestrian": (0.5, 0.5, 1.8), "static_obstacle": (0.6, 0.6, 1.0)}
    # How far the centre lies behind the lowest point a box shows, along the viewing ray [m]. A
    # car's lowest point seen from behind (or ahead) is where its rear (front) tyres touch the
    # road, 0.385 of its length from its centre in the embedded simulator (sim/render/shapes.py),
    # not its bumper, which rides above the road.
    contact_depth_m: dict[str, Depth] = {"vehicle": 1.73, "pedestrian": 0.25, "static_obstacle": 0.3}
    light_height_m: float = Field(4.2, gt=0.0, le=100.0)  # [m] signal housing centre above the road
    light_gate_m: float = Field(6.0, gt=0.0, le=1000.0)  # [m] housing estimate to the stop line's signal position
    light_confirm_frames: int = Field(3, ge=1, le=10_000)  # equal readings in a row before the light's state changes
    # keep a green reading this long when the light is not seen (red / yellow stay)
    light_hold_s: float = Field(0.5, ge=0.0, le=MAX_DELAY_S)
    # Signal housing (width, height) [m], and how far inside the image edges it must stay: a car
    # stopping at a light keeps it in view, so that it sees the light turn green.
    light_housing_m: tuple[Size, Size] = (0.36, 0.95)
    light_view_margin_px: float = Field(14.0, ge=0.0, le=4096.0)
    tracker: TrackerConfig = TrackerConfig()


class PerceptionConfig(Strict):
    """Which perception stage drives (``kind``) and the settings of each."""

    kind: Literal["learned", "perfect"] = "learned"
    learned: LearnedPerceptionConfig = LearnedPerceptionConfig()
    perfect: PerfectPerceptionConfig = PerfectPerceptionConfig()


class StageRuntimeConfig(Strict):
    budget_ms: float = Field(gt=0.0, le=MAX_DELAY_MS)
    # What happens when the stage is late: warn (record, wait for it), hold (reuse the
    # newest output that was ready, re-anchored to the current pose), failsafe (bounded stop).
    on_miss: Literal["warn", "hold", "failsafe"] = "hold"


class StagesConfig(Strict):
    perception: StageRuntimeConfig = StageRuntimeConfig(budget_ms=40.0)
    planner: StageRuntimeConfig = StageRuntimeConfig(budget_ms=15.0)
    controller: StageRuntimeConfig = StageRuntimeConfig(budget_ms=5.0, on_miss="warn")


class RuntimeConfig(Strict):
    """When a command takes effect in sim time (DESIGN.md, time models), and what happens
    when a stage is late or its input is stale."""

    time_model: Literal["ideal", "budget", "measured"] = "budget"
    pipelined: bool = False  # perception of frame n+1 overlaps planning + control of frame n
    stages: StagesConfig = StagesConfig()
    stale_input_s: float = Field(0.5, gt=0.0, le=MAX_DELAY_S)  # perception older than this: fail-safe
    failsafe_brake: float = Field(0.7, gt=0.0, le=1.0)  # brake command of the fail-safe stop


class FaultsConfig(Strict):
    """Fault injection, for tests and for probing robustness (all off by default)."""

    stage_delay_ms: dict[Literal["perception", "planner", "controller"], DelayMs] = {}
    drop_frame_probability: float = Field(0.0, ge=0.0, lt=1.0)  # camera frame missing
    frozen_camera_from_s: float | None = Field(None, ge=0.0, le=MAX_DURATION_S)  # the same frame repeats from then on
    nan_images_from_s: float | None = Field(None, ge=0.0, le=MAX_DURATION_S)  # images turn to NaN from then on
    blank_images_from_s: float | None = Field(None, ge=0.0, le=MAX_DURATION_S)  # images turn black from then on
    image_noise_std: float = Field(0.0, ge=0.0, le=100.0)  # extra Gaussian noise [grey levels]
    # every traffic light (pole, housing, lamps) is painted over in every camera until then, as if
    # a sign hid it: the stage cannot read any light (the images' ground truth is left as it is)
    lights_hidden_until_s: float | None = Field(None, ge=0.0, le=MAX_DURATION_S)
    seed: int = Field(0, ge=0, le=MAX_SEED)


class StackConfig(Strict):
    sim: SimConfig = SimConfig()
    vehicle: VehicleConfig = VehicleConfig()  # type: ignore[valid-type]
    traffic: TrafficConfig = TrafficConfig()
    follower: FollowerConfig = FollowerConfig()
    perception: PerceptionConfig = PerceptionConfig()
    planner: PlannerConfig = PlannerConfig()
    controller: ControllerConfig = ControllerConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    faults: FaultsConfig = FaultsConfig()
    carla: CarlaConfig = CarlaConfig()


# ---------------------------------------------------------------- default stack


def load_stack(
    files: list[str | Path] | None = None, overrides: list[str] | None = None
) -> StackConfig:
    """Default stack.yaml, then each file in order, then each `key.path=value` override."""
    return load_config(StackConfig, [DEFAULT_STACK, *(files or [])], overrides)  # type: ignore[return-value]


def config_hash(config: BaseModel) -> str:
    """A stable short hash of a resolved config."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]

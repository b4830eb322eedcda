"""Sensors on the CARLA ego: the rig's RGB, semantic and depth cameras, collision and lane
invasion, with their data matched by frame id.

Each camera's callback puts (frame, data) into its own queue; `SensorQueue.take(frame)` waits
for exactly that frame, with a deadline. Older frames are dropped and counted; a later frame
in place of the wanted one, or nothing before the deadline, is a `CarlaError` that names the
sensor and the frame: a frame is never silently replaced by "the latest image".
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from stagepilot.core.camera import camera_pose
from stagepilot.core.carla_frame import camera_mount, carla_camera_intrinsics
from stagepilot.core.config import CameraConfig
from stagepilot.sim.carla.connection import CarlaError

DEPTH_FAR_M = 1000.0  # CARLA's depth camera encodes 0..1000 m in 24 bits
CAMERA_KINDS = {"rgb": "sensor.camera.rgb", "semantic": "sensor.camera.semantic_segmentation",
                "depth": "sensor.camera.depth"}


# ---------------------------------------------------------------- decoding carla.Image

def _bgra(raw: bytes | memoryview, width: int, height: int) -> np.ndarray:
    data = np.frombuffer(raw, np.uint8)
    if data.size != width * height * 4:
        raise ValueError(f"image of {data.size} bytes, expected {width}x{height}x4")
    return data.reshape(height, width, 4)


def decode_rgb(raw, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB from CARLA's BGRA bytes."""
    return np.ascontiguousarray(_bgra(raw, width, height)[:, :, 2::-1])


def decode_semantic(raw, width: int, height: int) -> np.ndarray:
    """(H, W) uint8 CARLA tags: the semantic camera writes the tag in the red channel."""
    return np.ascontiguousarray(_bgra(raw, width, height)[:, :, 2])


def decode_depth(raw, width: int, height: int) -> np.ndarray:
    """(H, W) float32 camera-frame z [m]: (R + 256 G + 65536 B) / (2^24 - 1) * 1000 m."""
    bgra = _bgra(raw, width, height).astype(np.float32)
    normalized = (bgra[:, :, 2] + bgra[:, :, 1] * 256.0 + bgra[:, :, 0] * 65536.0) / (256.0 ** 3 - 1.0)
    return normalized * np.float32(DEPTH_FAR_M)


# ---------------------------------------------------------------- frame-matched queues

class SensorQueue:
    """One sensor's data by frame id, filled from the client's callback thread."""

    def __init__(self, name: str):
        self.name = name
        self._items: deque = deque()  # (frame, data), in the order the server sent them
        self._ready = threading.Condition()
        self.dropped = 0  # frames older than the one asked for

    def put(self, data) -> None:
        with self._ready:
            self._items.append((int(data.frame), data))
            self._ready.notify()

    def take(self, frame: int, timeout_s: float, where: str):
        """The data of `frame`, waiting at most `timeout_s` [s] for it."""
        deadline = time.monotonic() + timeout_s
        with self._ready:
            while True:
                while self._items and self._items[0][0] < frame:
                    self._items.popleft()
                    self.dropped += 1
                if self._items:
                    got, data = self._items.popleft()
                    if got == frame:
                        return data
                    raise CarlaError(f"{where}: sensor {self.name} skipped frame {frame} (next data is frame "
                                     f"{got}); a frame went missing")
                left = deadline - time.monotonic()
                if left <= 0 or not self._ready.wait(left):
                    if not self._items:
                        raise CarlaError(f"{where}: sensor {self.name} sent nothing for frame {frame} within "
                                         f"{timeout_s:g} s")

    def drop_through(self, frame: int) -> None:
        """Forget data up to `frame` unread (a tick whose images nobody wants)."""
        with self._ready:
            while self._items and self._items[0][0] <= frame:
                self._items.popleft()


class EventSensor:
    """Collision or lane invasion: data only when something happens, collected per frame."""

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._items: list = []

    def put(self, data) -> None:
        with self._lock:
            self._items.append(data)

    def drain(self, up_to_frame: int) -> list:
        with self._lock:
            ready = [d for d in self._items if int(d.frame) <= up_to_frame]
            self._items = [d for d in self._items if int(d.frame) > up_to_frame]
        return ready


@dataclass(frozen=True)
class CameraRigSpec:
    """One rig camera as the CARLA backend places it."""

    name: str
    config: CameraConfig
    K: np.ndarray  # (3, 3) in OpenCV's pixel convention (core/carla_frame.py)
    T_ego_cam: np.ndarray  # (4, 4) camera (OpenCV) to ego frame, as the embedded cameras


def rig_specs(cameras: dict[str, CameraConfig]) -> dict[str, CameraRigSpec]:
    return {name: CameraRigSpec(name, cam, carla_camera_intrinsics(cam.width, cam.height, cam.fov_deg),
                                camera_pose(cam.x, cam.y, cam.z, cam.roll_deg, cam.pitch_deg, cam.yaw_deg))
            for name, cam in cameras.items()}


def camera_blueprint(library, kind: str, cam: CameraConfig):
    blueprint = library.find(CAMERA_KINDS[kind])
    blueprint.set_attribute("image_size_x", str(cam.width))
    blueprint.set_attribute("image_size_y", str(cam.height))
    blueprint.set_attribute("fov", str(cam.fov_deg))
    blueprint.set_attribute("sensor_tick", "0.0")  # every world tick
    return blueprint


def mount_transform(cam: CameraConfig, rear_axle_x: float, ground_z: float = 0.0):
    return camera_mount(cam.x, cam.y, cam.z, cam.roll_deg, cam.pitch_deg, cam.yaw_deg, rear_axle_x, ground_z)

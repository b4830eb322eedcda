"""PerfectPerception: the simulator's ground truth as the Perception message.

The stand-in that Pylot and CARLA users rely on to test planning before learned perception
exists. Its coverage is the rig's by default (``coverage: rig``): an object is reported only
when some rig camera sees part of it (its occlusion-aware 2D box in that camera: inside the
view and not fully hidden), and the governing light's state only while its head shows its
lamps to a rig camera; otherwise the light is unread, as it would be to the learned stage. So
"perfect against learned" compares the quality of perception over one field of view.
``coverage: all`` reports everything in range in every direction, for planning on its own.
Optional imperfections from config: Gaussian position and velocity noise, random dropout of
objects, and extra latency (the detections describe the world as it was `extra_latency_s`
ago, moved into the current ego frame).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from stagepilot.core.config import ConfigError, PerfectPerceptionConfig
from stagepilot.core.frames import to_ego, vector_to_ego, wrap_angle
from stagepilot.core.messages import (
    Detection,
    EgoState,
    Observation,
    Perception,
    TrafficLightAhead,
)
from stagepilot.perception.checks import FrameCheck
from stagepilot.perception.geometry import stop_line_ahead
from stagepilot.perception.lights import lamps_face
from stagepilot.core.paths import Polyline



class PerfectPerception:
    """One stage: Observation (with ground truth) -> Perception."""

    name = "perception"

    def __init__(self, config: PerfectPerceptionConfig, dt_s: float, cameras: tuple[str, ...] = ("front",)):
        self.config = config
        self.cameras = tuple(cameras)
        self.camera = self.cameras[0] if self.cameras else "front"  # the main camera
        self.rng = np.random.default_rng(config.seed)
        self.delay_frames = int(round(config.extra_latency_s / dt_s))
        self._history: deque = deque(maxlen=self.delay_frames + 1)
        self._route: Polyline | None = None
        self.check = FrameCheck(self.camera)

    def step(self, obs: Observation) -> Perception:
        truth = obs.ground_truth
        if truth is None:
            raise ConfigError("sim.ground_truth: perfect perception needs ground truth; set sim.ground_truth: true")
        problem = self.check.reason(obs)
        if problem is not None:
            return Perception(t=obs.t, frame=obs.frame, detections=(), usable=False, reason=problem)
        if self.config.coverage == "rig" and not any(source_camera in (obs.cameras or {}) for source_camera in self.cameras):
            raise ConfigError("perception.perfect.coverage: rig reports what the rig's cameras see, so the cameras "
                              "must render (or set coverage: all)")
        self._history.append(obs)
        source = self._history[0]  # the oldest kept frame: extra latency
        detections = tuple(self._detections(source, obs.ego))
        return Perception(
            t=obs.t,
            frame=obs.frame,
            detections=detections,
            traffic_light=self._light_ahead(source, obs),
            semantic=truth.semantic.get(self.camera),
        )

    def _detections(self, source: Observation, ego: EgoState):
        cfg = self.config
        for obj in source.ground_truth.objects:
            if obj.kind == "traffic_light":
                continue
            wx, wy = obj.center_world[:2]
            vx, vy = obj.velocity_world
            # Latency: the object was seen where it was; it has moved on since.
            if cfg.position_noise_m:
                wx, wy = wx + self.rng.normal(0, cfg.position_noise_m), wy + self.rng.normal(0, cfg.position_noise_m)
            if cfg.velocity_noise_mps:
                vx, vy = vx + self.rng.normal(0, cfg.velocity_noise_mps), vy + self.rng.normal(0, cfg.velocity_noise_mps)
            if cfg.dropout and self.rng.random() < cfg.dropout:
                continue
            ex, ey = to_ego(wx, wy, ego)
            if math.hypot(ex, ey) > cfg.max_range_m:
                continue
            camera = self._seen_by(obj)
            if camera is None and cfg.coverage == "rig":
                continue  # behind the ego, beside the views, or hidden behind something
            box = obj.boxes_2d.get(camera) if camera is not None else None
            yield Detection(
                track_id=obj.id,
                kind=obj.kind,
                score=1.0,
                position=(ex, ey),
                yaw=wrap_angle(obj.yaw_world - ego.yaw),
                extent=obj.extent,
                velocity=vector_to_ego(vx, vy, ego),
                box_2d=None if box is None else (box.x0, box.y0, box.x1, box.y1),
                camera=camera or "",
            )

    def _seen_by(self, obj) -> str | None:
        """The rig camera that sees most of ``obj`` (the main one first on a tie), or None."""
        best = None
        for name in self.cameras:
            box = obj.boxes_2d.get(name)
            if box is not None and box.visible_fraction > 0.0 and (best is None or box.visible_fraction > best[1]):
                best = (name, box.visible_fraction)
        return None if best is None else best[0]

    def _light_ahead(self, source: Observation, obs: Observation) -> TrafficLightAhead | None:
        if self._route is None or self._route.points is not obs.route.points:
            self._route = Polyline(obs.route.points)
        lines = ((light, light.stop_line[:2], light.stop_line[2:]) for light in source.ground_truth.traffic_lights)
        found = stop_line_ahead(self._route, obs.route_progress, lines, self.config.max_range_m)
        if found is None:
            return None
        light = found[0]
        p0 = to_ego(light.stop_line[0], light.stop_line[1], obs.ego)
        p1 = to_ego(light.stop_line[2], light.stop_line[3], obs.ego)
        state = light.state if self.config.coverage == "all" or self._lamps_in_view(light, source) else "unknown"
        return TrafficLightAhead(id=light.id, state=state, stop_line=(*p0, *p1))

    def _lamps_in_view(self, light, source: Observation) -> bool:
        """Whether a rig camera sees the head and its lamps face that camera."""
        head = next((o for o in source.ground_truth.objects if o.id == light.id), None)
        if head is None:
            return False
        for name in self.cameras:
            box, image = head.boxes_2d.get(name), (source.cameras or {}).get(name)
            if box is not None and box.visible_fraction > 0.0 and image is not None \
                    and lamps_face(head.center_world[:2], head.yaw_world, source.ego, image):
                return True
        return False

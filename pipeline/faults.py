"""Fault injection on the sensor side: dropped, frozen, NaN or blank camera frames, extra
image noise and traffic lights hidden from every camera, switched on from config (`faults:`).
Stage delays are injected by the runtime.

Everything random comes from one generator seeded by `faults.seed`, so a faulty run is as
repeatable as a clean one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from stagepilot.core.config import FaultsConfig
from stagepilot.core.messages import CameraImage, Observation


HIDING_GREY = 96  # the flat colour a hidden light is painted with


def _lights_hidden(image: CameraImage, obs: Observation) -> CameraImage:
    """``image`` with every traffic light's box (from the frame's ground truth) painted grey."""
    truth = obs.ground_truth
    if truth is None:
        raise ValueError("faults.lights_hidden_until_s: needs sim.ground_truth to find the lights in the images")
    rgb = image.rgb.copy()
    for obj in truth.objects:
        box = obj.boxes_2d.get(image.name) if obj.kind == "traffic_light" else None
        if box is not None:
            x0, y0, x1, y1 = int(box.x0) - 2, int(box.y0) - 2, int(box.x1) + 2, int(box.y1) + 2
            rgb[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = HIDING_GREY
    return dataclasses.replace(image, rgb=rgb, encoded=None)


def _active(start_s: float | None, t: float) -> bool:
    return start_s is not None and t >= start_s - 1e-9


class FaultInjector:
    def __init__(self, config: FaultsConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self._frozen: dict[str, CameraImage] = {}
        self._frozen_truth = None

    @property
    def enabled(self) -> bool:
        c = self.config
        return bool(c.drop_frame_probability or c.image_noise_std or c.frozen_camera_from_s is not None
                    or c.nan_images_from_s is not None or c.blank_images_from_s is not None
                    or c.lights_hidden_until_s is not None)

    def apply(self, obs: Observation) -> Observation:
        """The observation as the faulty sensors deliver it."""
        if not self.enabled or not obs.cameras:
            return obs
        c, t = self.config, obs.t
        cameras = {}
        for name, image in obs.cameras.items():
            if c.drop_frame_probability and self.rng.random() < c.drop_frame_probability:
                cameras[name] = None  # the frame never arrived
                continue
            if _active(c.frozen_camera_from_s, t):
                image = self._frozen.setdefault(name, image)
            elif _active(c.nan_images_from_s, t):
                image = dataclasses.replace(image, rgb=np.full(image.rgb.shape, np.nan, np.float32), encoded=None)
            elif _active(c.blank_images_from_s, t):
                image = dataclasses.replace(image, rgb=np.zeros_like(image.rgb), encoded=None)
            elif c.lights_hidden_until_s is not None and t < c.lights_hidden_until_s - 1e-9:
                image = _lights_hidden(image, obs)
            elif c.image_noise_std:
                noise = self.rng.normal(0.0, c.image_noise_std, image.rgb.shape)
                image = dataclasses.replace(image, rgb=np.clip(image.rgb + noise, 0, 255).astype(np.uint8),
                                            encoded=None)
            cameras[name] = image
        truth = obs.ground_truth
        if _active(c.frozen_camera_from_s, t) and truth is not None:
            # A frozen camera freezes what is derived from its frame too.
            if self._frozen_truth is None:
                self._frozen_truth = truth
            truth = self._frozen_truth
        return dataclasses.replace(obs, cameras=cameras, ground_truth=truth)

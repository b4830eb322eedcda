"""Video frames of a drive: RGB | semantic | depth on top, bird's-eye views and text below."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from stagepilot.core.messages import Observation
from stagepilot.sim.render.palette import colorize

PANEL = (640, 360)
BOX_BGR = {"vehicle": (255, 200, 0), "pedestrian": (80, 80, 255), "static": (0, 170, 255),
           "traffic_light": (0, 255, 255)}
FONT = cv2.FONT_HERSHEY_SIMPLEX


def depth_panel(depth: np.ndarray, max_m: float = 100.0) -> np.ndarray:
    """Depth [m] as a log-scaled colour image (near bright), BGR."""
    d = np.clip(depth, 0.5, max_m)
    level = (255 * (1.0 - np.log(d / 0.5) / np.log(max_m / 0.5))).astype(np.uint8)
    return cv2.applyColorMap(level, cv2.COLORMAP_MAGMA)


def _fit(img: np.ndarray) -> np.ndarray:
    if img.shape[1] == PANEL[0] and img.shape[0] == PANEL[1]:
        return img
    return cv2.resize(img, PANEL, interpolation=cv2.INTER_AREA)


def _label(img: np.ndarray, text: str) -> None:
    cv2.putText(img, text, (8, 22), FONT, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (8, 22), FONT, 0.6, (255, 255, 255), 1, cv2.LINE_AA)


def camera_panels(obs: Observation, camera: str) -> list[np.ndarray]:
    rgb = obs.cameras[camera].rgb[..., ::-1].copy()
    truth = obs.ground_truth
    panels = [rgb]
    if truth is not None:
        for obj in truth.objects:
            box = obj.boxes_2d.get(camera)
            if box is None or box.visible_fraction < 0.1:
                continue
            cv2.rectangle(rgb, (int(box.x0), int(box.y0)), (int(box.x1), int(box.y1)),
                          BOX_BGR[obj.kind], 1, cv2.LINE_AA)
        panels.append(colorize(truth.semantic[camera])[..., ::-1].copy())
        panels.append(depth_panel(truth.depth[camera]))
    for panel, name in zip(panels, ("RGB + ground-truth boxes", "semantic (CARLA tags)", "depth")):
        _label(panel, name)
    return [_fit(p) for p in panels]


def info_panel(lines: list[str]) -> np.ndarray:
    img = np.full((PANEL[1], PANEL[0], 3), 30, np.uint8)
    for i, line in enumerate(lines[:14]):
        cv2.putText(img, line, (12, 30 + 24 * i), FONT, 0.55, (235, 235, 235), 1, cv2.LINE_AA)
    return img


def compose(top: list[np.ndarray], bottom: list[np.ndarray]) -> np.ndarray:
    """Two rows of three 640x360 panels -> one 1920x720 BGR frame."""
    blank = np.zeros((PANEL[1], PANEL[0], 3), np.uint8)
    rows = [np.hstack([_fit(p) for p in (row + [blank] * 3)[:3]]) for row in (top, bottom)]
    return np.vstack(rows)


class VideoWriter:
    """mp4 (MPEG-4 Part 2, fourcc mp4v: VLC and ffmpeg play it) with OpenCV."""

    def __init__(self, path: Path, fps: float):
        self.path = Path(path)
        self.fps = fps
        self._writer = None

    def write(self, frame_bgr: np.ndarray) -> None:
        if self._writer is None:
            h, w = frame_bgr.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                raise OSError(f"{self.path}: OpenCV cannot open an mp4 writer")
        self._writer.write(frame_bgr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

"""Comparing a stage's output now with its recorded output, field by field, under tolerances.

Tolerances come from config (configs/replay.yaml; `--tolerances FILE` and `key=value`
overrides on top): per stage a float tolerance (|now - recorded| <= abs + rel * |recorded|),
per field overrides by dotted path without indices (`detections.position`, `v`, `steer`), and
for perception a 2D-box IoU, a score delta and a segmentation agreement. Strings, integers,
booleans, lengths, shapes and dtypes are always compared exactly; NaN matches NaN in the same
place. With every tolerance at zero (`ReplayTolerances()`, `--exact`) floats must be equal.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from pydantic import Field

from stagepilot.core.config import CONFIG_ROOT
from stagepilot.core.config_base import Strict
from stagepilot.core.config_load import load_config

DEFAULT_TOLERANCES = CONFIG_ROOT / "replay.yaml"


class FloatTolerance(Strict):
    abs: float = Field(0.0, ge=0.0, le=1e6)
    rel: float = Field(0.0, ge=0.0, le=1e3)


class StageTolerance(Strict):
    float: FloatTolerance = FloatTolerance()
    fields: dict[str, FloatTolerance] = {}  # dotted field path, indices dropped -> tolerance


class PerceptionTolerance(StageTolerance):
    box_iou: float = Field(1.0, gt=0.0, le=1.0)  # a 2D box matches when IoU >= this
    score_delta: float = Field(0.0, ge=0.0, le=1.0)
    segmentation_agreement: float = Field(1.0, gt=0.0, le=1.0)  # share of pixels with equal tags


class ResimTolerance(Strict):
    position_m: float = Field(0.0, ge=0.0, le=1e3)  # the drives part where the ego is further apart
    speed_mps: float = Field(0.0, ge=0.0, le=1e3)


class ReplayTolerances(Strict):
    ignore: list[str] = ["stage_ms", "charged_delay_s", "sensor_to_actuator_s"]  # timing-only fields
    perception: PerceptionTolerance = PerceptionTolerance()
    planner: StageTolerance = StageTolerance()
    controller: StageTolerance = StageTolerance()
    resim: ResimTolerance = ResimTolerance()


def load_tolerances(files=(), overrides=(), exact: bool = False) -> ReplayTolerances:
    """configs/replay.yaml, then `files`, then overrides; `exact`: every tolerance zero."""
    if exact:
        return ReplayTolerances()
    return load_config(ReplayTolerances, [DEFAULT_TOLERANCES, *files], list(overrides))  # type: ignore[return-value]


@dataclass(frozen=True)
class Difference:
    """The first place two outputs differ: the field path, both values, and how far apart."""

    field: str
    recorded: Any
    now: Any
    detail: str = ""

    def line(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.field}: recorded {_show(self.recorded)}, now {_show(self.now)}{extra}"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_INDEX = re.compile(r"\[\d+\]")


def field_key(path: str) -> str:
    """The tolerance key of a field path: indices and the message's class name dropped
    (`Perception.detections[2].position[0]` -> `detections.position`)."""
    key = _INDEX.sub("", path)
    head, _, rest = key.partition(".")
    return rest if head[:1].isupper() else key


def _close(a: float, b: float, tol: FloatTolerance) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    return abs(a - b) <= tol.abs + tol.rel * abs(a)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return 1.0 if union <= 0 else inter / union


class Comparator:
    """Compares one stage's outputs under its tolerances."""

    def __init__(self, stage: str, tolerances: ReplayTolerances):
        self.stage = stage
        self.tol: StageTolerance = getattr(tolerances, stage)
        self.ignore = set(tolerances.ignore)

    def _float_tol(self, path: str) -> FloatTolerance:
        return self.tol.fields.get(field_key(path), self.tol.float)

    def first(self, recorded: Any, now: Any) -> Difference | None:
        """The first difference, its field named from the message down (`Plan.x[1]`)."""
        root = type(recorded).__name__ if dataclasses.is_dataclass(recorded) else ""
        return next(self.differences(recorded, now, root), None)

    def differences(self, recorded: Any, now: Any, path: str = "") -> Iterator[Difference]:
        key = field_key(path)
        name = key.rsplit(".", 1)[-1]
        if name in self.ignore or key in self.ignore:
            return
        special = self._special(name, path, recorded, now)
        if special is not None:
            if special is not True:
                yield special
            return
        if isinstance(recorded, np.ndarray) or isinstance(now, np.ndarray):
            yield from self._arrays(path, recorded, now)
        elif isinstance(recorded, (float, np.floating)) and isinstance(now, (float, int, np.floating, np.integer)):
            if not _close(float(recorded), float(now), self._float_tol(path)):
                yield Difference(path, float(recorded), float(now), f"differs by {abs(float(now) - float(recorded)):.3g}")
        elif dataclasses.is_dataclass(recorded) and not isinstance(recorded, type):
            if type(recorded) is not type(now):
                yield Difference(path or "output", type(recorded).__name__, type(now).__name__)
                return
            for f in dataclasses.fields(recorded):
                yield from self.differences(getattr(recorded, f.name), getattr(now, f.name), _join(path, f.name))
        elif isinstance(recorded, (tuple, list)) and isinstance(now, (tuple, list)):
            if len(recorded) != len(now):
                yield Difference(f"{path}", f"{len(recorded)} items", f"{len(now)} items")
                return
            for i, (a, b) in enumerate(zip(recorded, now)):
                yield from self.differences(a, b, f"{path}[{i}]")
        elif isinstance(recorded, dict) and isinstance(now, dict):
            if recorded.keys() != now.keys():
                yield Difference(path, sorted(recorded), sorted(now), "different keys")
                return
            for k in recorded:
                yield from self.differences(recorded[k], now[k], _join(path, str(k)))
        elif not (recorded == now and type(recorded) is type(now)) and not _same_number(recorded, now):
            yield Difference(path or "output", recorded, now)

    def _special(self, name: str, path: str, recorded: Any, now: Any):
        """Perception's box, score and mask rules: True when they match, a Difference when
        not, None when the field has no special rule."""
        if self.stage != "perception" or recorded is None or now is None:
            return None
        tol: PerceptionTolerance = self.tol  # type: ignore[assignment]
        if name == "box_2d" and tol.box_iou < 1.0:
            iou = _iou(recorded, now)
            return True if iou >= tol.box_iou else Difference(path, recorded, now, f"IoU {iou:.4f} < {tol.box_iou}")
        if name == "score" and tol.score_delta > 0.0:
            delta = abs(float(now) - float(recorded))
            return True if delta <= tol.score_delta else Difference(path, recorded, now, f"score delta {delta:.3g}")
        if name in ("semantic", "drivable") and tol.segmentation_agreement < 1.0:
            if np.shape(recorded) != np.shape(now):
                return Difference(path, np.shape(recorded), np.shape(now), "shape")
            agree = float(np.mean(np.asarray(recorded) == np.asarray(now)))
            return True if agree >= tol.segmentation_agreement else Difference(
                path, "mask", "mask", f"agreement {agree:.5f} < {tol.segmentation_agreement}")
        return None

    def _arrays(self, path: str, recorded: Any, now: Any) -> Iterator[Difference]:
        a, b = np.asarray(recorded), np.asarray(now)
        if a.shape != b.shape or a.dtype != b.dtype:
            yield Difference(path, f"{a.dtype}{list(a.shape)}", f"{b.dtype}{list(b.shape)}", "shape or dtype")
            return
        if a.tobytes() == b.tobytes():  # the common case, and the cheapest check
            return
        if a.dtype.kind == "f":
            tol = self._float_tol(path)
            bad = ~((a == b) | (np.isnan(a) & np.isnan(b)) | (np.abs(b - a) <= tol.abs + tol.rel * np.abs(a)))
        else:
            bad = a != b
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            where = "".join(f"[{i}]" for i in index)
            x, y = a[index].item(), b[index].item()
            detail = f"{int(bad.sum())} of {a.size} values differ"
            if a.dtype.kind == "f":
                detail += f", largest by {float(np.nanmax(np.abs(b - a)[bad])):.3g}" if np.isfinite(np.abs(b - a)[bad]).any() else ""
            yield Difference(f"{path}{where}", x, y, detail)


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float, np.integer, np.floating)
    return isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and a == b


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name

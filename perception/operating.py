"""How much of the rig the network sees each tick: the stage's operating points.

The whole rig at full resolution (three 640x360 frames) does not fit a 40 ms perception budget
on every CPU: on a 2-core Intel Xeon with AMX the network alone takes 27.5 ms of it on its
fastest path, and 67 ms in fp32 with oneDNN pinned to AVX2 (docs/perception.md, "Operating
points"). Rather than miss every frame there, the stage steps down a fixed ladder, cheapest
last, and keeps the main camera (road, lights, what lies ahead) whole at every step:

- ``full``: every camera's whole frame at the network's input scale;
- ``side_band``: the side cameras only below ``side_band_elevation_deg`` above the horizon (a
  car or a walker touches the ground below the horizon and stands under the camera's 1.6 m plus
  a head; what the band drops is sky, roofs, treetops and the side views' signal housings), at
  the same pixel scale, so a side camera finds what it found before in the band;
- ``side_band_in_turn``: the same bands, one side camera per tick in turn (with two, each side is
  read at 10 Hz instead of 20 Hz, and its tracks are predicted in between). Scaling the sides
  down instead was tried and rejected: at half scale the network, trained at one scale, read a
  lane marking beside the road as an obstacle and stopped the car for good (docs/perception.md);
- ``main_only``: the main camera alone; the sides are not read (cross traffic is then seen
  once it enters the main camera's view);
- ``main_unzoomed``: the main camera alone, without the horizon zoom (perception/zoom.py), which
  the points above read as well: far, small objects are placed less well (recall of vehicles
  under 12 px about 0.75 against 0.85-0.92 with it);
- ``main_reduced``: the main camera alone at ``REDUCED_SCALE`` of the network's input scale
  (512x288 for 640x360), for a CPU where even the main camera at full scale does not fit: 0.64
  of the pixels, so about 0.6 of the network's time, and everything looks 1.25x farther away
  (a car 12 px tall at full scale is 9.6 px), so far objects are found later. Measured in
  docs/perception.md, "Operating points".

``operating_point: auto`` times each step's network work per tick on the path the runner chose
(perception/paths.py), with the threads the stage gives it (torch on one thread beside
onnxruntime or OpenVINO, perception/paths.py ``torch_on_one_thread``), and takes the first whose
median fits ``network_share`` of the stage's budget. The rest of the stage (decode, placement,
tracking, road) and the network's own tail above its median need the remainder: on a 2-core AMD
EPYC with bf16, ``main_only`` timed at 11.7 ms ran at p50 20.7 / p99 27.8 ms in a measured drive
and ``side_band_in_turn`` timed at 17.1 ms at p50 26.7 / p99 33.2 ms, so the stage's p99 is about
the timed figure plus 16 ms, and the share is 0.35 (14 ms of 40). When none fits, the cheapest,
and says so. The choice is remembered per machine like the path, so a machine drives the same
way every time. A point that sends what an earlier one sends is not timed again: a one-camera
rig has three points, ``full`` (the frame and its horizon zoom), ``main_unzoomed`` and
``main_reduced`` (two with the zoom off).

That timing sees the network alone, in a quiet process. Inside a drive the whole stage's tail can
be far longer than its median says: on a 2-core AMD EPYC with bf16 ``full`` was timed at 15.0 ms
against the 16 ms target and then ran at p99 38-41 ms in measured drives, over its budget on 12 to
26 frames, while ``side_band_in_turn``, timed 1.1 ms faster, missed none (that tail was page
faults, since removed: perception/runner.py, ``preprocess``; a machine's own can remain). So a
drive under the ``measured`` time model watches the stage (`PointGuard`): when it comes within
``GUARD_NEAR`` of its budget on ``GUARD_FRAMES`` of the last ``GUARD_WINDOW`` frames, the stage
steps one point down the ladder from the next frame on, says so in run.json and as an
``operating_point`` event (a replay follows it), and the machine remembers the lower point for
its next drive. A single slow frame does not step down: it is the machine's, not the point's.
The deterministic time models never step.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from stagepilot.core.camera import camera_pose, pinhole_intrinsics
from stagepilot.perception import paths
from stagepilot.perception.geometry import elevation_row
from stagepilot.perception.zoom import zoom_view as zoom_band

# The band's first row is a multiple of the network's coarsest stride, so that every level's cells
# fall on the same pixels as in the whole frame and the band's boxes are the whole frame's.
BAND_ROWS = 32
MIN_BAND_ROWS = 64
# The main camera's scale at ``main_reduced``; its input size is rounded to BAND_ROWS as well
REDUCED_SCALE = 0.8


@dataclass(frozen=True)
class OperatingPoint:
    name: str
    sides: str          # whole | band | none
    in_turn: bool       # the side cameras one per tick, in turn (each at 1 / their number of the rate)
    description: str
    main_scale: float = 1.0  # the main camera's scale at the network's input
    zoom: bool = True        # the main camera's horizon band is read again, magnified (perception/zoom.py)


LADDER = (
    OperatingPoint("full", "whole", False, "every camera's whole frame, every tick"),
    OperatingPoint("side_band", "band", False,
                   "the main camera whole; the side cameras below the band's top elevation, every tick"),
    OperatingPoint("side_band_in_turn", "band", True,
                   "the main camera whole every tick; the side cameras below the band's top elevation, "
                   "one per tick in turn"),
    OperatingPoint("main_only", "none", False, "the main camera alone; the side cameras are not read"),
    OperatingPoint("main_unzoomed", "none", False,
                   "the main camera alone, without the horizon zoom (far, small objects are placed less well); "
                   "the side cameras are not read", zoom=False),
    OperatingPoint("main_reduced", "none", False,
                   f"the main camera alone at {REDUCED_SCALE:g} of the network's input scale (far objects are "
                   "found later), without the horizon zoom; the side cameras are not read", REDUCED_SCALE,
                   zoom=False),
)
BY_NAME = {p.name: p for p in LADDER}


def reads(point: OperatingPoint, index: int, cameras: int, frame: int) -> bool:
    """Whether camera ``index`` of a rig of ``cameras`` (0: the main one) is read at ``frame``."""
    if index == 0 or point.sides == "whole":
        return True
    if point.sides == "none":
        return False
    return not point.in_turn or frame % (cameras - 1) == index - 1


# A measured drive steps down when the stage takes over GUARD_NEAR of its budget on GUARD_FRAMES of
# its last GUARD_WINDOW frames (5 s at 20 Hz): 3 % of frames within a fifth of the budget is a
# tail that will cross it (the p99 of 38 ms above came with 12 frames over 40 ms)
GUARD_WINDOW = 100
GUARD_NEAR = 0.8
GUARD_FRAMES = 3
STEP_EVENT = "operating_point"  # the event a step down records, on the first frame at the new point


class PointGuard:
    """Watches the stage's measured time per frame against its budget; says why to step down."""

    def __init__(self, budget_ms: float, window: int = GUARD_WINDOW, near: float = GUARD_NEAR,
                 frames: int = GUARD_FRAMES):
        self.budget_ms, self.near_ms, self.frames = budget_ms, near * budget_ms, frames
        self.recent: deque[float] = deque(maxlen=window)

    def observe(self, ms: float) -> str | None:
        """Add one frame's stage time [ms]; the reason to step down now, or None."""
        self.recent.append(ms)
        near = [m for m in self.recent if m > self.near_ms]
        if len(near) < self.frames:
            return None
        over, seen = sum(m > self.budget_ms for m in near), len(self.recent)
        self.recent.clear()  # the next point is judged on its own frames
        return (f"the stage took over {self.near_ms:.0f} ms ({self.near_ms / self.budget_ms:.0%} of its "
                f"{self.budget_ms:g} ms budget) on {len(near)} of its last {seen} frames "
                f"({over} over the budget, longest {max(near):.1f} ms)")


def step_event_point(detail: str) -> str | None:
    """The point an ``operating_point`` event's detail names (``"side_band: ..."``), or None."""
    name = detail.split(":", 1)[0].strip()
    return name if name in BY_NAME else None


@dataclass(frozen=True)
class View:
    """How one camera's frame goes to the network: rows ``top`` to ``bottom`` (None: the end) and
    columns ``left`` to ``right`` (None: the end), scaled to ``size`` (h, w) at the network's input."""

    top: int
    size: tuple[int, int]
    bottom: int | None = None
    left: int = 0
    right: int | None = None


@dataclass
class PointChoice:
    point: OperatingPoint
    by: str                       # configured | measured | remembered
    target_ms: float | None = None
    ms: dict[str, float] = field(default_factory=dict)
    key: str | None = None        # where the machine's choice is remembered (perception/paths.py)
    ladder: tuple[str, ...] = ()  # the points that differ on this rig, dearest first (auto only)
    steps: list[dict] = field(default_factory=list)  # a drive's steps down (PointGuard)

    def lower(self) -> OperatingPoint | None:
        """The next point down the ladder from the one in use; None at the cheapest, or when
        the point was configured (a pinned point never changes)."""
        names = self.ladder
        if self.point.name not in names or names.index(self.point.name) + 1 >= len(names):
            return None
        return BY_NAME[names[names.index(self.point.name) + 1]]

    def step_down(self, frame: int, why: str) -> OperatingPoint | None:
        """Take the next point down from ``frame`` on, and remember it for this machine, so that
        its next drive starts there; None when there is none."""
        lower = self.lower()
        if lower is None:
            return None
        self.steps.append({"frame": frame, "from": self.point.name, "to": lower.name, "why": why})
        self.point = lower
        if self.key is not None:
            steps = [{k: v for k, v in s.items() if k != "frame"} for s in self.steps]
            paths.store(self.key, {"point": lower.name, "ms": self.ms, "target_ms": self.target_ms,
                                   "ladder": list(self.ladder), "steps": steps})
        return lower

    @property
    def fits(self) -> bool | None:
        if self.target_ms is None or self.point.name not in self.ms:
            return None
        return self.ms[self.point.name] <= self.target_ms

    def describe(self) -> dict:
        out = {"name": self.point.name, "description": self.point.description, "chosen_by": self.by}
        if self.ms:
            out.update(network_target_ms=self.target_ms, network_ms=dict(self.ms), fits=self.fits)
        if self.steps:
            out["steps"] = list(self.steps)
        return out


def band_top(K: np.ndarray, T_ego_cam: np.ndarray, height: int, elevation_deg: float) -> int:
    """The first image row of a camera's band: where a ray ``elevation_deg`` above the horizontal,
    in the camera's heading, lands at the image's centre column; rounded down to a multiple of
    BAND_ROWS (the band keeps at least that elevation), 0 when that is above the image."""
    v = elevation_row(K, T_ego_cam, elevation_deg)
    if v is None:
        return 0
    top = int(math.floor(max(v, 0.0) / BAND_ROWS) * BAND_ROWS)
    return min(top, max((height - MIN_BAND_ROWS) // BAND_ROWS * BAND_ROWS, 0))  # at least MIN_BAND_ROWS rows


def view(point: OperatingPoint, main: bool, height: int, width: int, K, T_ego_cam,
         input_size: tuple[int, int], elevation_deg: float) -> View:
    """How one camera's frame goes to the network at `point` when it is read (`reads`): whole at
    the network's input size, or (a side camera at a band point) its band at the same scale."""
    in_h, in_w = input_size
    if main and point.main_scale != 1.0:
        return View(0, (_rows(in_h * point.main_scale), _rows(in_w * point.main_scale)))
    if main or point.sides != "band":
        return View(0, (in_h, in_w))
    top = band_top(K, T_ego_cam, height, elevation_deg)
    return View(top, (max(int(round((height - top) * in_h / height)), 32), in_w))


def _rows(pixels: float) -> int:
    """``pixels`` rounded to a multiple of BAND_ROWS (at least one)."""
    return max(int(round(pixels / BAND_ROWS)) * BAND_ROWS, BAND_ROWS)


def zoom_view(point: OperatingPoint, height: int, width: int, K, T_ego_cam, input_size: tuple[int, int],
              zoom: tuple[float, int, float] | None) -> View | None:
    """The main camera's horizon band at `point` (perception/zoom.py), or None when the point or
    the config (``zoom``: magnification, rows, width share; None: off) reads none."""
    if not point.zoom or zoom is None:
        return None
    band = zoom_band(height, width, K, T_ego_cam, input_size, rows=zoom[1], scale=zoom[0], width_share=zoom[2])
    return None if band is None else View(band.top, band.size, band.bottom, band.left, band.right)


def views(point: OperatingPoint, cameras: list[tuple[int, int, np.ndarray, np.ndarray]],
          input_size: tuple[int, int], elevation_deg: float, frame: int = 0,
          zoom: tuple[float, int, float] | None = None) -> list[View | None]:
    """Each camera's View at `point` and ``frame`` (None: not read then), the first camera being
    the main one, then the main camera's horizon zoom (None when not read). ``cameras``:
    (height, width, K, T_ego_cam) of each."""
    return [*(view(point, i == 0, *camera, input_size, elevation_deg) if reads(point, i, len(cameras), frame)
              else None for i, camera in enumerate(cameras)),
            zoom_view(point, *cameras[0], input_size, zoom) if cameras else None]


def spec_cameras(specs) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(height, width, K, T_ego_cam) from the config's camera specs (core/config.py CameraConfig)."""
    return [(c.height, c.width, pinhole_intrinsics(c.width, c.height, c.fov_deg),
             camera_pose(c.x, c.y, c.z, c.roll_deg, c.pitch_deg, c.yaw_deg)) for c in specs]


def batches(point_views: list[View | None]) -> dict[tuple[int, int], list[int]]:
    """Network input size -> the indices of the cameras read at it (one call each), in rig order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, view in enumerate(point_views):
        if view is not None:
            groups.setdefault(view.size, []).append(i)
    return groups


def choose(runner, setting: str, cameras: list, elevation_deg: float, budget_ms: float | None,
           share: float, zoom: tuple[float, int, float] | None = None) -> PointChoice:
    """The operating point `setting` names, or (``auto``) the first of the ladder whose network
    work per tick, timed on `runner`'s path, fits ``share * budget_ms``; remembered per machine.
    ``zoom``: the horizon zoom's (magnification, rows, width share), None when off."""
    if setting != "auto":
        return PointChoice(BY_NAME[setting], "configured")
    if not cameras or budget_ms is None or runner.device.type != "cpu":
        return PointChoice(LADDER[0], "configured")  # no budget given, or a GPU: the whole rig
    target = round(share * budget_ms, 2)
    ladder = {}
    for p in LADDER:  # a point that sends what an earlier one sends is that point (one camera: full, main_reduced)
        groups = batches(views(p, cameras, runner.input_size, elevation_deg, zoom=zoom))
        if groups not in ladder.values():
            ladder[p.name] = groups
    text = "|".join([runner.identity, f"target {target}",
                     *(f"{name}:{sorted(groups.items())}" for name, groups in ladder.items())])
    key = "point-" + hashlib.sha256(text.encode()).hexdigest()[:24]

    def read(k: str) -> PointChoice | None:
        entry = paths.recall(k)
        try:
            return PointChoice(BY_NAME[entry["point"]], "remembered", target, dict(entry["ms"]), key, tuple(ladder))
        except (KeyError, TypeError):
            return None

    with paths.choosing(key, read) as known:
        if known is not None:
            return known
        runs = {}
        for name, groups in ladder.items():
            xs = [torch.rand(len(idx), 3, *size, generator=torch.Generator().manual_seed(0))
                  .contiguous(memory_format=runner.memory_format) for size, idx in groups.items()]
            runs[name] = (lambda xs=xs: _as_stage(runner, xs))
        ms = paths.measure(runs)
        point = next((p for p in LADDER if p.name in ms and ms[p.name] <= target), LADDER[-1])
        paths.store(key, {"point": point.name, "ms": ms, "target_ms": target, "ladder": list(ladder)})
        return PointChoice(point, "measured", target, ms, key, tuple(ladder))


def _as_stage(runner, xs: list[torch.Tensor]) -> list:
    """``runner``'s network on each batch of ``xs`` with the threads the stage gives it
    (perception/runner.py ``side_work``), so that a point is timed as it will run."""
    with runner.side_work():
        return [runner.forward(x) for x in xs]

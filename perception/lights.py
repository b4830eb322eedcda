"""The traffic light that governs the ego's lane, read from the rig's light detections.

The map gives the next signalised stop line on the route and its signal head: where the head
stands and which way its lamps face (core/signals.py). A light box is taken for that head only
when
- its housing, placed at ``light_height_m`` through its camera's model, lies within
  ``light_gate_m`` of the head's mapped position and nearer to it than to any other head of
  the map (a crossing road's head beside our stop line is that road's, whatever it shows), and
- the head faces the camera that saw it (within ``FACING_MAX_RAD``): lamps seen edge-on or
  from behind are not our signal's face.
No matching box leaves the state unread (``unknown``), which the planner treats as a possible
red. Unseen, a light last read red or yellow stays so (the car must not run it on a missed
detection); green turns ``unknown`` after ``light_hold_s``. A light in view is never taken
from red to yellow (signals go red, green, yellow). The reported stop line is moved back
where needed so that the car stops with the head (where the map puts it) still in one of the
rig's views, and so sees it turn green, whether or not it has read the light yet. A car that
drives past that point on a green or yellow (the planner's choice to go) has passed its
light: from there on the stage reports no light for that stop line (the head can no longer
be seen, so a later reading, or none, must not stop the car where it would never see the
head again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stagepilot.core.config import LearnedPerceptionConfig
from stagepilot.core.messages import CameraImage, Observation, TrafficLightAhead
from stagepilot.core.paths import Polyline
from stagepilot.core.signals import SignalHead
from stagepilot.perception.geometry import project_to_image, stop_line_ahead, world_to_ego

LIGHT_SEQUENCE_GAP_S = 1.0  # [s] a light unseen longer than this may have gone through green meanwhile
FACING_MAX_RAD = math.radians(70.0)  # a head's lamps are readable within this angle of its facing
MIN_YELLOW_S = 3.0  # [s] the shortest yellow change interval (MUTCD 4D.26: 3 to 6 s)
VIEW_LIMIT_RANGE_M = 40.0  # [m] the stop line is kept where the head stays in view from this near
VIEW_LIMIT_SLACK_M = 0.5  # [m] the car stops this far short of the view limit: a stop that overruns
# its point by a few decimetres must still leave the head in view


@dataclass(frozen=True)
class LightSighting:
    """One light box of this frame: its score, the state it shows, its housing (x, y) in the ego
    frame [m] and the camera image it came from."""

    score: float
    state: str
    housing: np.ndarray
    image: CameraImage


def faces_camera(head: SignalHead, ego, image: CameraImage) -> bool:
    """Whether ``head``'s lamps face ``image``'s camera (world frame angles)."""
    return lamps_face(head.position[:2], head.facing, ego, image)


def lamps_face(position_xy, facing: float, ego, image: CameraImage) -> bool:
    """Whether lamps at world ``position_xy`` pointing along world yaw ``facing`` face ``image``'s
    camera on ``ego``: the camera lies within FACING_MAX_RAD of the way they point."""
    cam_x, cam_y = float(image.T_ego_cam[0, 3]), float(image.T_ego_cam[1, 3])
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    wx, wy = ego.x + c * cam_x - s * cam_y, ego.y + s * cam_x + c * cam_y
    bearing = math.atan2(wy - position_xy[1], wx - position_xy[0])
    return abs(math.remainder(bearing - facing, math.tau)) <= FACING_MAX_RAD


class LightReader:
    """The state of the signal head at the route's next signalised stop line."""

    def __init__(self, config: LearnedPerceptionConfig, heads: tuple[SignalHead, ...], stop_reach_m: float | None):
        """``stop_reach_m``: rear axle to where the planner puts the front bumper's stop (the
        bumper's reach plus the stop-line margin); with it, a stop line is moved back where the
        head would otherwise leave every view before the car stops (see _view_limit)."""
        self.config = config
        self.heads = heads
        self.stop_reach_m = stop_reach_m
        self._route: Polyline | None = None
        self.reset()

    def reset(self) -> None:
        self._memory: tuple[int, str, float] | None = None  # (head id, state, t last seen)
        self._pending: tuple[str, int] = ("", 0)  # a new reading and how many frames in a row it came
        self._passed: int | None = None  # the head whose view limit the car drove past on green or yellow
        self._green_at: tuple[int, float] | None = None  # (head id, t) of the last green read

    def next_head(self, obs: Observation) -> SignalHead | None:
        """The head of the next signalised stop line the route crosses, within range."""
        if not self.heads:
            return None
        if self._route is None or self._route.points is not obs.route.points:
            self._route = Polyline(obs.route.points)
        reach = self.config.max_range_m + 10.0
        near = ((head, head.stop_line.p0, head.stop_line.p1) for head in self.heads
                if math.hypot(head.stop_line.center[0] - obs.ego.x, head.stop_line.center[1] - obs.ego.y) <= reach)
        found = stop_line_ahead(self._route, obs.route_progress, near, self.config.max_range_m)
        return None if found is None else found[0]

    def read(self, obs: Observation, sightings: list[LightSighting], images: list[CameraImage]) -> TrafficLightAhead | None:
        head = self.next_head(obs)
        if head is None:
            self._memory = self._passed = None
            return None
        if head.id == self._passed:
            return None
        self._passed = None  # past its stop line: the next approach starts afresh
        ego = obs.ego
        line = head.stop_line
        p0, p1 = (tuple(map(float, p)) for p in world_to_ego(np.array([line.p0, line.p1]), ego))
        best = self._sighting_of(head, sightings, ego)
        state = "unknown"
        if best is not None:
            state = self._confirmed_state(head.id, best.state, obs.t)
        elif self._memory is not None and self._memory[0] == head.id:
            # Unseen now: a red or yellow light is taken to stay so until it is seen otherwise
            # (running it on a missed detection is the worse error); green fades to unread.
            last_state, last_seen = self._memory[1], self._memory[2]
            if last_state in ("red", "yellow") or obs.t - last_seen <= self.config.light_hold_s:
                state = last_state
        if self.stop_reach_m is not None:
            # Where the map puts the head: the car must stop where a camera still sees it, read or
            # not, or it could wait at the line for a green it can never see.
            mapped = world_to_ego(np.array(head.position[:2]), ego)[0]
            if math.hypot(*mapped) <= VIEW_LIMIT_RANGE_M:
                limit = self._view_limit(mapped, images, head.position[2])
                if limit <= 0.0 and state in ("green", "yellow"):
                    self._passed = head.id
                    return None
                p0, p1 = self._moved_back(p0, p1, max(limit - VIEW_LIMIT_SLACK_M, 0.0))
        return TrafficLightAhead(id=head.id, state=state, stop_line=tuple(float(v) for v in (*p0, *p1)))

    def _sighting_of(self, head: SignalHead, sightings: list[LightSighting], ego) -> LightSighting | None:
        """The best-scoring sighting that is ``head``'s: nearest to its mapped position of all the
        map's heads, within the gate, and facing the camera that saw it."""
        if not sightings:
            return None
        near = [h for h in self.heads if math.hypot(h.position[0] - ego.x, h.position[1] - ego.y)
                <= self.config.max_range_m + 20.0]
        mapped = world_to_ego(np.array([h.position[:2] for h in near]), ego)  # (H, 2)
        mine = near.index(head)
        best = None
        for sighting in sightings:
            distance = np.hypot(*(mapped - sighting.housing[None, :2]).T)
            nearest = int(np.argmin(distance))
            if nearest != mine or distance[nearest] > self.config.light_gate_m:
                continue
            if not faces_camera(head, ego, sighting.image):
                continue
            if best is None or sighting.score > best.score:
                best = sighting
        return best

    def _moved_back(self, p0, p1, lx: float):
        """Stop where the head is still in view: move the line back (towards the ego) until the
        bumper's stop leaves the rear axle short of ``lx`` [m ahead], the view limit."""
        centre = np.array([(p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2])
        along = np.array([p1[0] - p0[0], p1[1] - p0[1]])
        along = along / max(float(np.linalg.norm(along)), 1e-6)
        normal = np.array([-along[1], along[0]])
        forward = normal if float(normal[0]) >= 0 else -normal
        shift = max(0.0, float(centre @ forward) - (lx + self.stop_reach_m))
        if shift > 0.0:
            p0 = (p0[0] - shift * forward[0], p0[1] - shift * forward[1])
            p1 = (p1[0] - shift * forward[0], p1[1] - shift * forward[1])
        return p0, p1

    def _confirmed_state(self, head_id: int, reading: str, t: float) -> str:
        """The light's state given this frame's reading. The first reading of a head counts at
        once; a change of state needs ``light_confirm_frames`` equal readings in a row, so that
        one misread frame neither starts nor stops the car. Red never turns yellow while the
        light stays in view (``LIGHT_SEQUENCE_GAP_S``), and a light read green turns red no sooner
        than a yellow interval later (``MIN_YELLOW_S``): a red read sooner is taken for yellow."""
        if reading == "red" and self._green_at is not None and self._green_at[0] == head_id \
                and t - self._green_at[1] < MIN_YELLOW_S:
            reading = "yellow"  # read green less than a yellow interval ago: this red is a misread yellow
        state = self._confirmed_reading(head_id, reading, t)
        if state == "green" and reading == "green":
            self._green_at = (head_id, t)
        return state

    def _confirmed_reading(self, head_id: int, reading: str, t: float) -> str:
        """``_confirmed_state`` without the green-to-red rule."""
        memory = self._memory
        if memory is None or memory[0] != head_id:
            self._memory, self._pending = (head_id, reading, t), ("", 0)
            return reading
        if reading == memory[1]:
            self._memory, self._pending = (head_id, reading, t), ("", 0)
            return reading
        if (memory[1] == "red" and reading == "yellow" and self._pending[0] != "yellow"
                and t - memory[2] <= LIGHT_SEQUENCE_GAP_S):  # (a yellow streak only starts after a gap)
            # Signals go red -> green -> yellow: a yellow read straight after red, with the light in
            # view, is a misread, and taking it would let the yellow rule release a stop under way.
            self._memory, self._pending = (head_id, "red", t), ("", 0)
            return "red"
        count = self._pending[1] + 1 if self._pending[0] == reading else 1
        self._pending = (reading, count)
        if count >= self.config.light_confirm_frames:
            self._memory, self._pending = (head_id, reading, t), ("", 0)
            return reading
        self._memory = (head_id, memory[1], t)
        return memory[1]

    def _view_limit(self, housing: np.ndarray, images: list[CameraImage], height_m: float) -> float:
        """How far the ego may drive straight ahead [m] before the housing at ``housing`` (x, y
        ego frame, centre ``height_m`` up) leaves every camera's view, keeping
        ``light_view_margin_px`` from the image edges. Bisection: moving closer only ever pushes
        the housing outwards in an image and towards the side cameras."""
        cfg = self.config
        hw, hh = cfg.light_housing_m[0] / 2, cfg.light_housing_m[1] / 2
        offsets = np.array([[0.0, dy, dz] for dy in (-hw, hw) for dz in (-hh, hh)])  # (4, 3)
        centre = np.array([float(housing[0]), float(housing[1]), float(height_m)])
        m = cfg.light_view_margin_px

        def visible(advance: float) -> bool:
            points = centre - np.array([advance, 0.0, 0.0]) + offsets
            for image in images:
                h_img, w_img = image.rgb.shape[:2]
                uv, in_front = project_to_image(points, np.asarray(image.K, float), np.asarray(image.T_ego_cam, float))
                if bool(in_front.all() and np.all((uv[:, 0] >= m) & (uv[:, 0] <= w_img - m)
                                                  & (uv[:, 1] >= m) & (uv[:, 1] <= h_img - m))):
                    return True
            return False

        if not visible(0.0):
            return 0.0
        low, high = 0.0, float(housing[0])
        for _ in range(20):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if visible(mid) else (low, mid)
        return low

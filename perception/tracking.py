"""Tracker: stable ids and velocities for the learned detections, kept in the world frame.

Each track holds x = [px, py, vx, vy] (world frame, [m] and [m/s]) and its covariance P.
- Measurement: a detection's ground centre, moved from the ego frame into the world frame with
  the ego pose from odometry, so that ego motion does not look like object motion. Its noise
  follows the camera: along the viewing ray a pixel of the box's ground contact is worth
  range^2 / (f h) metres, so std_along = position_std_m + depth_std_per_m2 * range^2; across
  the ray it grows with the bearing error, std_across = position_std_m + bearing_std_rad * range.
- Prediction: constant velocity, x' = F x and P' = F P F^T + Q, with the discrete white-noise
  acceleration (discrete Wiener) model per axis: Q = G G^T accel_std^2, G = [dt^2/2, dt], with
  accel_std per kind (a car brakes at 7 m/s^2, a pedestrian does not).
- Association, per kind: Hungarian assignment (scipy linear_sum_assignment) on the Mahalanobis
  distance of each measurement from each track's predicted position (innovation covariance
  S = H P H^T + R); pairs beyond gate_sigma are rejected.
- Lifecycle: an unmatched detection starts a track at rest with a large velocity variance.
  A track is reported once it has min_hits hits and keeps being reported while it coasts;
  it is dropped once it has gone unseen for more than max_misses frames, or, when the camera
  could not have seen it (its predicted ground point outside the view: beside the image, or
  under the bonnet), once it has been hidden longer than hidden_max_s: a walker who steps in
  front of the car leaves the view while still in its way. Its velocity is
  reported once the speed exceeds velocity_sigma times its standard deviation (at rest
  before): two noisy positions of a far box otherwise give a walker metres per second
  towards the road, and the planner brakes for a crossing that is not there. Far away that
  deviation is the range's; the velocity across the viewing ray, which the bearing measures
  well, is reported alone as soon as it stands out of its own deviation, so a far walker
  crossing the view is known about a second sooner.
- Numerical faults: a track whose state or covariance is no longer finite (a NaN measurement
  or ego pose got in) is dropped at once, so that it cannot poison association or be
  reported; its id is in ``dropped_nonfinite`` after the update, and the stage flags such a
  frame unusable (silently losing a track may hide the object the car is braking for).
Output: Detection in the ego frame at the update's time, velocity over ground in ego axes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from stagepilot.perception.geometry import world_to_ego
from stagepilot.core.config import TrackerConfig
from stagepilot.core.frames import wrap_angle
from stagepilot.core.messages import Detection, EgoState

INITIAL_SPEED_STD = 10.0  # [m/s] a new track's velocity is unknown
# The velocity across the viewing ray alone is reported once the track has this many hits (and
# it stands velocity_sigma of its own std out)
ACROSS_MIN_HITS = 6
MOVING_MPS = 0.5  # above this the heading of the velocity is the reported yaw
MISS_SCORE_DECAY = 0.9  # score factor per frame a track goes unseen
GATED_COST = 1e6  # stands in for a pair outside the gate; rejected after assignment
MEASURE = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])  # H: state -> position


@dataclass(frozen=True)
class Measurement:
    """One detection of this frame, before tracking."""

    kind: str  # vehicle | pedestrian | static
    score: float
    position: tuple[float, float]  # [m] box centre on the ground, ego frame
    extent: tuple[float, float, float]  # [m] length, width, height
    box_2d: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 [px] in `camera`
    camera: str = ""  # the camera whose image holds box_2d


@dataclass
class _Track:
    track_id: int
    kind: str
    state: np.ndarray  # (4,) px, py, vx, vy, world frame
    cov: np.ndarray  # (4, 4)
    score: float
    extent: tuple[float, float, float]
    box_2d: tuple[float, float, float, float] | None
    camera: str
    heading: float  # [rad] world frame, last heading while moving
    hits: int = 1
    misses: int = 0
    hidden_s: float = 0.0  # [s] unseen while out of the camera's view
    confirmed: bool = False


def _rotation(yaw: float) -> np.ndarray:
    """(2, 2) rotation from ego axes to world axes."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s], [s, c]])


def _transition(dt_s: float, accel_std: float) -> tuple[np.ndarray, np.ndarray]:
    """F and Q of the constant-velocity model over dt_s, state ordered px, py, vx, vy."""
    eye = np.eye(2)
    f = np.block([[eye, dt_s * eye], [np.zeros((2, 2)), eye]])
    g = np.concatenate([0.5 * dt_s**2 * eye, dt_s * eye])  # (4, 2)
    return f, accel_std**2 * g @ g.T


def _speed(track: _Track) -> tuple[float, float]:
    """A track's speed over ground [m/s] and its standard deviation from the filter."""
    return math.hypot(track.state[2], track.state[3]), math.sqrt(track.cov[2, 2] + track.cov[3, 3])


def _kalman_update(track: _Track, z: np.ndarray, r: np.ndarray) -> None:
    """z (2,) world position, r (2, 2) its noise covariance."""
    innovation = z - MEASURE @ track.state
    s = MEASURE @ track.cov @ MEASURE.T + r
    gain = np.linalg.solve(s, MEASURE @ track.cov).T  # P H^T S^-1, S symmetric
    track.state = track.state + gain @ innovation
    # Joseph form keeps P symmetric and positive definite.
    i_kh = np.eye(4) - gain @ MEASURE
    track.cov = i_kh @ track.cov @ i_kh.T + gain @ r @ gain.T


def _associate(tracks: list[_Track], measured: np.ndarray, noise: np.ndarray, gate_sigma: float) -> list[tuple[int, int]]:
    """(track index, measurement index) pairs of minimum total Mahalanobis distance, all within
    the gate. measured (M, 2) world frame, noise (M, 2, 2) their covariances."""
    if not tracks or len(measured) == 0:
        return []
    cost = np.empty((len(tracks), len(measured)))
    for i, track in enumerate(tracks):
        p = MEASURE @ track.cov @ MEASURE.T                              # (2, 2)
        d = measured - track.state[:2]                                   # (M, 2)
        s_inv = np.linalg.inv(p[None] + noise)                           # (M, 2, 2)
        cost[i] = np.sqrt(np.einsum("mi,mij,mj->m", d, s_inv, d))
    cost = np.where(cost <= gate_sigma, cost, GATED_COST)  # NaN (a non-finite track) is outside too
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if cost[r, c] <= gate_sigma]


class Tracker:
    """Measurements of one frame (ego frame) -> confirmed tracks (ego frame)."""

    def __init__(self, config: TrackerConfig):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._t: float | None = None
        self.dropped_nonfinite: tuple[int, ...] = ()  # ids of tracks dropped by the last update

    def update(self, t: float, ego: EgoState, measurements: Sequence[Measurement],
               in_view: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[Detection, ...]:
        """Predict every track to t [s], associate per kind, update, start and drop tracks;
        return the confirmed tracks in the ego frame at t, ordered by track id. ``in_view``:
        (N, 2) ego-frame ground points -> (N,) bool, whether the camera sees them; without it
        every track counts as in view."""
        dt_s = 0.0 if self._t is None else t - self._t
        if dt_s < 0.0:
            raise ValueError(f"tracker time went back from {self._t} s to {t} s")
        self._t = t
        self._predict(dt_s)
        world, noise = self._to_world(ego, measurements)
        matched = self._match(measurements, world, noise)
        unmatched = [i for i in range(len(self._tracks)) if i not in matched]
        seen = np.ones(len(unmatched), dtype=bool)
        if in_view is not None and unmatched:
            world_xy = np.array([self._tracks[i].state[:2] for i in unmatched])  # (U, 2)
            seen = np.asarray(in_view(world_to_ego(world_xy, ego)), dtype=bool)
        for track_index, visible in zip(unmatched, seen):
            self._coast(self._tracks[track_index], None if visible else dt_s)
        for track_index, j in matched.items():
            self._correct(self._tracks[track_index], measurements[j], world[j], noise[j])
        used = set(matched.values())
        for i, m in enumerate(measurements):
            if i not in used:
                self._start(m, world[i], noise[i], ego.yaw)
        self._drop_nonfinite()
        self._tracks = [tr for tr in self._tracks
                        if tr.misses <= self.config.max_misses and tr.hidden_s <= self.config.hidden_max_s]
        return tuple(self._report(tr, ego) for tr in self._tracks if tr.confirmed)

    def _drop_nonfinite(self) -> None:
        finite = [bool(np.isfinite(tr.state).all() and np.isfinite(tr.cov).all()) for tr in self._tracks]
        self.dropped_nonfinite = tuple(tr.track_id for tr, ok in zip(self._tracks, finite) if not ok)
        if self.dropped_nonfinite:
            self._tracks = [tr for tr, ok in zip(self._tracks, finite) if ok]

    def _predict(self, dt_s: float) -> None:
        models = {kind: _transition(dt_s, std) for kind, std in self.config.accel_std.items()}
        for track in self._tracks:
            f, q = models.get(track.kind) or _transition(dt_s, max(self.config.accel_std.values()))
            track.state = f @ track.state
            track.cov = f @ track.cov @ f.T + q

    def _to_world(self, ego: EgoState, measurements: Sequence[Measurement]) -> tuple[np.ndarray, np.ndarray]:
        """Positions (M, 2) in the world frame and their noise covariances (M, 2, 2) [m^2]."""
        cfg = self.config
        ego_xy = np.array([[m.position[0], m.position[1]] for m in measurements]).reshape(-1, 2)
        ranges = np.linalg.norm(ego_xy, axis=1)
        world = ego_xy @ _rotation(ego.yaw).T + np.array([ego.x, ego.y])
        along = cfg.position_std_m + cfg.depth_std_per_m2 * ranges**2          # (M,)
        across = cfg.position_std_m + cfg.bearing_std_rad * ranges            # (M,)
        bearing = np.arctan2(ego_xy[:, 1], ego_xy[:, 0]) + ego.yaw            # ray direction, world
        c, s = np.cos(bearing), np.sin(bearing)
        rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)     # (M, 2, 2) ray -> world
        diag = np.zeros((len(ranges), 2, 2))
        diag[:, 0, 0], diag[:, 1, 1] = along**2, across**2
        return world, rot @ diag @ rot.transpose(0, 2, 1)

    def _match(self, measurements: Sequence[Measurement], world: np.ndarray, noise: np.ndarray) -> dict[int, int]:
        """Track index -> measurement index; a detection only joins a track of its own kind."""
        matched: dict[int, int] = {}
        for kind in sorted({m.kind for m in measurements}):
            track_ids = [i for i, tr in enumerate(self._tracks) if tr.kind == kind]
            meas_ids = [i for i, m in enumerate(measurements) if m.kind == kind]
            tracks = [self._tracks[i] for i in track_ids]
            for r, c in _associate(tracks, world[meas_ids], noise[meas_ids], self.config.gate_sigma):
                matched[track_ids[r]] = meas_ids[c]
        return matched

    def _correct(self, track: _Track, m: Measurement, z: np.ndarray, r: np.ndarray) -> None:
        _kalman_update(track, z, r)
        track.hits += 1
        track.misses = 0
        track.hidden_s = 0.0
        track.confirmed = track.confirmed or track.hits >= self.config.min_hits
        track.score, track.extent, track.box_2d, track.camera = m.score, m.extent, m.box_2d, m.camera
        # Learn the heading only from a speed that stands out of its noise, so that the
        # first frames of a parked car do not leave it facing a random way.
        speed_mps, speed_std_mps = _speed(track)
        if speed_mps > max(MOVING_MPS, 2.0 * speed_std_mps):
            track.heading = math.atan2(track.state[3], track.state[2])

    def _coast(self, track: _Track, hidden_dt_s: float | None = None) -> None:
        """An unmatched track: a miss when the camera could see it, else ``hidden_dt_s`` more
        seconds hidden."""
        if hidden_dt_s is None:
            track.misses += 1
        else:
            track.hidden_s += hidden_dt_s
        track.score *= MISS_SCORE_DECAY
        track.box_2d = None  # the box belongs to an image this frame did not match

    def _start(self, m: Measurement, z: np.ndarray, r: np.ndarray, ego_yaw: float) -> None:
        cov = np.zeros((4, 4))
        cov[:2, :2] = r
        cov[2, 2] = cov[3, 3] = INITIAL_SPEED_STD**2
        track = _Track(track_id=self._next_id, kind=m.kind, state=np.array([z[0], z[1], 0.0, 0.0]),
                       cov=cov, score=m.score, extent=m.extent, box_2d=m.box_2d, camera=m.camera,
                       heading=ego_yaw)  # unknown until it moves: assume aligned with the ego
        track.confirmed = track.hits >= self.config.min_hits
        self._next_id += 1
        self._tracks.append(track)

    def _known_velocity(self, track: _Track, ego: EgoState) -> np.ndarray:
        """The part of a track's world velocity (2,) that stands out of its uncertainty
        (``velocity_sigma``): all of it when its speed does; else its component across the
        viewing ray when that one does, and is above MOVING_MPS; else at rest.

        A far box's range is poor and its bearing good (``_to_world``), so the filter knows a
        walker crossing the view long before it knows how fast the walker moves along the ray; the
        speed's whole uncertainty is dominated by the range. The across component alone is judged
        by its own variance, which the bearing sets."""
        velocity = track.state[2:]
        if track.hits < 2:
            return np.zeros(2)
        speed_mps, speed_std_mps = _speed(track)
        if speed_mps > self.config.velocity_sigma * speed_std_mps:
            return velocity
        ray = track.state[:2] - np.array([ego.x, ego.y])
        distance = float(np.hypot(ray[0], ray[1]))
        if distance < 1e-6:
            return np.zeros(2)
        across = np.array([-ray[1], ray[0]]) / distance             # unit, world frame
        v_across = float(across @ velocity)
        std_across = math.sqrt(float(across @ track.cov[2:, 2:] @ across))
        if track.hits >= ACROSS_MIN_HITS and abs(v_across) > max(MOVING_MPS, self.config.velocity_sigma * std_across):
            return v_across * across
        return np.zeros(2)

    def _report(self, track: _Track, ego: EgoState) -> Detection:
        to_ego = _rotation(ego.yaw).T
        position = to_ego @ (track.state[:2] - np.array([ego.x, ego.y]))
        velocity = to_ego @ self._known_velocity(track, ego)
        if math.hypot(velocity[0], velocity[1]) > MOVING_MPS:
            yaw = math.atan2(velocity[1], velocity[0])
        elif track.kind in ("static", "pedestrian"):
            yaw = 0.0
        else:
            yaw = wrap_angle(track.heading - ego.yaw)
        return Detection(track_id=track.track_id, kind=track.kind, score=track.score,
                         position=(float(position[0]), float(position[1])), yaw=yaw,
                         extent=track.extent, velocity=(float(velocity[0]), float(velocity[1])),
                         box_2d=track.box_2d, camera=track.camera if track.box_2d is not None else "")

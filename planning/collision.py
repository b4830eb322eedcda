"""Collision checks of many ego trajectories against predicted obstacles.

Footprints are rectangles grown by safety margins; an obstacle's heading and margin may
change with time (prediction.py predicts them; `forecast` here is constant velocity). A
vectorised broad phase over candidates x times x obstacles sorts every footprint pair into
"clear", "surely overlapping" or "undecided": the ego is a row of discs (outer discs cover its
grown rectangle, inner discs lie inside its bare one), each measured against the obstacle's
rectangle in that obstacle's frame at that time. Only undecided pairs need the exact test
(two rectangles by the separating axis theorem), run in cost order on demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Obstacle:
    """An obstacle now: box centre and heading in the world frame, size, velocity over ground."""

    x: float  # [m]
    y: float  # [m]
    yaw: float  # [rad]
    length: float  # [m] along yaw
    width: float  # [m]
    vx: float  # [m/s]
    vy: float  # [m/s]
    id: int
    kind: str  # vehicle | pedestrian | cyclist | static | ...


@dataclass(frozen=True)
class Discs:
    """A row of K discs along a rectangle's long axis: offsets (K,) [m] from the centre."""

    outer_offset: np.ndarray  # these discs cover the grown rectangle
    outer_radius: float
    inner_offset: np.ndarray  # these lie inside the bare one
    inner_radius: float
    outer_excess: float  # [m] how far the outer discs reach beyond the inner ones at most


def make_discs(half_length: float, half_width: float, margin: float) -> Discs:
    """Discs for a rectangle with half_length >= half_width, grown by margin [m] on every side."""
    a_out, b_out = half_length + margin, half_width + margin
    count = max(int(np.ceil(a_out / b_out)), 1)
    seg = 2.0 * a_out / count  # length of the grown rectangle each outer disc covers
    outer = -a_out + seg * (np.arange(count) + 0.5)
    spread = max(half_length - half_width, 0.0)
    inner = np.linspace(-spread, spread, count) if count > 1 else np.zeros(1)
    outer_radius, inner_radius = (
        float(np.hypot(seg / 2.0, b_out)),
        float(min(half_length, half_width)),
    )
    excess = float(np.max(np.abs(outer - inner))) + outer_radius - inner_radius
    return Discs(outer, outer_radius, inner, inner_radius, excess)


@dataclass(frozen=True)
class ObstacleForecast:
    """N obstacles at T times; a box's long axis lies along (cos, sin) at each time."""

    ids: np.ndarray  # (N,) int
    x: np.ndarray  # (N, T) centre [m]
    y: np.ndarray  # (N, T)
    cos: np.ndarray  # (N, T)
    sin: np.ndarray  # (N, T)
    half_length: np.ndarray  # (N,) bare [m]
    half_width: np.ndarray  # (N,)
    margin: np.ndarray  # (N, T) [m] grown on every side, on top of the ego's

    def __len__(self) -> int:
        return len(self.ids)


def margin_ramp(times: np.ndarray, ramp_s: float) -> np.ndarray:
    """(T,) factor on the margins at times (T,) [s]: 0 at t=0, 1 from ramp_s on, so that a
    present near miss (a walker passing 0.2 m away) is not an unavoidable collision."""
    return np.minimum(times / ramp_s, 1.0) if ramp_s > 0 else np.ones_like(times)


def forecast(
    obstacles: list[Obstacle],
    times: np.ndarray,
    margin_by_kind: dict[str, float],
    ramp: np.ndarray,
    growth_mps: float | np.ndarray = 0.0,
) -> ObstacleForecast:
    """Constant-velocity prediction at times (T,) [s]. Each margin is its kind's extra margin
    times ramp (T,), plus growth_mps (scalar or (N,)) [m/s] times t."""
    n = len(obstacles)
    arr = np.array([[o.x, o.y, o.yaw, o.length, o.width, o.vx, o.vy] for o in obstacles]).reshape(
        n, 7
    )
    x0, y0, yaw, length, width, vx, vy = arr.T  # (N,) each
    wide = width > length  # turn the box so that its long axis is "length"
    yaw = np.where(wide, yaw + 0.5 * np.pi, yaw)
    half_length = 0.5 * np.maximum(length, width)
    half_width = 0.5 * np.minimum(length, width)
    kind_margin = np.array([margin_by_kind.get(o.kind, 0.0) for o in obstacles], dtype=np.float64)
    growth = np.broadcast_to(np.asarray(growth_mps, dtype=np.float64), (n,))
    shape = (n, len(times))
    return ObstacleForecast(
        ids=np.array([o.id for o in obstacles], dtype=np.int64),
        x=x0[:, None] + vx[:, None] * times[None, :],
        y=y0[:, None] + vy[:, None] * times[None, :],
        cos=np.broadcast_to(np.cos(yaw)[:, None], shape).copy(),
        sin=np.broadcast_to(np.sin(yaw)[:, None], shape).copy(),
        half_length=half_length,
        half_width=half_width,
        margin=kind_margin[:, None] * ramp[None, :] + growth[:, None] * times[None, :],
    )


@dataclass(frozen=True)
class EgoFootprints:
    """Ego body rectangles along C trajectories at T times."""

    x: np.ndarray  # (C, T) body centre [m]
    y: np.ndarray  # (C, T)
    cos: np.ndarray  # (C, T) of the yaw
    sin: np.ndarray  # (C, T)
    half_length: float  # bare [m]
    half_width: float
    margin: float  # [m] full safety margin
    discs: Discs


@dataclass(frozen=True)
class BroadPhase:
    """Per candidate: a sure overlap, an estimate of the closest bare-body gap, and the
    footprint pairs (time index, obstacle index) only the exact test can decide."""

    hit: np.ndarray  # (C,) bool: grown footprints surely overlap at some time
    hit_obstacle: np.ndarray  # (C,) int obstacle index of a sure overlap, -1 if none
    clearance: np.ndarray  # (C,) [m] smallest inner-disc gap over all times, inf if none near
    pair_c: np.ndarray  # (P,) undecided pairs, sorted by candidate
    pair_t: np.ndarray  # (P,)
    pair_n: np.ndarray  # (P,)

    def pairs_of(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.searchsorted(self.pair_c, [c, c + 1])
        return self.pair_t[lo:hi], self.pair_n[lo:hi]


def broad_phase(
    ego: EgoFootprints, obs: ObstacleForecast, near_range_m: float, ramp: np.ndarray
) -> BroadPhase:
    """Classify every (candidate, time, obstacle) footprint pair; near_range_m widens the
    bounding-circle filter so that gaps up to it are measured for the proximity cost.
    ramp (T,) scales the ego's margin in time, as in exact_overlap."""
    C, T = ego.x.shape
    t, n = _active(ego, obs, near_range_m)  # (Q,) time and obstacle of pairs near any candidate
    reach = _reach(ego, obs, near_range_m)[n, t]  # (Q,)
    dx = ego.x[:, t] - obs.x[n, t]  # (C, Q)
    dy = ego.y[:, t] - obs.y[n, t]
    near = np.flatnonzero(dx * dx + dy * dy < reach * reach)  # (P,) flat (c, q), sorted
    c, q = np.divmod(near, len(t))
    t, n = t[q], n[q]
    ct, nt = c * T + t, n * T + t  # flat (candidate, time) and (obstacle, time)
    # the ego's centre and axis in the obstacle's frame, float32 for speed
    ocos, osin = obs.cos.ravel()[nt], obs.sin.ravel()[nt]  # (P,)
    rx, ry = dx.ravel()[near], dy.ravel()[near]
    rx, ry = (rx * ocos + ry * osin).astype(np.float32), (ry * ocos - rx * osin).astype(np.float32)
    ecos, esin = ego.cos.ravel()[ct], ego.sin.ravel()[ct]
    ux = (ecos * ocos + esin * osin).astype(np.float32)
    uy = (esin * ocos - ecos * osin).astype(np.float32)
    a, b = (v[n].astype(np.float32) for v in (obs.half_length, obs.half_width))
    m = obs.margin.ravel()[nt].astype(np.float32)
    disc = ego.discs
    gap = np.full(
        len(c), np.inf, dtype=np.float32
    )  # inner discs of the bare ego to the bare obstacle
    for offset in disc.inner_offset:
        gap = np.minimum(gap, _rectangle_distance(rx + ux * offset, ry + uy * offset, a, b))
    gap -= disc.inner_radius
    # an inner disc of the ego grown by its margin reaching into the obstacle's rounded
    # margin (inside its grown rectangle) is a sure overlap
    sure = gap < ego.margin * ramp[t] + m
    hit = np.bincount(c, weights=sure, minlength=C) > 0  # (C,)
    hit_obstacle = np.full(C, -1)
    hit_obstacle[c[sure][::-1]] = n[sure][::-1]  # the earliest sure overlap wins
    clearance = np.full(C, np.inf)
    np.minimum.at(clearance, c, gap)
    # outer discs can only reach the grown obstacle where the inner gap is small
    maybe = np.flatnonzero((gap < disc.outer_excess + np.sqrt(2.0) * m) & ~hit[c])
    rx, ry, ux, uy, a, b, m = (v[maybe] for v in (rx, ry, ux, uy, a, b, m))
    undecided = np.zeros(len(maybe), dtype=bool)
    for offset in disc.outer_offset:
        out = _rectangle_distance(rx + ux * offset, ry + uy * offset, a + m, b + m)
        undecided |= out < disc.outer_radius
    keep = maybe[undecided]
    return BroadPhase(hit, hit_obstacle, clearance, c[keep], t[keep], n[keep])


def _reach(ego: EgoFootprints, obs: ObstacleForecast, near_range_m: float) -> np.ndarray:
    """(N, T) centre distance [m] beyond which an ego and an obstacle are surely further apart
    than near_range_m, margins included."""
    ego_r = np.hypot(ego.half_length + ego.margin, ego.half_width + ego.margin)
    a, b, m = obs.half_length[:, None], obs.half_width[:, None], obs.margin  # (N, 1), (N, T)
    return ego_r + np.hypot(a + m, b + m) + near_range_m


def _active(
    ego: EgoFootprints, obs: ObstacleForecast, near_range_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """(time, obstacle) index pairs whose obstacle is within reach of the box around all
    candidates' ego positions at that time."""
    reach = _reach(ego, obs, near_range_m)  # (N, T)
    lo_x, hi_x = ego.x.min(axis=0), ego.x.max(axis=0)  # (T,)
    lo_y, hi_y = ego.y.min(axis=0), ego.y.max(axis=0)
    near = (
        (obs.x > lo_x - reach)
        & (obs.x < hi_x + reach)
        & (obs.y > lo_y - reach)
        & (obs.y < hi_y + reach)
    )
    t, n = np.nonzero(near.T)  # sorted by time, then obstacle
    return t, n


def _rectangle_distance(px, py, half_length, half_width) -> np.ndarray:
    """Signed distance [m] from points to axis-aligned centred rectangles (negative inside)."""
    qx = np.abs(px) - half_length
    qy = np.abs(py) - half_width
    return np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0)) + np.minimum(np.maximum(qx, qy), 0.0)


def rectangles(cx, cy, cos, sin, half_length, half_width) -> np.ndarray:
    """(P, 4, 2) corners of P rectangles, counter-clockwise."""
    sx = np.array([1.0, -1.0, -1.0, 1.0])
    sy = np.array([1.0, 1.0, -1.0, -1.0])
    lx = np.asarray(half_length)[..., None] * sx  # (P, 4)
    ly = np.asarray(half_width)[..., None] * sy
    px = cx[:, None] + cos[:, None] * lx - sin[:, None] * ly
    py = cy[:, None] + sin[:, None] * lx + cos[:, None] * ly
    return np.stack([px, py], axis=-1)


def exact_overlap(
    ego: EgoFootprints,
    obs: ObstacleForecast,
    c: int,
    t: np.ndarray,
    n: np.ndarray,
    ramp: np.ndarray,
) -> int:
    """Index of the first obstacle whose grown footprint overlaps candidate c's at the pairs
    (t, n) by the exact test (`overlaps`), or -1. ramp (T,) scales the ego's margin in time."""
    overlap = overlaps(ego, obs, np.full(len(t), c), t, n, ramp)
    return int(n[np.argmax(overlap)]) if overlap.any() else -1


def first_hits(ego: EgoFootprints, obs: ObstacleForecast, broad: BroadPhase, cs: np.ndarray,
               ramp: np.ndarray) -> dict[int, int]:
    """exact_overlap of each candidate in cs over its undecided pairs, in one vectorised test:
    {candidate: first obstacle hit, or -1}. One call for many candidates costs about what one
    call for one does."""
    bounds = np.searchsorted(broad.pair_c, np.stack([cs, cs + 1]))  # (2, K)
    index = np.concatenate([np.arange(lo, hi) for lo, hi in bounds.T]) if len(cs) else np.zeros(0, int)
    hit = overlaps(ego, obs, broad.pair_c[index], broad.pair_t[index], broad.pair_n[index], ramp)
    counts = bounds[1] - bounds[0]
    ends = np.cumsum(counts)  # where each candidate's pairs end in `index`
    first = {}
    for c, lo, hi in zip(cs.tolist(), (ends - counts).tolist(), ends.tolist()):
        mine = hit[lo:hi]  # the candidate's pairs, in time order
        first[c] = int(broad.pair_n[index[lo + np.argmax(mine)]]) if mine.any() else -1
    return first


def overlaps(ego: EgoFootprints, obs: ObstacleForecast, c: np.ndarray, t: np.ndarray, n: np.ndarray,
             ramp: np.ndarray) -> np.ndarray:
    """(P,) bool: does candidate c's grown footprint overlap obstacle n's at time t? Exact for
    two rectangles by the separating axis theorem: they are apart only if their projections
    on one of the four edge directions are (touching counts as overlap, as in shapely's
    `intersects`, which tests/test_lattice.py checks this against). Vectorised over pairs:
    about 0.1 us a pair, against some 3 us for shapely's polygons and predicate."""
    if len(t) == 0:
        return np.zeros(0, dtype=bool)
    grow_e = ego.margin * ramp[t]  # (P,)
    grow_o = obs.margin[n, t]
    a_len, a_wid = ego.half_length + grow_e, ego.half_width + grow_e
    b_len, b_wid = obs.half_length[n] + grow_o, obs.half_width[n] + grow_o
    ac, as_, bc, bs = ego.cos[c, t], ego.sin[c, t], obs.cos[n, t], obs.sin[n, t]
    dx, dy = obs.x[n, t] - ego.x[c, t], obs.y[n, t] - ego.y[c, t]
    cos_ab = np.abs(ac * bc + as_ * bs)  # |u_a . u_b| = |v_a . v_b|
    sin_ab = np.abs(ac * bs - as_ * bc)  # |u_a . v_b| = |v_a . u_b|
    apart = np.abs(dx * ac + dy * as_) > a_len + b_len * cos_ab + b_wid * sin_ab     # along ego's length
    apart |= np.abs(dy * ac - dx * as_) > a_wid + b_len * sin_ab + b_wid * cos_ab    # along ego's width
    apart |= np.abs(dx * bc + dy * bs) > b_len + a_len * cos_ab + a_wid * sin_ab     # along obstacle's length
    apart |= np.abs(dy * bc - dx * bs) > b_wid + a_len * sin_ab + a_wid * cos_ab     # along obstacle's width
    return ~apart

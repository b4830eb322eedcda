"""The behaviour layer: what to do now, and why, in one line.

States: cruise (speed limit, curve speed from a lateral-acceleration limit), follow a lead
vehicle (a gap controller on the IDM/ACC pattern), stop for an obstacle or pedestrian in
the path, pass a stopped obstacle when a lane beside it is free, stop at a red or yellow
light's stop line, stop at the goal, and emergency stop. The result is a target for the
local planner (speed, stop point, allowed lateral band) plus the decision and its reason.

Arc lengths are along the reference path; `ego_s` is the rear axle's, `front_s` the front
bumper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stagepilot.core.config import BehaviourConfig
from stagepilot.core.messages import EgoState, Perception
from stagepilot.core.roadmap import RoadMap
from stagepilot.planning.collision import Obstacle
from stagepilot.planning.lattice import LatticeTarget
from stagepilot.planning.route import ReferencePath

STOPPED_MPS = 0.5  # an object slower than this along the path counts as stopped
PREDICTION_S = 4.0  # how far ahead a crossing pedestrian is predicted
GAP_GAIN = 0.35  # [1/s] follow: speed change per metre of gap error
PASS_CLEARANCE_M = 25.0  # free length needed before and after an obstacle to pass it
PARKED_AFTER_S = 20.0  # a vehicle stopped this long counts as parked


@dataclass(frozen=True)
class VehicleShape:
    length_m: float
    width_m: float
    rear_overhang_m: float

    @property
    def front_m(self) -> float:
        """Rear axle to front bumper [m]."""
        return self.length_m - self.rear_overhang_m


@dataclass(frozen=True)
class Decision:
    decision: str  # cruise | follow | pass | stop_obstacle | stop_light | stop_goal | emergency_stop
    reason: str
    target: LatticeTarget
    obstacles: tuple[Obstacle, ...]


@dataclass(frozen=True)
class _Tracked:
    """An obstacle relative to the reference path."""

    obstacle: Obstacle
    s: float  # [m] of its centre
    d: float  # [m] lateral, positive left
    v_along: float  # [m/s]
    v_lateral: float  # [m/s] positive left


def world_obstacles(perception: Perception, ego: EgoState) -> tuple[Obstacle, ...]:
    """Detections (ego frame) as world-frame obstacles for prediction and collision checks."""
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    out = []
    for det in perception.detections:
        ex, ey = det.position
        vx, vy = det.velocity
        out.append(Obstacle(
            x=ego.x + c * ex - s * ey, y=ego.y + s * ex + c * ey, yaw=ego.yaw + det.yaw,
            length=det.extent[0], width=det.extent[1], vx=c * vx - s * vy, vy=s * vx + c * vy,
            id=det.track_id, kind=det.kind,
        ))
    return tuple(out)


class BehaviourLayer:
    def __init__(self, config: BehaviourConfig, vehicle: VehicleShape, road_map: RoadMap | None):
        self.config = config
        self.vehicle = vehicle
        self.road_map = road_map
        self._last_moving: dict[int, float] = {}  # track id -> last time seen moving [s]
        self._now = 0.0
        # pedestrian track id -> (its obstacle when last seen, that time [s]), for those that made the car stop
        self._stopped_for: dict[int, tuple[Obstacle, float]] = {}
        self._light_read: tuple[int, str] | None = None  # (light id, its last state read)

    def decide(self, ego: EgoState, ref: ReferencePath, ego_s: float, perception: Perception) -> Decision:
        cfg, speed = self.config, max(ego.speed, 0.0)
        front_s = ego_s + self.vehicle.front_m
        obstacles = world_obstacles(perception, ego)
        self._remember_motion(obstacles, perception.t)
        held = self._held_pedestrians(obstacles, perception.t, speed)
        held_ids = {o.id for o in held}
        obstacles += held
        tracked = [self._track(o, ref, ego_s) for o in obstacles]
        tracked = [t for t in tracked if t is not None]

        cruise = min(ref.limit_at(ego_s), ref.curve_speed(ego_s, ego_s + cfg.look_ahead_m, cfg.max_lateral_accel, cfg.comfort_decel))
        target_speed = cruise
        d_min, d_max = -cfg.corridor_margin_m, cfg.corridor_margin_m
        # (stop_s for the front bumper, decision, reason); the nearest stop wins.
        stops: list[tuple[float, str, str]] = []
        goal_s = ref.length - cfg.goal_tolerance_m
        stops.append((goal_s, "stop_goal", f"stop: goal in {goal_s - front_s:.1f} m"))
        light = self._light_stop(ego, ref, ego_s, front_s, perception, speed)
        if light is not None:
            stops.append(light)

        decision, reason = "cruise", f"cruise: {cruise:.1f} m/s (limit {ref.limit_at(ego_s):.1f})"
        leader = None
        for t in sorted(tracked, key=lambda t: t.s):
            if not self._in_path(t, front_s):
                continue
            rear_s = t.s - t.obstacle.length / 2
            gap = rear_s - front_s
            if t.obstacle.kind == "vehicle" and t.v_along > STOPPED_MPS:
                leader = leader or (t, gap)
                continue
            side = self._free_side(t, ref, tracked) if self._parked(t) else None
            if side is not None:
                width = self._lane_width(t)
                d_min, d_max = (d_min, width + cfg.corridor_margin_m) if side > 0 else (-width - cfg.corridor_margin_m, d_max)
                decision = "pass"
                reason = f"pass: {t.obstacle.kind} {t.obstacle.id} at {gap:.1f} m via the {'left' if side > 0 else 'right'} lane"
                continue
            ttc = gap / speed if speed > 0.1 else math.inf
            stops.append((rear_s - cfg.stop_margin_m, "stop_obstacle",
                          f"stop: {t.obstacle.kind} {t.obstacle.id} at {gap:.1f} m, TTC {min(ttc, 99.0):.1f} s"))
            if cfg.pedestrian_hold_s > 0.0 and t.obstacle.kind == "pedestrian" and t.obstacle.id not in held_ids:
                self._stopped_for[t.obstacle.id] = (t.obstacle, perception.t)

        if leader is not None:
            t, gap = leader
            desired = cfg.min_gap_m + speed * cfg.time_headway_s
            follow = max(0.0, min(cruise, t.v_along + GAP_GAIN * (gap - desired)))
            if follow < target_speed:
                target_speed = follow
                decision = "follow"
                headway = gap / speed if speed > 0.1 else math.inf
                reason = f"follow: vehicle {t.obstacle.id} at {gap:.1f} m, {t.v_along:.1f} m/s, gap {min(headway, 99.0):.1f} s"

        stop_s, stop_kind, stop_reason = min(stops, key=lambda x: x[0])
        distance = stop_s - front_s
        needed = speed**2 / (2 * max(distance, 0.05))  # [m/s^2] to stop in time
        relevant = distance < speed**2 / (2 * 0.5) + 20.0  # within a gentle stop, plus 20 m
        if stop_kind == "stop_obstacle" and needed > 1.6 * cfg.comfort_decel and speed > 1.0:
            decision, reason = "emergency_stop", f"emergency {stop_reason} (needs {needed:.1f} m/s2)"
        elif relevant:
            decision, reason = stop_kind, stop_reason
        return Decision(decision, reason,
                        LatticeTarget(target_speed=target_speed, stop_s=stop_s, d_min=d_min, d_max=d_max),
                        obstacles)

    # ------------------------------------------------------------ helpers

    def _held_pedestrians(self, obstacles: tuple[Obstacle, ...], t: float, speed: float) -> tuple[Obstacle, ...]:
        """While the car moves: pedestrians it stopped for whose tracks were lost within
        ``pedestrian_hold_s``, as last seen. A far walker's track can break and restart under a new
        id (the box jumps, the tracker confirms the new one frames later); without this the stop
        would be released for those frames and braking would start again, a jerk the passengers feel."""
        hold = self.config.pedestrian_hold_s
        self._stopped_for = {i: (o, seen) for i, (o, seen) in self._stopped_for.items() if t - seen <= hold}
        if speed <= STOPPED_MPS:
            return ()
        present = {o.id for o in obstacles}
        return tuple(o for i, (o, _) in self._stopped_for.items() if i not in present)

    def _remember_motion(self, obstacles, t: float) -> None:
        for o in obstacles:
            if math.hypot(o.vx, o.vy) > 1.0:
                self._last_moving[o.id] = t
        self._now = t

    def _parked(self, t: _Tracked) -> bool:
        """A stopped obstacle that may be passed: never seen moving (a parked car, a cone),
        or stopped for long. A car that stopped in traffic is queued behind, not passed."""
        if t.obstacle.kind == "pedestrian" or t.v_along > STOPPED_MPS:
            return False
        last = self._last_moving.get(t.obstacle.id)
        return last is None or self._now - last > PARKED_AFTER_S

    def _track(self, obstacle: Obstacle, ref: ReferencePath, ego_s: float) -> _Tracked | None:
        path = ref.path
        ahead = math.hypot(obstacle.x - path.interpolate(ego_s)[0], obstacle.y - path.interpolate(ego_s)[1])
        if ahead > self.config.look_ahead_m + 10.0:
            return None
        s, d = path.project(obstacle.x, obstacle.y, s_hint=ego_s + ahead, window_m=ahead + 10.0)
        if s <= 0.0 or s >= path.length:
            return None
        _, _, yaw = path.interpolate(s)
        c, si = math.cos(float(yaw)), math.sin(float(yaw))
        return _Tracked(obstacle, s, d, obstacle.vx * c + obstacle.vy * si, -obstacle.vx * si + obstacle.vy * c)

    def _corridor(self, t: _Tracked) -> float:
        return self.vehicle.width_m / 2 + t.obstacle.width / 2 + self.config.corridor_margin_m

    def _in_path(self, t: _Tracked, front_s: float) -> bool:
        if t.s + t.obstacle.length / 2 < front_s - 0.5:
            return False  # behind the front bumper
        corridor = self._corridor(t)
        if abs(t.d) < corridor:
            return True
        if t.obstacle.kind != "pedestrian" or abs(t.v_lateral) < 0.2:
            return False
        # A pedestrian walking towards the path enters it within the prediction horizon.
        moving_in = t.d * t.v_lateral < 0
        return moving_in and (abs(t.d) - corridor) / abs(t.v_lateral) < PREDICTION_S

    def _light_stop(self, ego, ref, ego_s, front_s, perception, speed):
        """A stop at the next signalised stop line unless its light reads green. Red and yellow
        stop; a light perception cannot read counts as a possible red: the car approaches at a
        speed from which it can still stop at the line, and goes only once it reads green. Yellow,
        or an unread light the car can no longer stop for comfortably (it went unread late, after
        green), clears the junction instead."""
        light = perception.traffic_light
        if light is not None and light.state != "unknown":
            self._light_read = (light.id, light.state)
        if light is None or light.state == "green":
            return None
        c, s = math.cos(ego.yaw), math.sin(ego.yaw)
        ex = (light.stop_line[0] + light.stop_line[2]) / 2
        ey = (light.stop_line[1] + light.stop_line[3]) / 2
        wx, wy = ego.x + c * ex - s * ey, ego.y + s * ex + c * ey
        line_s, _ = ref.path.project(wx, wy, s_hint=ego_s + math.hypot(ex, ey), window_m=math.hypot(ex, ey) + 10.0)
        distance = line_s - front_s
        if distance < -0.5:
            return None  # already across
        late = distance < speed**2 / (2 * self.config.comfort_decel)
        if late and (light.state == "yellow" or (light.state == "unknown" and self._light_read == (light.id, "green"))):
            return None  # cannot stop comfortably: clear the junction
        stop_s = line_s - self.config.stop_line_margin_m
        if light.state == "unknown":
            return (stop_s, "stop_light", f"approach: light {light.id} at the stop line in {distance:.1f} m unread")
        return (stop_s, "stop_light", f"stop: {light.state} light {light.id} at {distance:.1f} m")

    def _lane_width(self, t: _Tracked) -> float:
        if self.road_map is None:
            return 3.5
        lane = self.road_map.waypoint(t.obstacle.x, t.obstacle.y)
        return 3.5 if lane is None else lane.width

    def _free_side(self, t: _Tracked, ref: ReferencePath, tracked: list[_Tracked]) -> int | None:
        """+1 (left) or -1 (right) when the lane beside a stopped obstacle runs our way and is
        free around it; None when neither is."""
        if self.road_map is None:
            return None
        width = self._lane_width(t)
        for side in (1, -1):
            clear = True
            for s_probe in (t.s - PASS_CLEARANCE_M, t.s, t.s + PASS_CLEARANCE_M):
                px, py, pyaw = (float(v) for v in ref.path.interpolate(s_probe))
                qx, qy = px - math.sin(pyaw) * side * width, py + math.cos(pyaw) * side * width
                lane = self.road_map.waypoint(qx, qy, project=False)
                if lane is None or lane.is_junction or math.cos(lane.yaw - pyaw) < 0.5:
                    clear = False
                    break
            if not clear:
                continue
            for other in tracked:
                if other is t:
                    continue
                if abs(other.s - t.s) < PASS_CLEARANCE_M + other.obstacle.length and \
                        abs(other.d - side * width) < width / 2 + other.obstacle.width / 2 + 0.3:
                    clear = False
                    break
                # Traffic coming up that lane from behind also blocks it.
                if other.s < t.s and other.v_along > 1.0 and abs(other.d - side * width) < width / 2 and \
                        other.s + other.v_along * 6.0 > t.s - PASS_CLEARANCE_M:
                    clear = False
                    break
            if clear:
                return side
        return None

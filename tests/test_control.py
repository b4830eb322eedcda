"""Behaviour of the controllers (control/) closed loop with the real vehicle model.

Every drive is synchronous at dt 0.05 s with sim/vehicle.py's DynamicBicycle. The plan is
re-generated each tick from a reference polyline at constant speed, starting at the car's
projection, as a planner would. Lateral error is the REAR-AXLE offset from the reference
(signed, positive left), the same measure as `pipeline.series.lateral_errors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import osqp
import pytest
from pydantic import ValidationError

from stagepilot.control import VehicleGeometry, build_controller
from stagepilot.control.bench import bench_control
from stagepilot.core.config import CONFIG_ROOT, ConfigError, load_stack
from stagepilot.core.messages import Control, EgoState, Plan
from stagepilot.core.paths import Polyline
from stagepilot.core.roadmap import RoadMap
from stagepilot.core.config_control import ControllerConfig
from stagepilot.sim.vehicle import DynamicBicycle, VehicleParams

DT_S = 0.05  # [s] simulator tick
PARAMS = VehicleParams()
GEOMETRY = VehicleGeometry(wheelbase_m=PARAMS.wheelbase_m, max_steer_angle_rad=PARAMS.max_steer_angle_rad,
                           max_steer_rate_rad_s=PARAMS.max_steer_rate_rad_s)
KINDS = ("mpc", "pid_pure_pursuit", "pid_stanley")
STRAIGHT = Polyline(np.array([[0.0, 0.0], [2000.0, 0.0]])).resampled(1.0)


def arc(radius_m: float, length_m: float) -> Polyline:
    """A left-turning arc of constant radius after a 30 m straight lead-in."""
    s = np.arange(0.0, length_m, 1.0)
    angle = s / radius_m
    bend = np.stack([30.0 + radius_m * np.sin(angle), radius_m * (1.0 - np.cos(angle))], axis=1)
    return Polyline(np.concatenate([[[0.0, 0.0]], bend]))


@pytest.fixture(scope="module")
def curvy_lane() -> tuple[Polyline, float]:
    """Lane -1 of configs/maps/curvy.xodr from s 10 (path s 0) to s 880 (curves R 90-200 m),
    run on straight past the goal so the last plans are whole; and the goal's path s."""
    road_map = RoadMap.load(CONFIG_ROOT / "maps" / "curvy.xodr")
    lane = road_map.route([(10.0, -1.75), (750.0, 385.2)]).path
    heading = lane.yaw[-1]
    run_on = lane.points[-1] + np.outer(np.arange(1.0, 101.0), [math.cos(heading), math.sin(heading)])
    return Polyline(np.concatenate([lane.points, run_on])), lane.length


# ---------------------------------------------------------------- closed loop


def ego_of(car: DynamicBicycle) -> EgoState:
    st = car.state
    return EgoState(x=st.x, y=st.y, yaw=st.yaw, speed=st.speed, yaw_rate=st.yaw_rate, accel=st.accel,
                    steer_angle=st.steer_angle, lateral_speed=st.vy)


def path_yaw(path: Polyline, s: np.ndarray) -> np.ndarray:
    """Heading interpolated between segment midpoints (smooth, unlike the per-segment yaw)."""
    mid = 0.5 * (path.s[:-1] + path.s[1:])
    return np.interp(s, mid, np.unwrap(path.yaw[:-1]))


def cruise_plan(path: Polyline, s0: float, t: float, speed: float) -> Plan:
    times = np.arange(0.0, 5.0 + 1e-9, 0.1)
    s = s0 + speed * times
    x, y, _ = path.interpolate(s)
    return Plan(t=t, frame=0, times=times, x=x, y=y, yaw=path_yaw(path, s), v=np.full_like(times, speed),
                a=np.zeros_like(times), curvature=path.curvature_at(s), decision="cruise", reason="test")


def stop_plan(path: Polyline, s0: float, t: float, cruise_mps: float, stop_s: float,
              decel_mps2: float = 2.0) -> Plan:
    """Cruise, then brake at decel_mps2 to stand at stop_s (v = sqrt(2 b d), as a planner does)."""
    times = np.arange(0.0, 6.0 + 1e-9, 0.1)
    s, v = np.empty_like(times), np.empty_like(times)
    s[0] = s0
    for k in range(len(times)):
        v[k] = min(cruise_mps, math.sqrt(2.0 * decel_mps2 * max(stop_s - s[k], 0.0)))
        if k + 1 < len(times):
            s[k + 1] = max(min(s[k] + v[k] * 0.1, stop_s), s[k])
    x, y, _ = path.interpolate(s)
    return Plan(t=t, frame=0, times=times, x=x, y=y, yaw=path_yaw(path, s), v=v,
                a=np.append(np.diff(v) / 0.1, 0.0), curvature=path.curvature_at(s), decision="stop_obstacle",
                reason="test")


def launch_plan(path: Polyline, s0: float, t: float, cruise_mps: float) -> Plan:
    """Standing until t = 1 s, then away at 1 m/s^2 up to cruise_mps (profile fixed in sim time)."""
    times = np.arange(0.0, 5.0 + 1e-9, 0.1)
    v = np.clip(1.0 * (t + times - 1.0), 0.0, cruise_mps)
    s = s0 + np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * 0.1)])
    x, y, _ = path.interpolate(s)
    return Plan(t=t, frame=0, times=times, x=x, y=y, yaw=path_yaw(path, s), v=v,
                a=np.where((v > 0.0) & (v < cruise_mps), 1.0, 0.0), curvature=path.curvature_at(s), decision="cruise",
                reason="test")


@dataclass
class Drive:
    lateral_m: np.ndarray  # (T,) rear-axle offset from the reference, positive left
    station_m: np.ndarray  # (T,) arc length of the rear axle along the reference
    speed_mps: np.ndarray  # (T,)
    controls: list[Control]
    controller: object


def track(path: Polyline, plan_for, controller, *, s_start: float = 0.0, s_end: float | None = None,
          seconds: float | None = None, speed_mps: float = 0.0, offset_m: float = 0.0,
          heading_rad: float = 0.0, delay_ticks: int = 0) -> Drive:
    """Closed loop until the car passes s_end or `seconds` elapse. `plan_for(s, t)` makes the
    plan from the car's projection s. Commands reach the car `delay_ticks` late."""
    x, y, _ = path.interpolate(s_start)
    yaw = float(path_yaw(path, s_start))
    car = DynamicBicycle(PARAMS, float(x) - offset_m * math.sin(yaw), float(y) + offset_m * math.cos(yaw),
                         yaw + heading_rad, speed_mps)
    pending = [Control(brake=1.0)] * delay_ticks
    lateral, station, speed, controls = [], [], [], []
    t, hint = 0.0, s_start
    while True:
        ego = ego_of(car)
        hint, offset = path.project(ego.x, ego.y, s_hint=hint)
        lateral.append(offset)
        station.append(hint)
        speed.append(ego.speed)
        if (s_end is not None and hint >= s_end) or (seconds is not None and t >= seconds - 1e-9):
            break
        control = controller.step(ego, plan_for(hint, t), t)
        controls.append(control)
        pending.append(control)
        car.step(pending.pop(0), DT_S)
        t += DT_S
    return Drive(np.array(lateral), np.array(station), np.array(speed), controls, controller)


def controller_of(kind: str = "mpc", **sections) -> object:
    """A controller as the default stack runs it: an MPC is told, as the runtime tells it under
    the `budget` time model, that its commands apply one tick after their frame."""
    data = {"kind": kind, **sections}
    controller = build_controller(ControllerConfig.model_validate(data), GEOMETRY, DT_S)
    if hasattr(controller, "expect_delay"):
        controller.expect_delay(DT_S)
    return controller


def rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


# ---------------------------------------------------------------- lateral tracking


@pytest.mark.parametrize("kind", KINDS)
def test_straight_reference_recovers_from_an_offset_without_weaving(kind):
    result = track(STRAIGHT, lambda s, t: cruise_plan(STRAIGHT, s, t, 10.0), controller_of(kind),
                   seconds=8.0, speed_mps=10.0, offset_m=1.0)
    assert np.all(result.lateral_m > -0.15)  # overshoot to the other side
    assert np.max(np.abs(result.lateral_m[-60:])) < 0.02  # the last 3 s


@pytest.mark.parametrize("kind", KINDS)
def test_curved_reference_is_tracked(kind):
    bend = arc(radius_m=60.0, length_m=250.0)  # 1.7 m/s^2 at 10 m/s
    result = track(bend, lambda s, t: cruise_plan(bend, s, t, 10.0), controller_of(kind),
                   s_end=200.0, speed_mps=10.0)
    assert np.max(np.abs(result.lateral_m)) < 0.1
    assert np.max(np.abs(result.lateral_m[result.station_m > 80.0])) < 0.05  # settled in the arc


# Rear-axle lateral error on the curvy road at 15 m/s [m]: (RMS bound, max bound).
CURVY_BOUNDS = {"mpc": (0.15, 0.5), "pid_pure_pursuit": (0.3, 1.0), "pid_stanley": (0.3, 1.0)}


@pytest.mark.parametrize("kind", KINDS)
def test_curvy_road_at_15_mps(kind, curvy_lane):
    lane, goal_s = curvy_lane
    result = track(lane, lambda s, t: cruise_plan(lane, s, t, 15.0), controller_of(kind),
                   s_end=goal_s, speed_mps=15.0)
    rms_bound, max_bound = CURVY_BOUNDS[kind]
    assert rms(result.lateral_m) <= rms_bound
    assert np.max(np.abs(result.lateral_m)) <= max_bound
    assert np.max(np.abs(result.speed_mps - 15.0)) < 0.3
    assert getattr(result.controller, "fallback_count", 0) == 0


# ---------------------------------------------------------------- longitudinal


@pytest.mark.parametrize("kind", ["mpc", "pid_pure_pursuit"])
@pytest.mark.parametrize("start_mps, target_mps", [(10.0, 15.0), (15.0, 10.0), (0.0, 10.0), (20.0, 5.0)])
def test_speed_step_settles_without_overshoot(kind, start_mps, target_mps):
    result = track(STRAIGHT, lambda s, t: cruise_plan(STRAIGHT, s, t, target_mps), controller_of(kind),
                   seconds=10.0, speed_mps=start_mps)
    speed = result.speed_mps
    overshoot = (speed.max() - target_mps) if target_mps > start_mps else (target_mps - speed.min())
    assert overshoot < 0.3
    assert np.max(np.abs(speed[-60:] - target_mps)) < 0.1  # the last 3 s


@pytest.mark.parametrize("kind", KINDS)
def test_stops_at_a_planned_stop_and_stays_stopped(kind):
    hold_brake = ControllerConfig().standstill.hold_brake
    result = track(STRAIGHT, lambda s, t: stop_plan(STRAIGHT, s, t, 10.0, stop_s=60.0), controller_of(kind),
                   seconds=20.0, speed_mps=10.0)
    stopped = np.flatnonzero(result.speed_mps < 1e-3)
    assert len(stopped) and stopped[0] * DT_S < 12.0
    assert abs(result.station_m[stopped[0]] - 60.0) < 0.5
    assert np.all(result.speed_mps[stopped[0]:] < 1e-3)  # stays stopped
    assert np.ptp(result.station_m[stopped[0]:]) < 1e-3
    assert all(c.brake >= hold_brake and c.throttle == 0.0 for c in result.controls[stopped[0] + 1:])


def emergency_plan(path: Polyline, s0: float, t: float, speed: float, decel_mps2: float = 6.0) -> Plan:
    """The planner's emergency stop: from the car's own speed at decel_mps2 to standstill, made
    afresh every tick (planning/planner.py, _braking_plan)."""
    times = np.arange(0.0, 4.0 + 1e-9, 0.1)
    v = np.maximum(speed - decel_mps2 * times, 0.0)
    travelled = np.where(v > 0, speed * times - 0.5 * decel_mps2 * times**2, speed**2 / (2 * decel_mps2))
    s = s0 + travelled
    x, y, _ = path.interpolate(s)
    return Plan(t=t, frame=0, times=times, x=x, y=y, yaw=path_yaw(path, s), v=v, a=np.where(v > 0, -decel_mps2, 0.0),
                curvature=path.curvature_at(s), decision="emergency_stop", reason="test")


@pytest.mark.parametrize("kind", KINDS)
def test_an_emergency_stop_brakes_as_hard_as_planned_to_standstill(kind):
    """From 10.4 m/s at 6 m/s^2: 9.0 m and 1.73 s if the brake acted at once. The brake's lag
    (0.12 s) costs a few tenths of a metre; letting off ahead of standstill costs more (the MPC
    did, 4.9 m/s^2 on average in a town-loop stop), and so would any throttle."""
    speed0 = 10.4
    controller = controller_of(kind)
    car = DynamicBicycle(PARAMS, 0.0, 0.0, 0.0, speed0)
    t, controls, speeds, stations = 0.0, [], [], []
    while t < 4.0:
        ego = ego_of(car)
        speeds.append(ego.speed)
        stations.append(ego.x)
        control = controller.step(ego, emergency_plan(STRAIGHT, ego.x, t, ego.speed), t)
        controls.append(control)
        car.step(control, DT_S)
        t += DT_S
    stopped = np.flatnonzero(np.array(speeds) < 1e-3)
    assert len(stopped), speeds[-5:]
    distance, seconds = stations[stopped[0]], stopped[0] * DT_S
    assert distance < speed0**2 / (2 * 6.0) + 1.3, (distance, seconds)  # MPC 10.15 m (10.80 m letting off), PIDs 10.14 m
    assert seconds < speed0 / 6.0 + 0.3, (distance, seconds)
    assert all(c.throttle == 0.0 for c in controls[:stopped[0]])


@pytest.mark.parametrize("kind", KINDS)
def test_moves_off_when_the_plan_does(kind):
    result = track(STRAIGHT, lambda s, t: launch_plan(STRAIGHT, s, t, 8.0), controller_of(kind),
                   seconds=6.0, speed_mps=0.0)
    # while the plan stands (1 s) the car may only anticipate the throttle lag
    assert result.station_m[20] - result.station_m[0] < 0.1 and result.speed_mps[20] < 0.2
    assert result.speed_mps[-1] == pytest.approx(5.0, abs=0.3)  # 1 m/s^2 for 5 s


@pytest.mark.parametrize("kind", KINDS)
def test_standing_plan_brakes_and_keeps_the_wheels(kind):
    controller = controller_of(kind)
    times = np.arange(0.0, 3.0, 0.1)
    still = Plan(t=0.0, frame=0, times=times, x=np.full_like(times, 5.0), y=np.zeros_like(times),
                 yaw=np.zeros_like(times), v=np.zeros_like(times), a=np.zeros_like(times),
                 curvature=np.zeros_like(times), decision="stop_goal", reason="test")
    parked = EgoState(x=5.0, y=0.0, yaw=0.0, speed=0.0, yaw_rate=0.0, accel=0.0, steer_angle=0.1)
    held = controller.step(parked, still, 0.0)
    assert held.throttle == 0.0 and held.brake >= ControllerConfig().standstill.hold_brake
    assert held.steer == pytest.approx(-0.1 / GEOMETRY.max_steer_angle_rad)
    rolling = EgoState(x=0.0, y=0.0, yaw=0.0, speed=5.0, yaw_rate=0.0, accel=0.0, steer_angle=0.0)
    assert controller.step(rolling, still, 0.0).brake > 0.0


# ---------------------------------------------------------------- MPC


def test_mpc_sets_up_osqp_once(monkeypatch):
    controller = controller_of("mpc")
    solver = controller.solver
    setups = []
    original = osqp.OSQP.setup
    monkeypatch.setattr(osqp.OSQP, "setup", lambda self, *a, **k: setups.append(1) or original(self, *a, **k))
    track(STRAIGHT, lambda s, t: cruise_plan(STRAIGHT, s, t, 10.0), controller, seconds=3.0, speed_mps=10.0,
          offset_m=0.5)
    assert controller.solver is solver
    assert controller.setup_count == 1 and setups == []
    assert controller.solve_count == 60 and controller.fallback_count == 0


@pytest.mark.parametrize("offset_m, heading_rad", [(3.0, 0.3), (-3.0, -0.3)])
def test_mpc_commands_respect_steer_angle_rate_and_accel_limits(offset_m, heading_rad):
    controller = controller_of("mpc")
    accels = []

    def plan_for(s, t):
        accels.append(controller.last_accel_mps2)
        return stop_plan(STRAIGHT, s, t, 12.0, stop_s=80.0, decel_mps2=6.0)

    result = track(STRAIGHT, plan_for, controller, seconds=8.0, speed_mps=12.0, offset_m=offset_m,
                   heading_rad=heading_rad)
    angles = np.array([-c.steer * GEOMETRY.max_steer_angle_rad for c in result.controls])
    rates = np.abs(np.diff(angles)) / DT_S
    assert np.max(np.abs(angles)) <= GEOMETRY.max_steer_angle_rad
    assert np.max(rates) <= GEOMETRY.max_steer_rate_rad_s + 1e-6
    assert np.max(rates) > 0.9 * GEOMETRY.max_steer_rate_rad_s  # the limit was reached
    mpc = ControllerConfig().mpc
    assert mpc.accel_min_mps2 <= min(accels) and max(accels) <= mpc.accel_max_mps2
    assert controller.fallback_count == 0


def test_mpc_compensates_the_command_delay(curvy_lane):
    lane, _ = curvy_lane

    def lateral_rms(delay_s: float) -> float:
        controller = controller_of("mpc", mpc={"actuator_lag_s": 0.0})
        controller.expect_delay(delay_s)  # what the runtime tells it before each step
        result = track(lane, lambda s, t: cruise_plan(lane, s, t, 15.0), controller, s_start=300.0, s_end=520.0,
                       speed_mps=15.0, delay_ticks=4)
        return rms(result.lateral_m)

    compensated = lateral_rms(0.2)
    assert compensated < 0.05
    assert lateral_rms(0.0) > 3.0 * compensated


def test_mpc_compensates_the_runtimes_delay_plus_the_actuator_lag():
    controller = build_controller(ControllerConfig.model_validate({"kind": "mpc", "mpc": {"actuator_lag_s": 0.05}}),
                                  GEOMETRY, DT_S)
    assert controller.compensation_s == pytest.approx(0.05) and controller.delay_ticks == 1  # alone: the lag
    controller.expect_delay(0.15)
    assert controller.compensation_s == pytest.approx(0.2) and controller.delay_ticks == 4


def test_mpc_falls_back_to_pure_pursuit_when_osqp_fails():
    controller = controller_of("mpc", mpc={"osqp": {"max_iter": 1}})  # never converges
    result = track(STRAIGHT, lambda s, t: cruise_plan(STRAIGHT, s, t, 10.0), controller, seconds=6.0,
                   speed_mps=10.0, offset_m=0.5)
    assert controller.fallback_count == len(result.controls) and controller.solve_count == 0
    assert np.max(np.abs(result.lateral_m[-20:])) < 0.05


# ---------------------------------------------------------------- contract and config


@pytest.mark.parametrize("kind", KINDS)
def test_build_controller_by_name(kind):
    controller = controller_of(kind)
    assert controller.name == kind
    controller.reset()
    broken = EgoState(x=float("nan"), y=0.0, yaw=0.0, speed=10.0, yaw_rate=0.0, accel=0.0, steer_angle=0.0)
    with pytest.raises(ValueError, match="ego state is not finite"):  # the runtime fails safe before this
        controller.step(broken, cruise_plan(STRAIGHT, 0.0, 0.0, 10.0), 0.0)


@pytest.mark.parametrize("data, key", [
    ({"mpc": {"horizon_steps": -5}}, "horizon_steps"),
    ({"kind": "lqr"}, "kind"),
    ({"stanley": {"cross_track_gain": 1.0}}, "cross_track_gain"),
    ({"longitudinal": {"kp_v": [1.0, 2.0]}}, "kp_v"),
    ({"mpc": {"weight_heading_bp_mps": [15.0, 5.0], "weight_heading_v": [1.0, 2.0]}}, "weight_heading_bp_mps"),
    ({"pure_pursuit": {"lookahead_min_m": 0.0}}, "lookahead_min_m"),
])
def test_bad_controller_config_is_rejected_naming_the_key(data, key):
    with pytest.raises(ValidationError, match=key):
        ControllerConfig.model_validate(data)


def test_bad_controller_override_names_the_key_path():
    with pytest.raises(ConfigError, match=r"controller\.mpc\.horizon_steps"):
        load_stack(overrides=["controller.mpc.horizon_steps=-1"])
    with pytest.raises(ConfigError, match=r"controller\.mpc\.weight_lateal: unknown key"):
        load_stack(overrides=["controller.mpc.weight_lateal=2"])


def test_bench_control_times_the_default_mpc():
    result = bench_control(ControllerConfig(), GEOMETRY, DT_S, calls=200)
    assert result["controller"] == "mpc" and result["horizon"] >= 20 and result["calls"] == 200
    assert 0.0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["fallbacks"] == 0

"""Behaviour of the ego dynamics model (sim/vehicle.py) under CARLA-style commands."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest

from stagepilot.core.messages import Control
from stagepilot.sim.vehicle import DynamicBicycle, VehicleParams, VehicleState

DT_S = 0.05  # [s] the simulator tick
PARAMS = VehicleParams()


def apply_controls(
    car: DynamicBicycle, control: Control, seconds: float, dt: float = DT_S
) -> list[VehicleState]:
    """Hold one command; the state after every step."""
    states = []
    for _ in range(round(seconds / dt)):
        car.step(control, dt)
        states.append(car.state)
    return states


def hold_speed(car: DynamicBicycle, speed_mps: float, steer: float, seconds: float) -> VehicleState:
    """Proportional speed hold with a fixed steer command; the final state."""
    for _ in range(round(seconds / DT_S)):
        throttle = min(max(0.5 * (speed_mps - car.state.speed), 0.0), 1.0)
        car.step(Control(steer=steer, throttle=throttle), DT_S)
    return car.state


def kinematic_yaw_rate(state: VehicleState, params: VehicleParams = PARAMS) -> float:
    return state.speed * math.tan(state.steer_angle) / params.wheelbase_m


def resistance_n(p: VehicleParams, speed_mps: float) -> float:
    """Aerodynamic drag plus rolling resistance."""
    drag_n = 0.5 * p.air_density_kg_m3 * p.drag_area_m2 * speed_mps**2
    return drag_n + p.rolling_resistance_coeff * p.mass_kg * 9.81


def top_speed_mps(p: VehicleParams) -> float:
    """Where wheel power equals drag plus rolling resistance, by bisection."""
    low, high = 1.0, 200.0
    for _ in range(100):
        v = 0.5 * (low + high)
        resist_w = v * resistance_n(p, v)
        low, high = (v, high) if resist_w < p.max_power_w else (low, v)
    return low


# --- longitudinal --------------------------------------------------------------------------


def test_full_throttle_reaches_100_kmh_plausibly_and_settles_at_top_speed():
    car = DynamicBicycle(PARAMS, 0.0, 0.0, 0.0)
    states = apply_controls(car, Control(throttle=1.0), 120.0)
    speeds = [s.speed for s in states]
    time_to_100_kmh_s = DT_S * (next(i for i, v in enumerate(speeds) if v >= 27.8) + 1)
    assert 6.0 <= time_to_100_kmh_s <= 14.0
    assert all(b >= a for a, b in zip(speeds, speeds[1:]))
    assert max(s.accel for s in states) <= PARAMS.max_drive_force_n / PARAMS.mass_kg
    v_top = top_speed_mps(PARAMS)
    assert 45.0 <= v_top <= 75.0  # 160-270 km/h
    assert speeds[-1] == pytest.approx(v_top, rel=0.01)
    assert states[-1].y == 0.0 and states[-1].yaw == 0.0


@pytest.mark.parametrize(
    "command", [Control(brake=1.0), Control(hand_brake=True)], ids=["brake", "hand_brake"]
)
def test_full_braking_from_20_mps_stops_in_plausible_distance_and_stays(command):
    car = DynamicBicycle(PARAMS, 0.0, 0.0, 0.0, speed=20.0)
    states = apply_controls(car, command, 6.0)
    assert all(s.speed >= 0.0 for s in states)
    assert all(b.x >= a.x for a, b in zip(states, states[1:]))
    stopped = [i for i, s in enumerate(states) if s.speed == 0.0]
    assert stopped and stopped[0] * DT_S < 4.0
    assert all(s.speed == 0.0 for s in states[stopped[0] :])  # exactly 0, and stays
    assert 20.0 <= states[-1].x <= 40.0
    assert states[-1].x == states[stopped[0]].x


def test_coasting_decelerates_by_drag_and_rolling_resistance():
    p = PARAMS
    car = DynamicBicycle(p, 0.0, 0.0, 0.0, speed=25.0)
    states = apply_controls(car, Control(), 10.0)
    speeds = [s.speed for s in states]
    assert all(0.0 < b < a for a, b in zip(speeds, speeds[1:]))
    for state in states[::40]:
        expected_mps2 = -resistance_n(p, state.speed) / p.mass_kg
        assert state.accel == pytest.approx(expected_mps2, rel=0.03)


@pytest.mark.parametrize(
    "command",
    [
        Control(),
        Control(brake=1.0),
        Control(brake=0.3),
        Control(hand_brake=True),
        Control(throttle=0.5, brake=1.0),
    ],
    ids=["nothing", "brake", "light_brake", "hand_brake", "throttle_against_brake"],
)
def test_car_at_rest_stays_exactly_at_rest(command):
    car = DynamicBicycle(PARAMS, 3.0, -2.0, 0.7)
    before = car.state
    after = apply_controls(car, command, 5.0)[-1]
    pose_and_motion = (after.x, after.y, after.yaw, after.speed, after.yaw_rate)
    assert pose_and_motion == (before.x, before.y, before.yaw, 0.0, 0.0)


def test_light_throttle_overcomes_rolling_resistance_from_rest():
    car = DynamicBicycle(PARAMS, 0.0, 0.0, 0.0)
    assert apply_controls(car, Control(throttle=0.1), 2.0)[-1].speed > 0.3


def test_reverse_drives_backwards_up_to_the_reverse_speed_limit():
    car = DynamicBicycle(PARAMS, 0.0, 0.0, 0.0)
    states = apply_controls(car, Control(throttle=1.0, reverse=True), 10.0)
    assert states[-1].speed < 0.0 and states[-1].x < -10.0
    assert min(s.speed for s in states) >= -PARAMS.max_reverse_speed_mps - 1e-9
    assert states[-1].speed == pytest.approx(-PARAMS.max_reverse_speed_mps, abs=0.5)
    # wheels turned left while reversing swing the nose right: clockwise yaw
    states = apply_controls(car, Control(steer=-0.5, throttle=0.5, reverse=True), 2.0)
    assert states[-1].steer_angle > 0.0 and states[-1].yaw_rate < 0.0
    assert states[-1].yaw_rate == pytest.approx(kinematic_yaw_rate(states[-1]), rel=1e-9)


def test_reverse_gear_while_rolling_forward_stops_then_backs_up():
    car = DynamicBicycle(PARAMS, 0.0, 0.0, 0.0, speed=5.0)
    speeds = [s.speed for s in apply_controls(car, Control(throttle=1.0, reverse=True), 6.0)]
    assert speeds[0] < 5.0 and speeds[-1] < 0.0
    assert all(b <= a for a, b in zip(speeds, speeds[1:]))


# --- lateral -------------------------------------------------------------------------------


@pytest.mark.parametrize("speed_mps", [0.5, 2.0, 4.0, 6.0])
@pytest.mark.parametrize("steer", [0.3, -0.15])
def test_low_speed_steady_cornering_matches_kinematic_yaw_rate(speed_mps, steer):
    car = DynamicBicycle(PARAMS, 0.0, 0.0, 0.0, speed=speed_mps)
    state = hold_speed(car, speed_mps, steer, 5.0)
    assert state.steer_angle == pytest.approx(-steer * PARAMS.max_steer_angle_rad)
    assert state.yaw_rate == pytest.approx(kinematic_yaw_rate(state), rel=0.10)
    # positive steer turns right: clockwise, negative yaw rate
    assert math.copysign(1.0, state.yaw_rate) == -math.copysign(1.0, steer)


@pytest.mark.parametrize(
    "rear_stiffness_n_per_rad, kind",
    [
        (PARAMS.cornering_stiffness_rear_n_per_rad, "default"),
        (160000.0, "understeer"),
        (80000.0, "oversteer"),
    ],
)
def test_15_mps_yaw_rate_follows_the_understeer_gradient(rear_stiffness_n_per_rad, kind):
    params = dataclasses.replace(
        PARAMS, cornering_stiffness_rear_n_per_rad=rear_stiffness_n_per_rad
    )
    gradient = params.understeer_gradient_rad_per_mps2
    state = hold_speed(DynamicBicycle(params, 0.0, 0.0, 0.0, speed=15.0), 15.0, 0.02, 6.0)
    assert state.steer_angle < 0.0 and state.yaw_rate < 0.0  # small right steer turns right
    # linear single-track steady state: r = v delta / (L + K v^2)
    effective_wheelbase_m = params.wheelbase_m + gradient * state.speed**2
    theory = state.speed * state.steer_angle / effective_wheelbase_m
    assert state.yaw_rate == pytest.approx(theory, rel=0.02)
    ratio_to_kinematic = state.yaw_rate / kinematic_yaw_rate(state, params)
    if kind == "understeer":
        assert gradient > 0.0 and ratio_to_kinematic < 0.95
    elif kind == "oversteer":
        assert gradient < 0.0 and ratio_to_kinematic > 1.05
    else:  # CommonRoad's equal normalised stiffness: very nearly neutral
        assert abs(gradient) < 1e-4 and ratio_to_kinematic == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("dt", [0.05, 0.02, 0.1])
def test_steering_rate_limit_holds(dt):
    car = DynamicBicycle(PARAMS, 0.0, 0.0, 0.0, speed=5.0)
    max_step = PARAMS.max_steer_rate_rad_s * dt + 1e-12
    angles = [0.0] + [s.steer_angle for s in apply_controls(car, Control(steer=1.0), 2.0, dt)]
    angles += [s.steer_angle for s in apply_controls(car, Control(steer=-1.0), 4.0, dt)]
    assert all(abs(b - a) <= max_step for a, b in zip(angles, angles[1:]))
    settle_s = PARAMS.max_steer_angle_rad / PARAMS.max_steer_rate_rad_s
    assert angles[math.ceil(settle_s / dt) + 1] == pytest.approx(-PARAMS.max_steer_angle_rad)
    assert angles[-1] == pytest.approx(PARAMS.max_steer_angle_rad)


def test_junction_turn_at_5_mps():
    """A 90 degree left turn of 7 m radius at 5 m/s, the steer commanded as a step."""
    radius_m, speed_mps = 7.0, 5.0
    steer_angle_rad = math.atan(PARAMS.wheelbase_m / radius_m)
    car = DynamicBicycle(PARAMS, 0.0, 0.0, 0.0, speed=speed_mps)
    steer = -steer_angle_rad / PARAMS.max_steer_angle_rad
    state = hold_speed(car, speed_mps, steer, 0.6)
    assert state.steer_angle == pytest.approx(steer_angle_rad)  # on lock within 3 m of road
    while state.yaw < math.pi / 2:
        state = hold_speed(car, speed_mps, steer, DT_S)
    assert state.speed / state.yaw_rate == pytest.approx(radius_m, rel=0.03)
    # the 0.5 s steering transition delays the turn by about half its 2.5 m length
    assert radius_m < state.x < radius_m + 2.0
    assert radius_m - 1.0 < state.y < radius_m + 1.0


@pytest.mark.parametrize("speed_mps", [0.3, 1.0, 2.0, 3.0, 8.0, 20.0, 35.0])
@pytest.mark.parametrize("dt", [0.05, 0.1])
def test_stable_at_every_speed(speed_mps, dt):
    car = DynamicBicycle(PARAMS, 0.0, 0.0, 0.0, speed=speed_mps)
    states = apply_controls(car, Control(steer=0.05, throttle=0.2), 2.0, dt)
    states += apply_controls(car, Control(throttle=0.2), 4.0, dt)
    assert all(math.isfinite(v) for s in states for v in dataclasses.astuple(s))
    assert abs(states[-1].yaw_rate) < 1e-3 and abs(states[-1].vy) < 1e-3


# --- interface -----------------------------------------------------------------------------


def random_controls(seed: int, count: int) -> list[Control]:
    rng = random.Random(seed)
    return [
        Control(
            steer=rng.uniform(-1.2, 1.2),
            throttle=rng.uniform(-0.1, 1.1),
            brake=rng.choice([0.0, 0.0, rng.random()]),
            hand_brake=rng.random() < 0.05,
            reverse=rng.random() < 0.1,
        )
        for _ in range(count)
    ]


def test_identical_runs_are_bit_identical():
    controls = random_controls(seed=7, count=600)
    runs = []
    for _ in range(2):
        car = DynamicBicycle(PARAMS, 1.0, 2.0, 0.3, speed=4.0)
        states = []
        for control in controls:
            car.step(control, DT_S)
            states.append(car.state)
        runs.append((states, car.footprint().tobytes()))
    assert runs[0] == runs[1]
    assert len({s.speed for s in runs[0][0]}) > 100  # the commands did exercise the car


def test_nan_commands_count_as_zero():
    nan = float("nan")
    reference, tested = (DynamicBicycle(PARAMS, 0.0, 0.0, 0.0, speed=10.0) for _ in range(2))
    apply_controls(reference, Control(), 2.0)
    apply_controls(tested, Control(steer=nan, throttle=nan, brake=nan), 2.0)
    assert tested.state == reference.state


def test_out_of_range_commands_are_clipped():
    reference, tested = (DynamicBicycle(PARAMS, 0.0, 0.0, 0.0, speed=10.0) for _ in range(2))
    apply_controls(reference, Control(steer=1.0, throttle=1.0), 2.0)
    apply_controls(tested, Control(steer=3.0, throttle=7.0, brake=-2.0), 2.0)
    assert tested.state == reference.state


def test_footprint_corners_in_world_frame():
    p = PARAMS
    car = DynamicBicycle(p, 10.0, 5.0, math.pi / 2)  # facing north
    corners = car.footprint()
    assert corners.shape == (4, 2)
    front, rear, half = p.length_m - p.rear_overhang_m, p.rear_overhang_m, p.width_m / 2
    expected = [
        (10.0 + half, 5.0 - rear),
        (10.0 + half, 5.0 + front),
        (10.0 - half, 5.0 + front),
        (10.0 - half, 5.0 - rear),
    ]
    np.testing.assert_allclose(corners, expected, atol=1e-12)


@pytest.mark.parametrize(
    "field, value",
    [
        ("mass_kg", -1.0),
        ("yaw_inertia_kgm2", 0.0),
        ("cornering_stiffness_front_n_per_rad", float("nan")),
        ("max_steer_rate_rad_s", 0.0),
        ("rolling_resistance_coeff", -0.01),
        ("kinematic_blend_high_speed_mps", 0.5),
        ("length_m", 3.0),
        ("max_steer_angle_rad", 2.0),
    ],
)
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        VehicleParams(**{field: value})


@pytest.mark.parametrize("dt", [0.0, -0.05, float("nan"), float("inf")])
def test_invalid_dt_is_rejected(dt):
    with pytest.raises(ValueError, match="dt"):
        DynamicBicycle(PARAMS, 0.0, 0.0, 0.0).step(Control(), dt)

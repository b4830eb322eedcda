"""The behaviour layer on its own: a straight 200 m reference, detections given directly."""

from __future__ import annotations

import numpy as np
import pytest

from stagepilot.core.config import load_stack
from stagepilot.core.messages import Detection, EgoState, Perception, Route
from stagepilot.planning.behaviour import BehaviourLayer, VehicleShape
from stagepilot.planning.route import reference_from_route

EGO = EgoState(x=0.0, y=0.0, yaw=0.0, speed=8.0, yaw_rate=0.0, accel=0.0, steer_angle=0.0)


@pytest.fixture
def layer_and_ref():
    config = load_stack([], ["planner.behaviour.pedestrian_hold_s=1.0"])  # off by default
    points = np.stack([np.linspace(0.0, 200.0, 401), np.zeros(401)], axis=1)
    ref = reference_from_route(Route(points=points, s=points[:, 0].copy(), speed_limit=10.0))
    vehicle = VehicleShape(length_m=4.8, width_m=2.0, rear_overhang_m=1.0)
    return BehaviourLayer(config.planner.behaviour, vehicle, road_map=None), ref, config.planner.behaviour


def _walker(track_id: int, x: float) -> Detection:
    return Detection(track_id=track_id, kind="pedestrian", score=0.9, position=(x, 0.0), yaw=0.0,
                     extent=(0.5, 0.5, 1.8), velocity=(0.0, 0.0))


def _decide(layer, ref, t: float, detections: tuple[Detection, ...]):
    return layer.decide(EGO, ref, 0.0, Perception(t=t, frame=int(t * 20), detections=detections))


def test_a_walker_whose_track_breaks_keeps_the_stop_for_the_hold_then_lets_go(layer_and_ref):
    layer, ref, config = layer_and_ref
    assert _decide(layer, ref, 0.0, (_walker(7, 30.0),)).decision == "stop_obstacle"
    # the walker's track is lost for a few frames (a new id is not confirmed yet): still stopping
    lost = _decide(layer, ref, 0.3, ())
    assert lost.decision == "stop_obstacle" and "pedestrian 7" in lost.reason
    assert lost.target.stop_s == pytest.approx(30.0 - 0.25 - config.stop_margin_m, abs=0.3)
    # it comes back under a new id: the stop is for that one, from then on
    assert "pedestrian 8" in _decide(layer, ref, 0.4, (_walker(8, 29.5),)).reason
    # nothing seen for longer than the hold: the stop is released
    assert _decide(layer, ref, 0.45 + config.pedestrian_hold_s, ()).decision == "cruise"


def test_a_held_walker_is_not_kept_beyond_the_hold_by_its_own_stop(layer_and_ref):
    layer, ref, config = layer_and_ref
    _decide(layer, ref, 0.0, (_walker(3, 30.0),))
    held = [_decide(layer, ref, t, ()).decision for t in np.arange(0.05, 2.0 * config.pedestrian_hold_s, 0.05)]
    kept = sum(d == "stop_obstacle" for d in held) * 0.05
    assert kept == pytest.approx(config.pedestrian_hold_s, abs=0.051), held
    assert held[-1] == "cruise"


def test_nothing_is_held_once_the_car_stands_still_or_with_the_default_config(layer_and_ref):
    layer, ref, _ = layer_and_ref
    still = EgoState(x=0.0, y=0.0, yaw=0.0, speed=0.0, yaw_rate=0.0, accel=0.0, steer_angle=0.0)
    perceive = lambda t, dets: Perception(t=t, frame=int(t * 20), detections=dets)  # noqa: E731
    assert layer.decide(still, ref, 0.0, perceive(0.0, (_walker(5, 15.0),))).decision == "stop_obstacle"
    assert layer.decide(still, ref, 0.0, perceive(0.05, ())).decision == "cruise"
    default = BehaviourLayer(load_stack().planner.behaviour, layer.vehicle, road_map=None)
    assert _decide(default, ref, 0.0, (_walker(5, 30.0),)).decision == "stop_obstacle"
    assert _decide(default, ref, 0.05, ()).decision == "cruise"


def test_vehicles_are_not_held(layer_and_ref):
    layer, ref, _ = layer_and_ref
    car = Detection(track_id=1, kind="static", score=0.9, position=(30.0, 0.0), yaw=0.0, extent=(0.5, 0.5, 1.0),
                    velocity=(0.0, 0.0))
    assert _decide(layer, ref, 0.0, (car,)).decision == "stop_obstacle"
    assert _decide(layer, ref, 0.05, ()).decision == "cruise"

"""Are a message's numbers finite? One answer per message type, for every stage and the runtime.

A NaN or an infinity anywhere in an ego state, a perception result, a plan or a command is a
fault: the runtime fails safe on it, and a stage refuses it as input.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from stagepilot.core.messages import Control, EgoState, Perception, Plan


def finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def ego_is_finite(ego: EgoState) -> bool:
    """Every field of the measured ego state is finite."""
    return finite(*(getattr(ego, f.name) for f in dataclasses.fields(ego)))


def perception_is_finite(perception: Perception) -> bool:
    """Every detection's numbers, the stop line and the lane boundaries are finite."""
    for det in perception.detections:
        if not finite(det.score, det.yaw, *det.position, *det.extent, *det.velocity):
            return False
    light = perception.traffic_light
    if light is not None and not finite(*light.stop_line):
        return False
    road = perception.road
    lines = () if road is None else (road.left_boundary, road.right_boundary)
    return all(np.isfinite(line).all() for line in lines if line is not None)


def plan_is_finite(plan: Plan) -> bool:
    """Every sample of the trajectory (times, x, y, yaw, v, a, curvature) is finite."""
    return all(np.isfinite(a).all() for a in (plan.times, plan.x, plan.y, plan.yaw, plan.v, plan.a, plan.curvature))


def control_is_finite(control: Control) -> bool:
    return finite(control.steer, control.throttle, control.brake)

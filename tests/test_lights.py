"""The traffic light with learned perception, closed loop on the junction: an unread light is a
possible red, and the state comes from the head that governs our lane, never from any light in
view."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stagepilot.core.config import load_stack
from stagepilot.core.paths import Polyline
from stagepilot.pipeline.driver import drive
from stagepilot.sim.scenario import Scenario
from stagepilot.sim.world import EmbeddedSimulator

pytestmark = pytest.mark.slow


def _scenario(first_light: str, remaining_s: float, duration_s: float) -> Scenario:
    """South arm of the four-way junction, 60 m before the stop line at 8 m/s, straight across."""
    return Scenario.model_validate({
        "name": "light", "map": "junction", "seed": 4, "duration_s": duration_s, "speed_limit": 11.1,
        "ego": {"start": {"road": 4, "lane": 1, "s": 70}, "goal": {"road": 2, "lane": -1, "s": 40},
                "initial_speed": 8.0},
        "traffic_lights": {"first_light": first_light, "first_light_remaining_s": remaining_s},
        "weather": {"preset": "clear_noon"}})


def _our_light(sim):
    """The light at the route's first stop line and the line's arc length along the route [m]."""
    keys = list(sim.route.segment_keys)
    light = min((l for l in sim.lights if set(l.stop_line.lane_keys) & set(keys)),
                key=lambda l: min(keys.index(k) for k in l.stop_line.lane_keys if k in keys))
    line_s, _ = Polyline(sim.route.path.points).project(*light.stop_line.center)
    return light, line_s


def _front_progress(result) -> np.ndarray:
    """[m] along the route of the front bumper (route progress is the body centre's)."""
    return np.asarray(result.series.route_progress) + result.config.vehicle.length_m / 2


def test_a_hidden_light_stops_the_car_at_the_line_until_it_reads_green():
    """Red for 4 s, then green from 4 s to 16 s (configs/stack.yaml traffic timing); every light is
    hidden from the cameras until 14 s: the car reaches the line with its light green but unread."""
    hidden_until = 14.0
    config = load_stack([], ["perception.kind=learned", f"faults.lights_hidden_until_s={hidden_until}"])
    sim = EmbeddedSimulator(config)
    result = drive(config, _scenario("red", 4.0, 22.0), sim=sim)
    light, _ = _our_light(sim)
    assert [light.state(t) for t in (5.0, hidden_until, 15.5)] == ["green"] * 3
    _, line_s = _our_light(sim)
    t, speed, front = np.asarray(result.series.t), np.asarray(result.series.speed), _front_progress(result)
    hidden = t < hidden_until
    assert front[hidden].max() < line_s, f"entered past the line at {front[hidden].max() - line_s:.1f} m while unread"
    waiting = hidden & (t > hidden_until - 3.0)
    assert speed[waiting].max() < 0.3, "the car should stand at the line while the light is unread"
    reasons = [r for r, h in zip(result.series.reasons, hidden) if h and r]
    assert any(r.startswith("approach: light") and r.endswith("unread") for r in reasons), reasons[-3:]
    assert front[-1] > line_s + 20.0, "once the light reads green the car goes"
    assert result.outcome["collisions"] == 0 and result.outcome["red_lights"] == 0


class _TurnedHeadSimulator(EmbeddedSimulator):
    """The junction with the crossing road's head beside our stop line turned to face our approach:
    our cameras see its lamps, which show the crossing stream's state."""

    def reset(self, scenario):
        obs = super().reset(scenario)
        ours, _ = _our_light(self)
        cx, cy = ours.stop_line.center
        crossing = [l for l in self.lights if l.group != ours.group]
        turned = min(crossing, key=lambda l: math.hypot(l.position[0] - cx, l.position[1] - cy))
        turned.facing = ours.facing
        self.turned = turned
        return obs


@pytest.mark.parametrize("ours", ["green", "red"])
def test_the_state_comes_from_our_head_not_a_crossing_head_facing_us(ours):
    config = load_stack([], ["perception.kind=learned"])
    sim = _TurnedHeadSimulator(config)
    result = drive(config, _scenario(ours, 25.0, 14.0), sim=sim)
    light, line_s = _our_light(sim)
    # As the car reaches the line (about 7 s), the turned head shows the crossing stream's state.
    assert light.state(7.0) == ours and sim.turned.state(7.0) == {"green": "red", "red": "green"}[ours]
    front, speed = _front_progress(result), np.asarray(result.series.speed)
    if ours == "green":
        assert front[-1] > line_s + 10.0, "the car should go on its own green"
        before = front < line_s
        assert speed[before][-20:].min() > 4.0, "no stop for the crossing head's red"
    else:
        assert front.max() < line_s, "the car should stop at its own red"
        assert speed[-20:].max() < 0.3
    assert result.outcome["collisions"] == 0 and result.outcome["red_lights"] == 0

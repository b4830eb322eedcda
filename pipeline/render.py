"""`stagepilot sim render`: look at a scenario, driven by the ground-truth reference follower.

(`stagepilot drive` drives with the real stack and writes a full run folder.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
from tqdm import tqdm

from stagepilot.core.config import StackConfig
from stagepilot.sim.bev import BevDrawer
from stagepilot.sim.follower import make_follower
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.video import VideoWriter, camera_panels, compose, info_panel
from stagepilot.sim.world import EmbeddedSimulator


def _info_lines(sim, obs, events_seen: list[str]) -> list[str]:
    ego = obs.ego
    lights = sim.light_states()
    return [
        f"scenario: {sim.scenario.name}   seed {sim.scenario.seed}",
        f"t = {obs.t:6.2f} s   frame {obs.frame}",
        f"speed {ego.speed:5.2f} m/s   limit {obs.route.speed_limit:.1f} m/s",
        f"route {obs.route_progress:6.1f} / {obs.route.s[-1]:.0f} m",
        f"steer angle {ego.steer_angle:+.3f} rad   accel {ego.accel:+.2f} m/s2",
        f"lights: {sum(v == 'red' for v in lights.values())} red, {sum(v == 'green' for v in lights.values())} green",
        "driver: ReferenceFollower (ground truth)",
        "events:",
        *[f"  {e}" for e in events_seen[-6:]],
    ]


def _busy(obs, camera: str) -> int:
    """How much of the view road users fill (summed box heights [px]): the still shows the
    busiest frame."""
    if obs.ground_truth is None:
        return 0
    return sum(min(o.boxes_2d[camera].y1 - o.boxes_2d[camera].y0, 120.0) for o in obs.ground_truth.objects
               if o.kind in ("vehicle", "pedestrian") and camera in o.boxes_2d
               and o.boxes_2d[camera].visible_fraction > 0.5)


class _FollowerDriver:
    """The reference follower behind the same interface as the stack."""

    def __init__(self, sim):
        self.follower = make_follower(sim)

    def __call__(self, obs):
        return self.follower(obs), None


def render_scenario(config: StackConfig, scenario_name: str, overrides: list[str], out: Path,
                    duration: float | None = None, maps_dirs: Sequence[str] = ()) -> Path:
    scenario = load_scenario(scenario_name, overrides, maps_dirs)
    if duration is not None:
        scenario = scenario.model_copy(update={"duration_s": min(duration, scenario.duration_s)})
    sim = EmbeddedSimulator(config)
    obs = sim.reset(scenario)
    drive = _FollowerDriver(sim)
    control, plan = drive(obs)
    bev = BevDrawer(sim.sensors.ground, sim.route.path.points)
    camera = next(iter(sim.sensors.specs))
    out.mkdir(parents=True, exist_ok=True)
    video = VideoWriter(out / "render.mp4", fps=1.0 / sim.dt)
    events_seen: list[str] = []
    steps = int(round(scenario.duration_s / sim.dt))
    best_still, best_score = None, -1
    try:
        with tqdm(total=steps, desc=f"render {scenario.name}", unit="step") as bar:
            while True:
                events_seen += [f"{e.t:6.2f}s {e.kind}: {e.detail}" for e in obs.events]
                lights = [(l.position[:2], l.state(sim.t)) for l in sim.lights]
                ego = sim.ego_agent()
                frame = compose(
                    camera_panels(obs, camera),
                    [bev.local_view(ego, sim.agents(), lights, plan=plan), bev.global_view(ego, sim.agents(), lights),
                     info_panel(_info_lines(sim, obs, events_seen))],
                )
                video.write(frame)
                score = _busy(obs, camera)
                if score > best_score:
                    best_still, best_score = frame, score
                if sim.done:
                    break
                obs = sim.step(control)
                control, plan = drive(obs)
                bar.update(1)
                bar.set_postfix(t=f"{obs.t:.1f}s", v=f"{obs.ego.speed:.1f}m/s", refresh=False)
    finally:
        video.close()
        if best_still is not None:
            cv2.imwrite(str(out / "still.png"), best_still)
    for line in events_seen:
        print(line)
    return out / "render.mp4"

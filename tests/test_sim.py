"""The embedded simulator, closed loop and against its own ground truth."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from stagepilot.core.messages import Control
from stagepilot.sim.render import palette
from stagepilot.sim.follower import make_follower
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.traffic import STATIC_SIZE, VEHICLE_SIZE
from stagepilot.sim.world import EmbeddedSimulator

from conftest import shared_map

HOLD = Control(brake=1.0)


def straight(actors: list, ego: dict | None = None, **extra) -> dict:
    """A scenario on the straight map; by default the ego waits on the westbound lane."""
    ego = ego or {"start": {"road": 1, "lane": 1, "s": 480}, "goal": {"road": 1, "lane": 1, "s": 300}}
    return {"name": "test", "map": "straight", "seed": 11, "duration_s": 60, "ego": ego,
            "actors": actors, "weather": {"preset": "clear_noon", "noise_std": 0.0}, **extra}


def run(sim, obs, driver, seconds: float, each=None):
    for _ in range(int(round(seconds / sim.dt))):
        obs = sim.step(driver(obs) if callable(driver) else driver)
        if each is not None:
            each(sim, obs)
        if sim.done:
            break
    return obs


def fingerprint(sim, obs, digest) -> None:
    st = sim.ego.state
    digest.update(np.array([st.x, st.y, st.yaw, st.speed, st.yaw_rate, st.steer_angle]).tobytes())
    for agent in sim.agents():
        digest.update(np.array([agent.x, agent.y, agent.yaw, agent.speed]).tobytes())
    for name, cam in obs.cameras.items():
        digest.update(cam.rgb.tobytes())
        digest.update(obs.ground_truth.semantic[name].tobytes())
        digest.update(obs.ground_truth.depth[name].tobytes())


def test_same_scenario_and_seed_give_identical_states_and_images(stack):
    scenario = load_scenario("town_loop")
    digests = []
    for _ in range(2):
        sim = EmbeddedSimulator(stack)
        obs = sim.reset(scenario)
        follower = make_follower(sim)
        digest = hashlib.sha256()
        fingerprint(sim, obs, digest)
        run(sim, obs, follower, 3.0, each=lambda s, o: fingerprint(s, o, digest))
        digests.append(digest.hexdigest())
    assert digests[0] == digests[1]


def test_different_seed_changes_the_images(stack):
    images = []
    for seed in (1, 2):
        sim = EmbeddedSimulator(stack)
        obs = sim.reset(load_scenario("town_loop", [f"seed={seed}", "weather.preset=random"]))
        images.append(obs.cameras["front"].rgb)
    assert np.mean(np.abs(images[0].astype(int) - images[1].astype(int))) > 5.0


def test_known_ground_point_projects_to_expected_pixel(stack):
    sim = EmbeddedSimulator(stack)
    obs = sim.reset(load_scenario("lead_vehicle_braking"))
    cam = obs.cameras["front"]
    ego = obs.ego
    # A point 20 m ahead of the rear axle, 2 m left, on the ground, in the world frame.
    ex, ey = 20.0, 2.0
    wx = ego.x + math.cos(ego.yaw) * ex - math.sin(ego.yaw) * ey
    wy = ego.y + math.sin(ego.yaw) * ex + math.cos(ego.yaw) * ey
    local = np.array([math.cos(ego.yaw) * (wx - ego.x) + math.sin(ego.yaw) * (wy - ego.y),
                      -math.sin(ego.yaw) * (wx - ego.x) + math.cos(ego.yaw) * (wy - ego.y), 0.0, 1.0])
    p_cam = np.linalg.inv(cam.T_ego_cam) @ local
    u, v, w = cam.K @ p_cam[:3]
    # By hand for this camera: x 1.5, z 1.6, pitch 3 deg down, 90 deg fov, 640x360.
    f = 320.0 / math.tan(math.radians(45))
    pitch = math.radians(3.0)
    fwd, left, down = ex - 1.5, ey, 1.6
    z = fwd * math.cos(pitch) + down * math.sin(pitch)
    y = down * math.cos(pitch) - fwd * math.sin(pitch)
    assert u / w == pytest.approx(320.0 + f * (-left) / z, abs=1e-6)
    assert v / w == pytest.approx(180.0 + f * y / z, abs=1e-6)


def test_depth_on_flat_road_matches_ground_plane_distance(stack):
    sim = EmbeddedSimulator(stack)
    obs = sim.reset(load_scenario("curve_lane_keeping"))
    cam = obs.cameras["front"]
    depth = obs.ground_truth.depth["front"]
    semantic = obs.ground_truth.semantic["front"]
    K_inv = np.linalg.inv(cam.K)
    R, C = cam.T_ego_cam[:3, :3], cam.T_ego_cam[:3, 3]
    checked = 0
    for v in range(200, 360, 8):
        for u in range(160, 480, 16):
            if semantic[v, u] not in (palette.ROAD, palette.ROAD_LINE):
                continue
            ray = R @ (K_inv @ np.array([u, v, 1.0]))  # camera z = 1 along this ray
            expected = -C[2] / ray[2]
            assert depth[v, u] == pytest.approx(expected, rel=0.01), (u, v)
            checked += 1
    assert checked > 50


def test_semantic_labels_car_inside_its_ground_truth_box(stack):
    sim = EmbeddedSimulator(stack)
    obs = sim.reset(load_scenario("lead_vehicle_braking", ["weather.noise_std=0"]))
    lead = next(o for o in obs.ground_truth.objects if o.kind == "vehicle")
    box = lead.boxes_2d["front"]
    assert box.visible_fraction > 0.95
    semantic = obs.ground_truth.semantic["front"]
    inside = semantic[int(box.y0):int(box.y1), int(box.x0):int(box.x1)]
    assert np.mean(inside == palette.CAR) > 0.6
    # Around the box (a 6 px ring) there is no car: the box is tight.
    ring = semantic[int(box.y0) - 6:int(box.y1) + 6, int(box.x0) - 6:int(box.x1) + 6].copy()
    ring[6:-6, 6:-6] = 0
    assert np.sum(ring == palette.CAR) == 0
    # The box sits where the car's 3D centre projects.
    cam = obs.cameras["front"]
    p = np.linalg.inv(cam.T_ego_cam) @ np.array([*lead.center_ego, 1.0])
    u, v, w = cam.K @ p[:3]
    assert box.x0 < u / w < box.x1 and box.y0 < v / w < box.y1


def test_driving_into_a_parked_car_raises_a_collision_at_contact(stack, scenario_file):
    ego = {"start": {"road": 1, "lane": -1, "s": 20}, "goal": {"road": 1, "lane": -1, "s": 300},
           "initial_speed": 8.0}
    path = scenario_file(straight([{"type": "static", "kind": "parked_car", "pose": {"road": 1, "lane": -1, "s": 80}}], ego))
    sim = EmbeddedSimulator(stack, render=False)
    obs = sim.reset(load_scenario(path))
    p = sim.vehicle_params
    parked_rear_x = 80.0 - STATIC_SIZE["parked_car"][0] / 2
    contact_t = None
    collisions = []
    for _ in range(200):
        obs = sim.step(Control(throttle=0.3))
        front_x = sim.ego.state.x + (p.length_m - p.rear_overhang_m) * math.cos(sim.ego.state.yaw)
        if contact_t is None and front_x >= parked_rear_x:
            contact_t = obs.t
        collisions += [e for e in obs.events if e.kind == "collision"]
    assert contact_t is not None
    assert len(collisions) == 1
    assert collisions[0].t == pytest.approx(contact_t)
    assert "vehicle" in collisions[0].detail


def test_a_walker_moving_into_the_standing_ego_is_a_contact_not_a_collision(stack, scenario_file):
    """The Leaderboard does not count a collision below 0.1 m/s ego speed (REFERENCE.md); the
    simulator still reports the contact, as its own kind of event, once."""
    sim = EmbeddedSimulator(stack, render=False)
    sim.reset(load_scenario(scenario_file(straight([]))))
    x, y = sim.ego.state.x, sim.ego.state.y
    actors = [{"type": "pedestrian", "path": [{"x": x, "y": y - 6.0}, {"x": x, "y": y + 6.0}],
               "speed": 1.4, "start_t": 0.5}]
    obs = sim.reset(load_scenario(scenario_file(straight(actors))))
    events = []
    run(sim, obs, HOLD, 10.0, each=lambda s, o: events.extend(o.events))
    kinds = [e.kind for e in events]
    assert "collision" not in kinds and kinds.count("contact_at_standstill") == 1, kinds
    contact = next(e for e in events if e.kind == "contact_at_standstill")
    assert "pedestrian" in contact.detail and contact.other_id == sim.pedestrians[0].agent.id
    assert 0.5 + (6.0 - 1.0 - 0.5) / 1.4 < contact.t < 0.5 + 6.0 / 1.4  # at the ego's flank, not its centre


def test_idm_follower_keeps_its_gap_when_the_leader_brakes(stack, scenario_file):
    actors = [
        {"type": "vehicle", "start": {"road": 1, "lane": -1, "s": 90}, "speed": 10.0,
         "behaviours": [{"action": "brake", "at_t": 12.0, "decel": 6.0}]},
        {"type": "vehicle", "start": {"road": 1, "lane": -1, "s": 40}, "speed": 14.0},
    ]
    sim = EmbeddedSimulator(stack, render=False)
    obs = sim.reset(load_scenario(scenario_file(straight(actors))))
    leader, follower = sim.npcs[0].agent, sim.npcs[1].agent
    gaps, headways = [], []

    def watch(sim, obs):
        gap = (leader.x - VEHICLE_SIZE[0] / 2) - (follower.x + VEHICLE_SIZE[0] / 2)
        gaps.append(gap)
        if 10.0 <= obs.t < 12.0:
            headways.append(gap / max(follower.speed, 0.1))

    run(sim, obs, HOLD, 30.0, each=watch)
    assert min(gaps) > 1.0  # never touches
    assert 1.0 < np.mean(headways) < 2.5  # IDM's 1.5 s time headway, give or take the s0 term
    assert leader.speed == 0.0 and follower.speed < 0.05
    assert 1.0 < gaps[-1] < 4.0  # stops about s0 = 2 m behind


def test_a_pedestrian_crosses_the_road(stack, scenario_file):
    actors = [{"type": "pedestrian", "path": [{"x": 120.0, "y": -8.2}, {"x": 120.0, "y": 8.2}],
               "speed": 1.4, "start_t": 1.0}]
    sim = EmbeddedSimulator(stack, render=False)
    obs = sim.reset(load_scenario(scenario_file(straight(actors))))
    ped = sim.pedestrians[0].agent
    track = []
    run(sim, obs, HOLD, 15.0, each=lambda s, o: track.append((o.t, ped.y)))
    t, y = np.array(track).T
    assert y[0] == pytest.approx(-8.2) and y[-1] == pytest.approx(8.2)
    assert np.all(np.diff(y) >= 0)
    crossing_t = t[np.argmax(y >= 0.0)]
    assert crossing_t == pytest.approx(1.0 + 8.2 / 1.4, abs=0.1)
    on_road = [sim.road_map.on_road(120.0, yy) for yy in (-5.0, -1.0, 1.0, 5.0)]
    assert all(on_road)


def test_running_a_red_light_is_an_event(stack):
    sim = EmbeddedSimulator(stack, render=False)
    obs = sim.reset(load_scenario("red_light_junction"))
    light = sim._first_light_on_route(sim.lights)
    assert light.state(0.0) == "red"
    events = []
    run(sim, obs, Control(throttle=0.4), 11.5, each=lambda s, o: events.extend(o.events))
    red = [e for e in events if e.kind == "red_light"]
    assert len(red) == 1 and red[0].other_id == light.id


def test_crossing_light_groups_are_never_green_together(stack):
    sim = EmbeddedSimulator(stack, render=False)
    sim.reset(load_scenario("red_light_junction"))
    assert len(sim.lights) == 4
    for t in np.arange(0.0, 60.0, 0.25):
        green = {l.group for l in sim.lights if l.state(t) != "red"}
        assert len(green) <= 1
    states = {l.state(t) for l in sim.lights for t in np.arange(0.0, 60.0, 0.25)}
    assert states == {"red", "yellow", "green"}


def test_cut_in_moves_the_npc_into_the_next_lane(stack, scenario_file):
    actors = [{"type": "vehicle", "start": {"road": 1, "lane": -2, "s": 60}, "speed": 8.0,
               "behaviours": [{"action": "cut_in", "at_t": 2.0, "side": "left", "duration_s": 3.0}]}]
    sim = EmbeddedSimulator(stack, render=False)
    obs = sim.reset(load_scenario(scenario_file(straight(actors))))
    npc = sim.npcs[0].agent
    assert npc.y == pytest.approx(-5.25, abs=0.01)
    run(sim, obs, HOLD, 6.0)
    assert npc.y == pytest.approx(-1.75, abs=0.01)


@pytest.mark.parametrize("town", ["Town01", "Town02"])
def test_reference_follower_completes_a_town_route_through_junctions(stack, town):
    shared_map(town)
    scenario = load_scenario(f"{town.lower()}_route")
    sim = EmbeddedSimulator(stack, render=False)
    obs = sim.reset(scenario)
    assert len(sim.route.junction_ids) >= 3
    follower = make_follower(sim)
    events = []
    obs = run(sim, obs, follower, scenario.duration_s, each=lambda s, o: events.extend(o.events))
    kinds = [e.kind for e in events]
    assert "route_completed" in kinds
    assert "off_road" not in kinds
    assert "lane_departure" not in kinds


@pytest.mark.parametrize("name", ["curve_lane_keeping", "lead_vehicle_braking", "pedestrian_crossing",
                                  "red_light_junction", "parked_car", "town_loop", "town_traffic"])
def test_shipped_scenarios_build(stack, name):
    sim = EmbeddedSimulator(stack, render=False)
    obs = sim.reset(load_scenario(name))
    assert obs.route.s[-1] > 50.0
    assert obs.ground_truth.lane.on_road


def test_drifting_into_the_oncoming_lane_is_a_lane_departure_then_off_road(stack, scenario_file):
    ego = {"start": {"road": 1, "lane": -1, "s": 20}, "goal": {"road": 1, "lane": -1, "s": 300},
           "initial_speed": 8.0}
    sim = EmbeddedSimulator(stack, render=False)
    obs = sim.reset(load_scenario(scenario_file(straight([], ego))))
    events = []
    drift_left = Control(steer=-0.01, throttle=0.2)  # negative steer turns left
    run(sim, obs, drift_left, 12.0, each=lambda s, o: events.extend(o.events))
    kinds = [e.kind for e in events]
    assert kinds.index("lane_departure") < kinds.index("off_road")
    departure = next(e for e in events if e.kind == "lane_departure")
    crossed = next(e for e in events if e.kind == "off_road")
    assert sim.ego_agent().y > 7.0  # it ended beyond the far edge of the road
    assert departure.t < crossed.t - 1.0  # it left its lanes well before it left the road


def test_random_traffic_stops_at_a_dead_end_instead_of_failing(stack):
    sim = EmbeddedSimulator(stack, render=False)
    sim.reset(load_scenario("curve_lane_keeping", ["random_vehicles=8", "seed=10000006", "duration_s=200"]))
    run(sim, None, HOLD, 150.0)
    stuck = [n for n in sim.npcs if n.dead_end]
    assert stuck and all(n.agent.speed == 0.0 for n in stuck)
    assert all(n.path.length - n.s - n.agent.size[0] / 2 > -0.5 for n in stuck)  # stopped before the end


@pytest.mark.parametrize("town", ["Town01", "Town02"])
def test_no_tree_grows_where_it_would_hide_a_signal_head(town):
    """Trees are kept SIGNAL_CLEAR_M from every signal head, so that a head stays in sight of its
    approach; drawn without the heads, the same seed puts trees there (the clearance is real)."""
    from stagepilot.sim.render.ground import GroundRaster
    from stagepilot.sim.scenery import SIGNAL_CLEAR_M, build_scenery
    from stagepilot.sim.sensors import SURFACE_TAGS
    from stagepilot.sim.world import load_road_map

    road_map = load_road_map(str(shared_map(town)))
    polygons = [(SURFACE_TAGS.get(s.lane_type, palette.TERRAIN), s.polygon) for s in road_map.surfaces()]
    ground = GroundRaster.build(polygons, road_map.markings(), road_map.bounds, 0.25, 5)
    heads = np.array([head.position[:2] for head in road_map.signal_heads])
    assert len(heads) > 0

    def trunks_near_heads(signals_xy) -> int:
        boxes = build_scenery(ground, np.random.default_rng([5, 7]), signals_xy)
        trunks = boxes.center[(boxes.tag == palette.VEGETATION) & (boxes.size[:, 0] < 0.5), :2]
        return int((np.hypot(*(trunks[:, None] - heads[None]).transpose(2, 0, 1)).min(axis=1) <= SIGNAL_CLEAR_M).sum())

    assert trunks_near_heads(heads) == 0
    assert trunks_near_heads(()) > 0


def _left_turn_run(stack, scenario_file, oncoming: bool):
    """An NPC from the north arm of the four-way junction turns left (east) across the lane of
    one coming north from the south arm; both would reach the crossing together."""
    actors = [{"type": "vehicle", "start": {"road": 2, "lane": 1, "s": 40}, "goal": {"road": 1, "lane": -1, "s": 60},
               "speed": 8.0}]
    if oncoming:
        actors.append({"type": "vehicle", "start": {"road": 4, "lane": 1, "s": 45},
                       "goal": {"road": 2, "lane": -1, "s": 100}, "speed": 9.0})
    path = scenario_file({"name": "left_turn", "map": "junction", "seed": 1, "duration_s": 25, "speed_limit": 11.1,
                          "ego": {"start": {"road": 3, "lane": -1, "s": 20}, "goal": {"road": 3, "lane": -1, "s": 60},
                                  "initial_speed": 0.0},
                          "traffic_lights": {"enabled": False}, "actors": actors})
    sim = EmbeddedSimulator(stack, render=False)
    sim.reset(load_scenario(path))
    turner = sim.npcs[0]
    entry_s = turner.turns[0].entry_s
    front = lambda: turner.s + turner.agent.size[0] / 2  # noqa: E731
    slowest_before_entry, entered_t, gaps, collisions = math.inf, None, [], 0
    while sim.t < 16.0:
        obs = sim.step(Control(brake=1.0))
        collisions += sum(e.kind == "collision" for e in obs.events)
        if front() < entry_s:
            slowest_before_entry = min(slowest_before_entry, turner.agent.speed)
        elif entered_t is None:
            entered_t = sim.t
        if oncoming:
            other = sim.npcs[1].agent
            gaps.append(math.hypot(other.x - turner.agent.x, other.y - turner.agent.y))
    return slowest_before_entry, entered_t, min(gaps, default=math.inf), collisions


def test_an_npc_turning_left_gives_way_to_oncoming_traffic(stack, scenario_file):
    slowest, entered_t, closest, collisions = _left_turn_run(stack, scenario_file, oncoming=True)
    assert slowest < 1.0 and entered_t is not None and collisions == 0 and closest > 3.0
    free_slowest, free_entered_t, _, _ = _left_turn_run(stack, scenario_file, oncoming=False)
    assert free_slowest > 7.0 and free_entered_t < entered_t - 3.0  # alone, it turns without stopping

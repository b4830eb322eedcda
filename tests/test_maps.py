"""Behavioural checks of the project's OpenDRIVE maps in ``configs/maps``.

The maps are loaded offline with the CARLA client (``carla.Map(name, xodr)``),
which answers in CARLA's left-handed frame (y = -y_opendrive).
Rebuild the maps with ``.venv/bin/python scripts/build_maps.py``.
"""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import pytest

carla = pytest.importorskip("carla")
nx = pytest.importorskip("networkx")

REPO_ROOT = Path(__file__).resolve().parents[1]
MAP_DIR = REPO_ROOT / "configs" / "maps"
MAP_NAMES = ("straight", "curvy", "junction", "town")
STEP = 2.0


@pytest.fixture(scope="module")
def maps() -> dict[str, "carla.Map"]:
    out = {}
    for name in MAP_NAMES:
        path = MAP_DIR / f"{name}.xodr"
        assert path.exists(), f"{path} missing: run scripts/build_maps.py"
        out[name] = carla.Map(name, path.read_text())
    return out


# ---------------------------------------------------------------- helpers
def _key(wp) -> tuple[int, int, int]:
    return (wp.road_id, wp.lane_id, round(wp.s))


def _topology_graph(m) -> "nx.DiGraph":
    g = nx.DiGraph()
    for a, b in m.get_topology():
        g.add_edge(_key(a), _key(b))
    return g


def _drive(wp, distance: float, choose=lambda options: options[0]):
    """Follow ``next(STEP)``; return (waypoints visited, dead-ended?)."""
    visited = [wp]
    for _ in range(int(distance / STEP)):
        options = wp.next(STEP)
        if not options:
            return visited, True
        wp = choose(options)
        visited.append(wp)
    return visited, False


def _is_nan(wp) -> bool:
    loc = wp.transform.location
    return math.isnan(loc.x) or math.isnan(loc.y) or math.isnan(loc.z)


def _junction_road_ids(name: str) -> set[int]:
    import xml.etree.ElementTree as ET

    root = ET.parse(MAP_DIR / f"{name}.xodr").getroot()
    return {int(r.get("id")) for r in root.iter("road") if r.get("junction") != "-1"}


# ---------------------------------------------------------------- generic
@pytest.mark.parametrize("name", MAP_NAMES)
def test_waypoints_lanes_and_sidewalks(maps, name):
    m = maps[name]
    assert m.get_topology(), "empty topology"
    wps = m.generate_waypoints(STEP)
    assert len(wps) > 100
    assert not any(_is_nan(w) for w in wps)
    junction_roads = _junction_road_ids(name)
    for w in wps:
        assert w.lane_type == carla.LaneType.Driving
        assert w.lane_width == pytest.approx(3.5, abs=0.05)
        # junction flag exactly on the junction's connecting roads
        assert w.is_junction == (w.road_id in junction_roads), _key(w)
        if w.is_junction:
            continue
        # right-hand side: driving lane(s), then a sidewalk on the outer edge
        r, found = w, False
        for _ in range(4):
            r = r.get_right_lane()
            if r is None:
                break
            if r.lane_type == carla.LaneType.Sidewalk:
                found = True
                assert 2.0 <= r.lane_width <= 3.0
                break
        assert found, f"no sidewalk right of {_key(w)}"


@pytest.mark.parametrize("name", MAP_NAMES)
def test_off_road_is_none(maps, name):
    m = maps[name]
    for x, y in ((5000.0, 5000.0), (-3000.0, 200.0), (60.0, -300.0)):
        assert m.get_waypoint(carla.Location(x=x, y=y, z=0.0), project_to_road=False) is None


@pytest.mark.parametrize("name", MAP_NAMES)
def test_lanes_are_continuous(maps, name):
    """Consecutive 1 m waypoints (also across road/junction joins) are ~1 m apart."""
    m = maps[name]
    for w in m.generate_waypoints(1.0):
        for n in w.next(1.0):
            d = w.transform.location.distance(n.transform.location)
            assert 0.7 < d < 1.3, (_key(w), _key(n), d)
            dyaw = abs((n.transform.rotation.yaw - w.transform.rotation.yaw + 180.0) % 360.0 - 180.0)
            assert dyaw < 8.0, (_key(w), _key(n), dyaw)


def test_maps_are_up_to_date_and_deterministic():
    pytest.importorskip("scenariogeneration")
    spec = importlib.util.spec_from_file_location("build_maps", REPO_ROOT / "scripts" / "build_maps.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, build in mod.MAPS.items():
        first, second = build(), build()
        assert first == second, f"{name}: non-deterministic output"
        assert first == (MAP_DIR / f"{name}.xodr").read_bytes(), (
            f"configs/maps/{name}.xodr is stale: run scripts/build_maps.py"
        )


# ---------------------------------------------------------------- per map
def test_straight(maps):
    m = maps["straight"]
    for lane in (-1, -2, 1, 2):
        wp = m.get_waypoint_xodr(1, lane, 250.0)
        assert wp is not None and wp.lane_type == carla.LaneType.Driving
    start = m.get_waypoint_xodr(1, -1, 0.5)
    visited, dead = _drive(start, 600.0)
    assert dead
    assert len(visited) * STEP >= 495.0
    end = visited[-1].transform.location
    assert end.x == pytest.approx(500.0, abs=2.5) and end.y == pytest.approx(1.75, abs=0.01)
    # right-hand traffic: lane -1 heads east (+x), lane 1 heads west
    assert abs(start.transform.rotation.yaw) < 1.0
    assert abs(abs(m.get_waypoint_xodr(1, 1, 250.0).transform.rotation.yaw) - 180.0) < 1.0


def test_curvy_curvature(maps):
    m = maps["curvy"]
    wp = m.get_waypoint_xodr(1, -1, 0.5)
    visited, dead = _drive(wp, 2000.0, choose=lambda o: o[0])
    length = len(visited) * STEP
    assert 800.0 <= length <= 1000.0
    # curvature of the lane centre from heading changes over 2 m
    yaws = [math.radians(w.transform.rotation.yaw) for w in visited]
    kappa = [
        math.atan2(math.sin(b - a), math.cos(b - a)) / STEP for a, b in zip(yaws, yaws[1:])
    ]
    assert max(abs(k) for k in kappa) <= 1.0 / 80.0 * 1.1  # lane offset 1.75 m
    assert max(abs(k) for k in kappa) >= 1.0 / 100.0  # it is actually curvy
    # both directions of curve
    assert min(kappa) < -1.0 / 220.0 and max(kappa) > 1.0 / 220.0
    # continuous curvature (clothoids): no jumps between samples
    assert max(abs(b - a) for a, b in zip(kappa, kappa[1:])) < 0.002
    # straight bits exist
    assert sum(1 for k in kappa if abs(k) < 1e-4) * STEP > 100.0


def test_junction_connectivity(maps):
    m = maps["junction"]
    g = _topology_graph(m)
    arms = (1, 2, 3, 4)
    for arm in arms:
        reachable = set()
        for lane in (1, 2):  # lanes driving into the junction
            src = (arm, lane, 120)
            assert src in g, src
            lane_reach = {n[0] for n in nx.descendants(g, src) if n[0] in arms and n[1] < 0}
            # inner lane: straight + left, outer lane: straight + right
            assert len(lane_reach) == 2 and arm not in lane_reach, (src, lane_reach)
            reachable |= lane_reach
        assert reachable == set(arms) - {arm}, (arm, reachable)
    # every junction waypoint belongs to junction 100
    for w in m.generate_waypoints(STEP):
        if w.is_junction:
            assert w.get_junction().id == 100
    # one traffic light per approach
    lights = m.get_all_landmarks_of_type("1000001")
    assert sorted(l.road_id for l in lights) == [1, 2, 3, 4]


@pytest.mark.parametrize("arm", [1, 2, 3, 4])
@pytest.mark.parametrize("lane", [1, 2])
def test_junction_drive_through(maps, arm, lane):
    m = maps["junction"]
    start = m.get_waypoint_xodr(arm, lane, 115.0)
    visited, dead = _drive(start, 600.0)
    assert dead  # arms end ~120 m after the junction
    assert any(w.is_junction for w in visited)
    end = visited[-1]
    assert end.road_id in (1, 2, 3, 4) and end.road_id != arm and end.lane_id < 0
    assert len(visited) * STEP >= 2 * 110.0


def test_town_loop(maps):
    m = maps["town"]
    g = _topology_graph(m)
    assert nx.is_strongly_connected(g)
    junction_ids = set()
    for w in m.generate_waypoints(STEP):
        if w.is_junction:
            junction_ids.add(w.get_junction().id)
    assert junction_ids == {100, 200}
    # 500 m always taking the first successor, from many starts
    starts = [w for w in m.generate_waypoints(STEP)][::37]
    for start in starts:
        visited, dead = _drive(start, 500.0)
        assert not dead, _key(start)
    # suggested ego start (README): goes round the loop through both junctions
    visited, dead = _drive(m.get_waypoint_xodr(1, -1, 10.0), 1000.0)
    assert not dead
    assert {w.get_junction().id for w in visited if w.is_junction} == {100, 200}
    # random turns never dead-end either
    rng = random.Random(0)
    visited, dead = _drive(m.get_waypoint_xodr(2, -1, 10.0), 2000.0, choose=rng.choice)
    assert not dead

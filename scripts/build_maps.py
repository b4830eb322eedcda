#!/usr/bin/env python3
"""Build the project's OpenDRIVE maps into ``configs/maps/``.

Run from the repository root::

    .venv/bin/python scripts/build_maps.py            # write all maps
    .venv/bin/python scripts/build_maps.py --check    # rebuild in memory, fail if files differ

The maps are generated with ``scenariogeneration.xodr`` and are fully
deterministic: the only non-deterministic field the library writes (the header
``date``) is replaced by a fixed string, so every run produces the same bytes.

Conventions shared by all maps (see ``configs/maps/README.md``):

* OpenDRIVE 1.5 frame (x east, y north, heading counter-clockwise from east).
* Right-hand traffic: lanes with negative ids drive along the road's s
  direction, lanes with positive ids drive against it.
* Driving lanes are 3.5 m wide; every ordinary (non-junction) road has a
  ``sidewalk`` lane on both outer edges.  Junction connecting roads carry a
  single driving lane and no markings.
* Markings: yellow centre line (solid, or broken in the town), broken white
  between lanes of the same direction, solid white edge line between the
  outermost driving lane and the sidewalk.
"""

from __future__ import annotations

import argparse
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

from scenariogeneration import xodr
from scenariogeneration.helpers import prettify

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "configs" / "maps"

FIXED_DATE = "2024-01-01T00:00:00"
REV_MAJOR, REV_MINOR = "1", "5"

LANE_WIDTH = 3.5
SIDEWALK_WIDTH = 2.5
MARK_WIDTH = 0.15


# ---------------------------------------------------------------- lane / road helpers
def _mark(kind: str, color: xodr.RoadMarkColor = xodr.RoadMarkColor.white) -> xodr.RoadMark:
    """Road mark; ``laneChange`` is set explicitly because CARLA derives
    ``Waypoint.lane_change`` from it (it defaults to "both")."""
    if kind == "none":
        return xodr.RoadMark(xodr.RoadMarkType.none, laneChange=xodr.LaneChange.none)
    if kind == "solid":
        return xodr.RoadMark(
            xodr.RoadMarkType.solid, MARK_WIDTH, color=color, laneChange=xodr.LaneChange.none
        )
    if kind == "broken":
        rm = xodr.RoadMark(
            xodr.RoadMarkType.broken, MARK_WIDTH, color=color, laneChange=xodr.LaneChange.both
        )
        rm.add_specific_road_line(xodr.RoadLine(MARK_WIDTH, 3, 9, 0, 0))
        return rm
    raise ValueError(kind)


def _side_lanes(n_driving: int) -> list[xodr.Lane]:
    """Driving lanes (inner first) plus the sidewalk on the outer edge."""
    lanes = []
    for i in range(n_driving):
        lane = xodr.Lane(xodr.LaneType.driving, a=LANE_WIDTH)
        # roadMark of a lane sits on its OUTER border
        lane.add_roadmark(_mark("solid" if i == n_driving - 1 else "broken"))
        lanes.append(lane)
    sidewalk = xodr.Lane(xodr.LaneType.sidewalk, a=SIDEWALK_WIDTH)
    sidewalk.add_roadmark(_mark("none"))
    lanes.append(sidewalk)
    return lanes


def make_lanes(n_per_dir: int, center: str = "solid") -> xodr.Lanes:
    center_lane = xodr.Lane(xodr.LaneType.none)
    center_lane.add_roadmark(_mark(center, xodr.RoadMarkColor.yellow))
    section = xodr.LaneSection(0, center_lane)
    for lane in _side_lanes(n_per_dir):
        section.add_left_lane(lane)
    for lane in _side_lanes(n_per_dir):
        section.add_right_lane(lane)
    lanes = xodr.Lanes()
    lanes.add_lanesection(section)
    return lanes


def make_road(
    road_id: int,
    geometries: list,
    start: tuple[float, float, float],
    n_per_dir: int,
    center: str = "solid",
    name: str | None = None,
    speed_mps: float | None = None,
) -> xodr.Road:
    pv = xodr.PlanView(*start)
    for g in geometries:
        pv.add_geometry(g)
    road = xodr.Road(road_id, pv, make_lanes(n_per_dir, center), name=name)
    if speed_mps is not None:
        road.add_type(xodr.RoadType.town, 0, speed=speed_mps, speed_unit="m/s")
    return road


def curve(radius: float, angle_deg: float, spiral_len: float, left: bool) -> list:
    """Clothoid - arc - clothoid with continuous curvature (turn ``angle_deg``)."""
    k = (1.0 if left else -1.0) / radius
    total = math.radians(angle_deg)
    arc_angle = total - spiral_len / radius  # each clothoid turns L/(2R)
    if arc_angle <= 0:
        raise ValueError("spirals too long for this curve")
    return [
        xodr.Spiral(0.0, k, length=spiral_len),
        xodr.Arc(k, length=arc_angle * radius),
        xodr.Spiral(k, 0.0, length=spiral_len),
    ]


def _wrap(a: float) -> float:
    return round(math.atan2(math.sin(a), math.cos(a)), 12) + 0.0


def _clean_curv(k: float) -> float:
    return 0.0 if abs(k) < 1e-7 else k


def _strip_connecting_roads(roads: list[xodr.Road]) -> None:
    """Post-process the junction creator's connecting roads.

    * The G2 clothoid fit (pyclothoids) returns constant-curvature "spirals"
      (curvStart == curvEnd) and 1e-9 placeholder curvatures; CARLA's spiral
      evaluation yields NaN positions for those, so they become arcs / lines.
    * No markings inside the junction (the creator adds solid lines).
    """
    for road in roads:
        geoms = road.planview._raw_geometries
        for i, g in enumerate(geoms):
            if isinstance(g, xodr.Spiral):
                k0, k1 = _clean_curv(g.curvstart), _clean_curv(g.curvend)
                if abs(k1 - k0) < 1e-9:
                    geoms[i] = xodr.Line(g.length) if k0 == 0.0 else xodr.Arc(k0, length=g.length)
                else:
                    geoms[i] = xodr.Spiral(k0, k1, length=g.length)
        for section in road.lanes.lanesections:
            section.centerlane.lane_type = xodr.LaneType.none
            section.centerlane.roadmark = [_mark("none")]
            for lane in section.leftlanes + section.rightlanes:
                lane.roadmark = [_mark("none")]


def _add_all_movements(jc: xodr.CommonJunctionCreator, arms: list[tuple[int, bool]], n_per_dir: int) -> None:
    """Connect every arm to every other arm, lane by lane.

    ``arms`` is a list of (road_id, road_starts_at_junction); each road must
    already be registered with ``jc`` (cartesian geometry).  For each ordered
    pair of arms one connecting road is created per lane pair:

    * straight: lane i -> lane i for every lane,
    * left turn: innermost lane -> innermost lane,
    * right turn: outermost lane -> outermost lane.
    """
    for rid_in, in_starts in arms:
        for rid_out, out_starts in arms:
            if rid_in == rid_out:
                continue
            # sign of the lanes entering the junction on the incoming road and
            # leaving it on the outgoing road (right-hand traffic)
            s_in = 1 if in_starts else -1
            s_out = -1 if out_starts else 1
            movement = _movement(jc, rid_in, rid_out)
            if movement == "straight":
                pairs = [(k, k) for k in range(1, n_per_dir + 1)]
            elif movement == "left":
                pairs = [(1, 1)]
            else:
                pairs = [(n_per_dir, n_per_dir)]
            for a, b in pairs:
                jc.add_connection(rid_in, rid_out, s_in * a, s_out * b)


def _movement(jc: xodr.CommonJunctionCreator, rid_in: int, rid_out: int) -> str:
    """straight / left / right from the arms' headings (CCW positive)."""
    h_in = jc._h[jc._get_list_index(rid_in)]  # heading pointing into the junction
    h_out = jc._h[jc._get_list_index(rid_out)] + math.pi  # heading leaving it
    d = math.atan2(math.sin(h_out - h_in), math.cos(h_out - h_in))
    if abs(d) < math.radians(30):
        return "straight"
    return "left" if d > 0 else "right"


def _reset_signal_ids() -> None:
    """scenariogeneration keeps a process-wide registry of signal/object ids;
    clear it so that building a map twice in one process gives equal output."""
    xodr.Signal._usedIDs.clear()
    xodr.Signal._IDCounter.clear()


def _finish(odr: xodr.OpenDrive) -> bytes:
    odr.adjust_roads_and_lanes()
    element = odr.get_element()
    header = element.find("header")
    header.set("date", FIXED_DATE)
    # A local transverse-Mercator origin; without one carla warns on every parse.
    geo = header.find("geoReference")
    if geo is None:
        geo = ET.SubElement(header, "geoReference")
    geo.text = "+proj=tmerc +lat_0=0 +lon_0=0 +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
    return prettify(element, encoding="utf-8")


# ---------------------------------------------------------------- maps
def build_straight() -> bytes:
    odr = xodr.OpenDrive("straight", REV_MAJOR, REV_MINOR)
    road = make_road(1, [xodr.Line(500.0)], (0.0, 0.0, 0.0), 2, name="straight", speed_mps=25.0)
    odr.add_road(road)
    return _finish(odr)


CURVY_LAYOUT = [
    # ("line", length) | ("curve", radius, turn angle in deg, left?)
    ("line", 60.0),
    ("curve", 120.0, 40.0, True),
    ("line", 40.0),
    ("curve", 180.0, 35.0, False),
    ("line", 30.0),
    ("curve", 90.0, 50.0, True),
    ("line", 40.0),
    ("curve", 150.0, 40.0, False),
    ("line", 30.0),
    ("curve", 200.0, 30.0, True),
    ("line", 60.0),
]
CURVY_SPIRAL = 30.0


def curvy_geometries() -> list:
    geoms = []
    for item in CURVY_LAYOUT:
        if item[0] == "line":
            geoms.append(xodr.Line(item[1]))
        else:
            geoms.extend(curve(item[1], item[2], CURVY_SPIRAL, item[3]))
    return geoms


def build_curvy() -> bytes:
    odr = xodr.OpenDrive("curvy", REV_MAJOR, REV_MINOR)
    road = make_road(1, curvy_geometries(), (0.0, 0.0, 0.0), 1, name="curvy", speed_mps=20.0)
    odr.add_road(road)
    return _finish(odr)


JUNCTION_ARM = 120.0
JUNCTION_RADIUS = 20.0  # distance from junction centre to the arm start


def build_junction() -> bytes:
    _reset_signal_ids()
    odr = xodr.OpenDrive("junction", REV_MAJOR, REV_MINOR)
    jid = 100
    jc = xodr.CommonJunctionCreator(jid, "junction100", startnum=101)
    # arms start at the junction and point outwards; ids 1..4 = E, N, W, S
    arms = []
    for rid, ang in ((1, 0.0), (2, 90.0), (3, 180.0), (4, -90.0)):
        h = math.radians(ang)
        x0 = round(JUNCTION_RADIUS * math.cos(h), 9) + 0.0
        y0 = round(JUNCTION_RADIUS * math.sin(h), 9) + 0.0
        name = {1: "east_arm", 2: "north_arm", 3: "west_arm", 4: "south_arm"}[rid]
        road = make_road(rid, [xodr.Line(JUNCTION_ARM)], (x0, y0, h), 2, name=name, speed_mps=13.9)
        # traffic light for the approach (left lanes drive towards s=0)
        light = xodr.Signal(
            s=1.0, t=2 * LANE_WIDTH + 0.5, country="OpenDRIVE", Type="1000001", subtype="-1",
            id=str(1000 + rid), name=f"tl_{name}", dynamic=xodr.Dynamic.yes, zOffset=3.0,
            orientation=xodr.Orientation.negative, height=1.0, width=0.5,
        )
        light.add_validity(1, 2)
        road.add_signal(light)
        odr.add_road(road)
        jc.add_incoming_road_cartesian_geometry(road, x0, y0, _wrap(h + math.pi), "predecessor")
        arms.append((rid, True))
    _add_all_movements(jc, arms, 2)
    _strip_connecting_roads(jc.get_connecting_roads())
    odr.add_junction_creator(jc)
    return _finish(odr)


TOWN_W = 250.0  # x extent of the loop centre line
TOWN_H = 180.0  # y extent
TOWN_MID_X = 125.0  # x of the north-south middle street
TOWN_JR = 15.0  # distance from a junction centre to the arm ends
TOWN_CORNER_R = 35.0
TOWN_CORNER_SPIRAL = 20.0


def _corner_setback() -> float:
    """Distance from a 90 deg corner's vertex to where the curve starts."""
    pv = xodr.PlanView(0.0, 0.0, 0.0)
    for g in curve(TOWN_CORNER_R, 90.0, TOWN_CORNER_SPIRAL, True):
        pv.add_geometry(g)
    pv.adjust_geometries()
    x, y = pv.x_end, pv.y_end
    # symmetric corner: end point is (d, d) when starting at (0, 0) heading 0
    assert abs(x - y) < 1e-6, (x, y)
    return x


def build_town() -> bytes:
    odr = xodr.OpenDrive("town", REV_MAJOR, REV_MINOR)
    d = _corner_setback()
    side_x = TOWN_MID_X - TOWN_JR - d  # straight from junction arm to corner
    assert side_x > 10
    side_y = TOWN_H - 2 * d
    # road 1: west loop, from junction 100 (south) to junction 200 (north),
    # clockwise: west along y=0, north along x=0, east along y=H
    west = [xodr.Line(side_x)] + curve(TOWN_CORNER_R, 90, TOWN_CORNER_SPIRAL, False)
    west += [xodr.Line(side_y)] + curve(TOWN_CORNER_R, 90, TOWN_CORNER_SPIRAL, False)
    west += [xodr.Line(side_x)]
    # road 2: east loop, from junction 100 to junction 200, counter-clockwise
    east = [xodr.Line(TOWN_W - TOWN_MID_X - TOWN_JR - d)]
    east += curve(TOWN_CORNER_R, 90, TOWN_CORNER_SPIRAL, True)
    east += [xodr.Line(side_y)] + curve(TOWN_CORNER_R, 90, TOWN_CORNER_SPIRAL, True)
    east += [xodr.Line(TOWN_W - TOWN_MID_X - TOWN_JR - d)]
    r1 = make_road(1, west, (TOWN_MID_X - TOWN_JR, 0.0, math.pi), 1, "broken", "west_loop", 11.1)
    r2 = make_road(2, east, (TOWN_MID_X + TOWN_JR, 0.0, 0.0), 1, "broken", "east_loop", 11.1)
    r3 = make_road(
        3, [xodr.Line(TOWN_H - 2 * TOWN_JR)], (TOWN_MID_X, TOWN_JR, math.pi / 2), 1, "broken",
        "middle_street", 11.1,
    )
    for r in (r1, r2, r3):
        odr.add_road(r)

    # junction 100 (south, at (MID_X, 0)): every road starts here
    j1 = xodr.CommonJunctionCreator(100, "junction100", startnum=101)
    j1.add_incoming_road_cartesian_geometry(r2, TOWN_MID_X + TOWN_JR, 0.0, math.pi, "predecessor")
    j1.add_incoming_road_cartesian_geometry(r3, TOWN_MID_X, TOWN_JR, -math.pi / 2, "predecessor")
    j1.add_incoming_road_cartesian_geometry(r1, TOWN_MID_X - TOWN_JR, 0.0, 0.0, "predecessor")
    _add_all_movements(j1, [(2, True), (3, True), (1, True)], 1)
    # junction 200 (north, at (MID_X, H)): every road ends here
    j2 = xodr.CommonJunctionCreator(200, "junction200", startnum=201)
    j2.add_incoming_road_cartesian_geometry(r2, TOWN_MID_X + TOWN_JR, TOWN_H, math.pi, "successor")
    j2.add_incoming_road_cartesian_geometry(r1, TOWN_MID_X - TOWN_JR, TOWN_H, 0.0, "successor")
    j2.add_incoming_road_cartesian_geometry(r3, TOWN_MID_X, TOWN_H - TOWN_JR, math.pi / 2, "successor")
    _add_all_movements(j2, [(2, False), (1, False), (3, False)], 1)
    for jc in (j1, j2):
        _strip_connecting_roads(jc.get_connecting_roads())
        odr.add_junction_creator(jc)
    return _finish(odr)


MAPS: dict[str, Callable[[], bytes]] = {
    "straight": build_straight,
    "curvy": build_curvy,
    "junction": build_junction,
    "town": build_town,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--check", action="store_true", help="only verify files are up to date")
    ap.add_argument("maps", nargs="*", help=f"subset of {', '.join(MAPS)} (default: all)")
    args = ap.parse_args(argv)
    names = args.maps or list(MAPS)
    unknown = [n for n in names if n not in MAPS]
    if unknown:
        ap.error(f"unknown map(s): {', '.join(unknown)}")
    stale = []
    for name in names:
        data = MAPS[name]()
        path = args.out / f"{name}.xodr"
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}"
              f" ({len(data)} bytes)")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

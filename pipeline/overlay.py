"""The run video's frame: the main camera with segmentation, planned path, lane boundaries and
detections overlaid, the rig's other cameras along the bottom (left to right as they look, with
their detections), a bird's-eye inset and the frame's state as text."""

from __future__ import annotations

import math

import cv2
import numpy as np

from stagepilot.core.messages import EgoState, Event, Observation, Perception, Plan
from stagepilot.perception.geometry import project_to_image, world_to_ego
from stagepilot.pipeline.records import FrameRecord
from stagepilot.sim.bev import BevDrawer
from stagepilot.sim.render.palette import colorize
from stagepilot.sim.traffic import Agent
from stagepilot.sim.video import BOX_BGR


VIDEO_SIZE = (1280, 720)  # [px] width, height
INSET_SIZE = (420, 300)  # [px] bird's-eye inset
INSET_M_PER_PX = 0.2  # [m/px]: 41 m ahead of the ego, 84 m across
THUMB_WIDTH = 400  # [px] width of each other rig camera's view along the bottom
SEGMENTATION_ALPHA = 0.35
PLAN_BGR = (255, 255, 0)
LANE_BGR = (0, 215, 255)  # lane boundaries found by perception (amber)
MISS_BGR = (60, 60, 255)
EVENT_BGR = (0, 220, 255)
TEXT_BGR = (240, 240, 240)
FONT = cv2.FONT_HERSHEY_SIMPLEX

def footprint_ego(position: tuple[float, float], yaw: float, length: float, width: float) -> np.ndarray:
    """(4, 3) ground corners of a box in the ego frame [m]."""
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[length, width], [length, -width], [-length, -width], [-length, width]]) / 2
    xy = local @ np.array([[c, s], [-s, c]]) + position
    return np.hstack([xy, np.zeros((4, 1))])


def _world_objects(obs: Observation, record: FrameRecord) -> tuple[list[Agent], list[tuple]]:
    """Road users as world-frame Agents and (xy, state) lights at the frame's time: ground
    truth when the observation has it, else the perceived detections."""
    truth = obs.ground_truth
    if truth is not None:
        agents = [Agent(o.id, o.kind, o.center_world[0], o.center_world[1], o.yaw_world, 0.0, o.extent, (0, 0, 0))
                  for o in truth.objects if o.kind != "traffic_light"]
        lights = [(light.position[:2], light.state) for light in truth.traffic_lights]
        return agents, lights
    if record.perception is None:
        return [], []
    ego = record.ego
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    agents = [Agent(d.track_id, d.kind, ego.x + c * d.position[0] - s * d.position[1],
                    ego.y + s * d.position[0] + c * d.position[1], ego.yaw + d.yaw, 0.0, d.extent, (0, 0, 0))
              for d in record.perception.detections if d.kind != "traffic_light"]
    return agents, []


def _text(img: np.ndarray, line: str, org: tuple[int, int], color=TEXT_BGR, scale: float = 0.55) -> None:
    # A shadow one pixel off, not a thick outline: OpenCV 5 draws thick text wider, not bolder.
    cv2.putText(img, line, (org[0] + 1, org[1] + 1), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, line, org, FONT, scale, color, 1, cv2.LINE_AA)


class FrameDrawer:
    """One video frame: the camera with segmentation, planned path and detections overlaid,
    a bird's-eye inset (top right) and the frame's state as text (top left)."""

    def __init__(self, sim, camera: str | None, vehicle):
        self.camera = camera  # the main camera; the others in the observation are drawn small
        self.vehicle = vehicle  # VehicleConfig: length_m, width_m, rear_overhang_m
        ground = getattr(getattr(sim, "sensors", None), "ground", None)
        self.bev = BevDrawer(ground, sim.route.path.points, size=INSET_SIZE) if ground is not None else None
        self.recent_events: list[Event] = []

    def draw(self, obs: Observation, record: FrameRecord, events: list[Event]) -> np.ndarray:
        frame = np.zeros((VIDEO_SIZE[1], VIDEO_SIZE[0], 3), np.uint8)
        image = obs.cameras.get(self.camera) if self.camera else None
        seg_source = ""
        if image is not None:
            scale, offset, seg_source = self._camera(frame, image, obs, record.perception)
            if record.plan is not None:
                self._plan(frame, record.plan, record.ego, image, scale, offset)
            if record.perception is not None:
                self._road(frame, record.perception, image, scale, offset)
                self._detections(frame, record.perception, image, scale, offset)
        self._other_views(frame, obs, record.perception)
        if self.bev is not None:
            self._inset(frame, obs, record)
        self.recent_events = [e for e in self.recent_events + events if record.t - e.t < 3.0][-3:]
        self._state(frame, obs, record, seg_source)
        return frame

    def _camera(self, frame, image, obs, perception) -> tuple[float, np.ndarray, str]:
        h, w = image.rgb.shape[:2]
        scale = min(VIDEO_SIZE[0] / w, VIDEO_SIZE[1] / h)
        size = (round(w * scale), round(h * scale))
        offset = np.array([(VIDEO_SIZE[0] - size[0]) // 2, (VIDEO_SIZE[1] - size[1]) // 2])
        bgr = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR)
        semantic, source = perception.semantic if perception is not None else None, "perception"
        if semantic is None and obs.ground_truth is not None:
            semantic, source = obs.ground_truth.semantic.get(self.camera), "ground truth"
        if semantic is not None:
            seg_bgr = cv2.cvtColor(colorize(semantic), cv2.COLOR_RGB2BGR)
            bgr = cv2.addWeighted(bgr, 1 - SEGMENTATION_ALPHA, seg_bgr, SEGMENTATION_ALPHA, 0)
        else:
            source = ""
        frame[offset[1]:offset[1] + size[1], offset[0]:offset[0] + size[0]] = cv2.resize(
            bgr, size, interpolation=cv2.INTER_LINEAR)
        return scale, offset, source

    def _plan(self, frame, plan: Plan, ego: EgoState, image, scale: float, offset: np.ndarray) -> None:
        """The planned path as a ribbon of the car's width on the ground."""
        centre = world_to_ego(np.stack([plan.x, plan.y], 1), ego)
        yaw = np.asarray(plan.yaw, float) - ego.yaw
        normal = np.stack([-np.sin(yaw), np.cos(yaw)], 1) * self.vehicle.width_m / 2
        edges = []
        for side in (1.0, -1.0):
            points = np.hstack([centre + side * normal, np.zeros((len(centre), 1))])
            edges.append(project_to_image(points, image.K, image.T_ego_cam))
        keep = edges[0][1] & edges[1][1]
        if keep.sum() < 2:
            return
        left, right = (np.rint(e[0][keep] * scale + offset).astype(np.int32) for e in edges)
        overlay = frame.copy()
        cv2.fillPoly(overlay, [np.vstack([left, right[::-1]])], PLAN_BGR, cv2.LINE_AA)
        cv2.addWeighted(overlay, 0.3, frame, 0.7, 0, dst=frame)
        cv2.polylines(frame, [left, right], False, PLAN_BGR, 2, cv2.LINE_AA)

    def _road(self, frame, perception: Perception, image, scale: float, offset: np.ndarray) -> None:
        """The lane boundaries perception found, drawn back on the ground in the image."""
        road = perception.road
        if road is None:
            return
        for boundary in (road.left_boundary, road.right_boundary):
            if boundary is None or len(boundary) < 2:
                continue
            points = np.hstack([boundary, np.zeros((len(boundary), 1))])
            uv, in_front = project_to_image(points, image.K, image.T_ego_cam)
            if in_front.sum() < 2:
                continue
            px = np.rint(uv[in_front] * scale + offset).astype(np.int32)
            cv2.polylines(frame, [px], False, LANE_BGR, 3, cv2.LINE_AA)

    def _other_views(self, frame, obs: Observation, perception: Perception | None) -> None:
        """The rig's other cameras along the bottom, ordered from the leftmost view to the
        rightmost, each with the boxes it saw this frame."""
        others = [img for name, img in (obs.cameras or {}).items() if name != self.camera and img is not None]
        others.sort(key=lambda img: -math.atan2(img.T_ego_cam[1, 2], img.T_ego_cam[0, 2]))  # optical axis bearing
        if not others:
            return
        gap = (VIDEO_SIZE[0] - len(others) * THUMB_WIDTH) // (len(others) + 1)
        for i, image in enumerate(others):
            h, w = image.rgb.shape[:2]
            scale = THUMB_WIDTH / w
            size = (THUMB_WIDTH, round(h * scale))
            offset = np.array([gap + i * (THUMB_WIDTH + gap), VIDEO_SIZE[1] - size[1] - 10])
            bgr = cv2.resize(cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_AREA)
            frame[offset[1]:offset[1] + size[1], offset[0]:offset[0] + size[0]] = bgr
            if perception is not None:
                self._detections(frame, perception, image, scale, offset, boxes_only=True)
            cv2.rectangle(frame, tuple(offset - 1), tuple(offset + size), (255, 255, 255), 1)
            _text(frame, image.name, (int(offset[0]) + 6, int(offset[1]) + 18), TEXT_BGR, 0.5)

    def _detections(self, frame, perception: Perception, image, scale: float, offset: np.ndarray,
                    boxes_only: bool = False) -> None:
        """Each detection's box where this image holds it; else (the main view) its footprint."""
        for det in perception.detections:
            color = BOX_BGR.get(det.kind, (255, 255, 255))
            label = f"{det.kind} {det.track_id}"
            mine = det.box_2d is not None and det.camera in (image.name, "")
            if boxes_only and not mine:
                continue
            if mine:
                x0, y0, x1, y1 = (np.array(det.box_2d).reshape(2, 2) * scale + offset).ravel()
                cv2.rectangle(frame, (int(x0), int(y0)), (int(x1), int(y1)), color, 2, cv2.LINE_AA)
                anchor = (int(x0), int(y0) - 4)
            else:
                corners = footprint_ego(det.position, det.yaw, det.extent[0], det.extent[1])
                uv, in_front = project_to_image(corners, image.K, image.T_ego_cam)
                if not in_front.all():
                    continue
                px = np.rint(uv * scale + offset).astype(np.int32)
                cv2.polylines(frame, [px], True, color, 2, cv2.LINE_AA)
                anchor = (int(px[:, 0].min()), int(px[:, 1].min()) - 4)
            _text(frame, label, anchor, color, 0.45)

    def _inset(self, frame, obs: Observation, record: FrameRecord) -> None:
        """Drawn from the frame's own ground truth (or detections), not the simulator's live
        state, which a pipelined runtime has already stepped past this frame."""
        ego = record.ego
        c, s = math.cos(ego.yaw), math.sin(ego.yaw)
        ahead = self.vehicle.length_m / 2 - self.vehicle.rear_overhang_m  # rear axle -> body centre
        ego_agent = Agent(0, "vehicle", ego.x + ahead * c, ego.y + ahead * s, ego.yaw, ego.speed,
                          (self.vehicle.length_m, self.vehicle.width_m, 1.5), (0, 0, 0))
        agents, lights = _world_objects(obs, record)
        view = self.bev.local_view(ego_agent, agents, lights, meters_per_px=INSET_M_PER_PX, plan=record.plan)
        x0, y0 = VIDEO_SIZE[0] - INSET_SIZE[0] - 10, 10
        frame[y0:y0 + INSET_SIZE[1], x0:x0 + INSET_SIZE[0]] = view
        cv2.rectangle(frame, (x0 - 1, y0 - 1), (x0 + INSET_SIZE[0], y0 + INSET_SIZE[1]), (255, 255, 255), 1)

    def _state(self, frame, obs: Observation, record: FrameRecord, seg_source: str) -> None:
        plan = record.plan
        stages = "  ".join(f"{name} {ms:.1f}" for name, ms in record.stage_ms.items())
        lines = [
            (f"t {record.t:6.2f} s   frame {record.frame}   speed {record.ego.speed:5.2f} m/s   "
             + f"limit {obs.route.speed_limit:.1f} m/s", TEXT_BGR),
            (f"plan: {plan.reason}" if plan is not None else "plan: none", TEXT_BGR),
            (f"ms: {stages}   sensor to actuator {record.sensor_to_actuator_s * 1e3:.0f}", TEXT_BGR),
            *[(f"MISS {line}", MISS_BGR) for line in record.misses[:3]],
            *([(f"FAIL-SAFE: {record.failsafe}", MISS_BGR)] if record.failsafe else []),
            *[(f"{e.t:6.2f} s {e.kind}: {e.detail}", EVENT_BGR) for e in self.recent_events],
            *([(f"segmentation: {seg_source}", (200, 200, 200))] if seg_source else []),
            *([(f"light ahead: {record.perception.traffic_light.state}", (200, 200, 200))]
              if record.perception is not None and record.perception.traffic_light is not None else []),
        ]
        width = VIDEO_SIZE[0] - INSET_SIZE[0] - 40
        shade = frame[8:16 + 22 * len(lines), 8:8 + width]
        shade[:] = (shade * 0.45).astype(np.uint8)
        for i, (line, color) in enumerate(lines):
            _text(frame, line[:95], (16, 28 + 22 * i), color)

"""A perception dataset on disk: camera images, semantic masks, optional depth, COCO boxes.

Layout under the dataset root:

    images/<split>/<image id>.jpg|png    (H, W, 3) RGB camera frame
    semantic/<split>/<image id>.png      (H, W) uint8 CARLA semantic tag ids
    depth/<split>/<image id>.png         (H, W) uint16 camera-frame z [cm], 65535 = 655.35 m or more (sky)
    annotations/<split>.json             COCO detection file

Boxes come from the simulator's occlusion-aware `ObjectTruth.boxes_2d`. A traffic light's
instance box spans pole and housing; its COCO box is the housing alone (projected, clipped
to the visible box), so a model can read the lamp state from it; `attributes` carries the
state and whether the lamps face the camera (from behind, the state cannot be seen).
Only this module knows the file layout; it reads `Observation`s and never the simulator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stagepilot.core.messages import CameraImage, ObjectTruth, Observation

TAG_TRAFFIC_LIGHT = 7  # CARLA semantic tags (sim/render/palette.py)
CATEGORIES = (  # COCO category id, name, the object kind it comes from, CARLA tag of its pixels
    {"id": 1, "name": "vehicle", "kind": "vehicle", "carla_tag": 14},
    {"id": 2, "name": "pedestrian", "kind": "pedestrian", "carla_tag": 12},
    {"id": 3, "name": "traffic_light", "kind": "traffic_light", "carla_tag": TAG_TRAFFIC_LIGHT},
    {"id": 4, "name": "static_obstacle", "kind": "static", "carla_tag": 20},
)
CATEGORY_OF_KIND = {c["kind"]: c["id"] for c in CATEGORIES}
MIN_VISIBLE_FRACTION = 0.25
MIN_BOX_PX = 4  # boxes narrower or lower than this are left out
MIN_HOUSING_FILL = 0.3  # share of a light's housing box that must show traffic-light pixels
FACING_COS = 0.3  # lamps count as seen within about 72 deg of the housing's axis
DEPTH_MAX_CM = 65535
JPEG_QUALITY = 95


def coco_categories() -> list[dict[str, Any]]:
    return [{"id": c["id"], "name": c["name"], "supercategory": "road", "carla_tag": c["carla_tag"]}
            for c in CATEGORIES]


def camera_record(name: str, width: int, height: int, K: np.ndarray, T_ego_cam: np.ndarray,  # noqa: N803
                  outline_margin_px: float) -> dict[str, Any]:
    """A camera's calibration as plain lists: K (3, 3) intrinsics, T_ego_cam (4, 4) its pose in
    the ego frame (camera frame OpenCV: x right, y down, z forward), and how far its silhouettes
    reach past an object's outline (core/messages.py CameraImage)."""
    return {"name": name, "width": int(width), "height": int(height),
            "K": np.round(K, 6).tolist(), "T_ego_cam": np.round(T_ego_cam, 6).tolist(),
            "outline_margin_px": float(outline_margin_px)}


def _encode(image: np.ndarray, suffix: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix == ".jpg" else []
    ok, buffer = cv2.imencode(suffix, image, params)
    if not ok:
        raise OSError(f"could not encode a {suffix} image")
    return buffer.tobytes()


def write_frame(root: Path, split: str, image_id: int, obs: Observation, camera: str,
                image_format: str = "jpg", depth: bool = False) -> dict[str, Any]:
    """Write one frame's files under `root`; returns its COCO image record (paths relative to root)."""
    cam = obs.cameras[camera]
    image = cam.rgb
    truth = obs.ground_truth
    stem = f"{image_id:06d}"
    files = {"file_name": f"images/{split}/{stem}.{image_format}", "semantic_file": f"semantic/{split}/{stem}.png"}
    # A JPEG the camera sent is kept as it came: the dataset holds what the stack sees, compressed once.
    sent = cam.encoded if cam.encoded is not None and cam.encoding == "jpeg" and image_format == "jpg" else None
    blobs = [sent or _encode(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), f".{image_format}"),
             _encode(truth.semantic[camera], ".png")]
    if depth:
        files["depth_file"] = f"depth/{split}/{stem}.png"
        depth_cm = np.clip(np.rint(truth.depth[camera] * 100.0), 0, DEPTH_MAX_CM).astype(np.uint16)
        blobs.append(_encode(depth_cm, ".png"))
    for relative, blob in zip(files.values(), blobs):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    return {"id": image_id, "width": int(image.shape[1]), "height": int(image.shape[0]), **files,
            "frame": obs.frame, "t": round(obs.t, 6)}


def frame_annotations(obs: Observation, camera: str, image_id: int) -> list[dict[str, Any]]:
    """COCO annotations (without ids) of the objects visible enough in `camera`."""
    truth = obs.ground_truth
    cam = obs.cameras[camera]
    light_states = {light.id: light.state for light in truth.traffic_lights}
    annotations = []
    for obj in truth.objects:
        box = obj.boxes_2d.get(camera)
        if box is None or box.visible_fraction < MIN_VISIBLE_FRACTION or obj.kind not in CATEGORY_OF_KIND:
            continue
        x0, y0, x1, y1 = int(box.x0), int(box.y0), int(box.x1), int(box.y1)
        if obj.kind == "traffic_light":
            housing = _housing_box(obj, cam, (x0, y0, x1, y1), truth.semantic[camera])
            if housing is None:
                continue
            x0, y0, x1, y1 = housing
        if x1 - x0 < MIN_BOX_PX or y1 - y0 < MIN_BOX_PX:
            continue
        record = {
            "image_id": image_id, "category_id": CATEGORY_OF_KIND[obj.kind],
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
            "track_id": obj.id, "visible_fraction": round(float(box.visible_fraction), 4),
            "center_ego": [round(float(v), 4) for v in obj.center_ego],  # [m] 3D box centre, ego frame
            "yaw_ego": round(float(obj.yaw_ego), 4),  # [rad]
            "extent": [round(float(v), 4) for v in obj.extent],  # [m] length, width, height
            "velocity_ego": [round(float(v), 4) for v in obj.velocity_ego],  # [m/s]
        }
        if obj.kind == "traffic_light":
            record["attributes"] = {"state": light_states.get(obj.id, "unknown"),
                                    "facing_camera": _faces(obj, cam.T_ego_cam[:3, 3])}
        annotations.append(record)
    return annotations


def _housing_box(light: ObjectTruth, cam: CameraImage, visible: tuple[int, int, int, int],
                 semantic: np.ndarray) -> tuple[int, int, int, int] | None:
    """The signal housing's image box, clipped to the instance's visible box; None when the
    housing is behind the camera or hidden."""
    length, width, height = light.extent
    c, s = np.cos(light.yaw_ego), np.sin(light.yaw_ego)
    local = np.array([(dx, dy, dz) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5) for dz in (-0.5, 0.5)])
    local *= (length, width, height)
    corners = np.column_stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]])
    corners += light.center_ego  # (8, 3) ego frame
    cam_from_ego = np.linalg.inv(cam.T_ego_cam)
    points = corners @ cam_from_ego[:3, :3].T + cam_from_ego[:3, 3]  # (8, 3) camera frame
    if points[:, 2].min() <= 0.1:
        return None
    pixels = points @ cam.K.T
    uv = pixels[:, :2] / pixels[:, 2:3]
    x0 = max(int(np.floor(uv[:, 0].min())), visible[0])
    y0 = max(int(np.floor(uv[:, 1].min())), visible[1])
    x1 = min(int(np.ceil(uv[:, 0].max())), visible[2])
    y1 = min(int(np.ceil(uv[:, 1].max())), visible[3])
    if x1 <= x0 or y1 <= y0:
        return None
    fill = float(np.mean(semantic[y0:y1, x0:x1] == TAG_TRAFFIC_LIGHT))
    return (x0, y0, x1, y1) if fill >= MIN_HOUSING_FILL else None


def _faces(light: ObjectTruth, camera_ego: np.ndarray) -> bool:
    """Whether the lamps (on the housing's +x face) point towards the camera, so that the
    state can be seen; from behind or side-on it cannot."""
    to_camera = camera_ego[:2] - np.asarray(light.center_ego[:2])
    facing = np.array([np.cos(light.yaw_ego), np.sin(light.yaw_ego)])
    return bool(facing @ to_camera > FACING_COS * np.linalg.norm(to_camera))


def write_json(path: Path, data: Any) -> None:
    """Deterministic JSON (same data, same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def content_sha256(root: str | Path) -> str:
    """A hash of what a dataset holds: every file under `root` but manifest.json (images, masks,
    annotations), by relative path and bytes. Unlike the manifest's own hash, it does not change
    with the commit or the command that wrote the same data."""
    import hashlib

    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root) != Path("manifest.json")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def write_coco(path: Path, images: list[dict], annotations: list[dict], camera: dict, info: dict,
               cameras: dict[str, dict] | None = None) -> None:
    """A COCO detection file; annotation ids are assigned here, 1..n in the given order. ``camera``
    is the main camera's record; ``cameras`` every rig camera's by name (each image names its own)."""
    numbered = [{"id": i, **a} for i, a in enumerate(annotations, start=1)]
    write_json(path, {"info": info, "camera": camera, "cameras": cameras or {camera["name"]: camera},
                      "categories": coco_categories(), "images": images, "annotations": numbered})

"""The accuracy bars on fresh validation sets: frames rendered from seeds that no training run
and no choice of recipe ever drew, from the front camera, on CARLA's Town02.

    figures = fresh_set_figures(checkpoint, seed=1, root=Path("data/fresh"))   # collects once, then caches
    failed = missed_bars(figures)                                              # [] when every bar holds

`scripts/fresh_sets.py` runs seeds 1-4 and writes the table the model card states;
tests/test_learned_perception.py asserts the bars on seed 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stagepilot.core.config import StackConfig, load_stack
from stagepilot.perception.evaluate import ap50_metric, evaluate_checkpoint, per_class_ap
from stagepilot.perception.labels import CLASSES

FRESH_FRAMES = 600  # frames per set
FRESH_SEEDS = (1, 2, 3, 4)
FRONT_ONLY = ("sim.cameras.front_left=null", "sim.cameras.front_right=null")
SMALL_BAND = "0-12px"  # recall of vehicles under 12 px tall, at the evaluation's score threshold
POOLED = ("yellow_ap50",)  # bars judged on the sets pooled, not on each set
# figure -> (comparison, bar)
FRESH_BARS: dict[str, tuple[str, float]] = {
    "vehicle_ap50": (">=", 0.88),
    "pedestrian_ap50": (">=", 0.80),
    "yellow_ap50": (">=", 0.70),
    "small_vehicle_recall": (">=", 0.85),
    "miou": (">=", 0.85),
}
LABELS = {"vehicle_ap50": "vehicle AP@0.5", "pedestrian_ap50": "pedestrian AP@0.5",
          "yellow_ap50": "yellow-light AP@0.5", "small_vehicle_recall": "vehicle recall < 12 px",
          "miou": "mIoU (5 classes)"}


def front_config() -> StackConfig:
    return load_stack(overrides=list(FRONT_ONLY))


def collect_fresh_set(root: Path, seed: int, frames: int = FRESH_FRAMES, *, show_progress: bool = False,
                      config: StackConfig | None = None) -> Path:
    """The set of `seed` under root/seed<N> (validation split only), rendered when absent."""
    from stagepilot.pipeline.collect import collect_dataset  # the simulator, only when a set is rendered

    data = Path(root) / f"seed{seed}"
    if not (data / "manifest.json").is_file():
        collect_dataset(config or front_config(), data, frames, split="val", seed=seed, workers=2,
                        show_progress=show_progress)
    return data


def figures_of(result: dict[str, Any]) -> dict[str, float | None]:
    """The bar figures of one `evaluate_checkpoint` result."""
    small = result["recall_by_height"]["vehicle"].get(SMALL_BAND, {})
    return {"vehicle_ap50": result["ap50"]["vehicle"], "pedestrian_ap50": result["ap50"]["pedestrian"],
            "yellow_ap50": result["ap50"]["traffic_light_yellow"],
            "small_vehicle_recall": small.get("recall"),
            "small_vehicles": small.get("boxes"), "miou": result["miou"],
            "vehicle_position_error_m": result["position_error_median_m"]["vehicle"],
            "horizon_zoom": result.get("horizon_zoom"), "box_refiner": result.get("box_refiner")}


def fresh_set_figures(checkpoint: str | Path, seed: int, root: Path, frames: int = FRESH_FRAMES, *,
                      show_progress: bool = False, pooled_ap50=None, zoom: bool = True) -> dict[str, Any]:
    """The bar figures of the stage's detections on set ``seed`` (``zoom=False``: the network's
    on the whole frame alone, without the horizon zoom, perception/zoom.py)."""
    config = front_config()
    data = collect_fresh_set(root, seed, frames, show_progress=show_progress, config=config)
    result = evaluate_checkpoint(checkpoint, data, "val", device="cpu", config=config, pooled_ap50=pooled_ap50,
                                 zoom=zoom)
    return {"seed": seed, "frames": result["frames"], "yellow_boxes": _facing_yellow(data), **figures_of(result)}


def _facing_yellow(data: Path) -> int:
    coco = json.loads((data / "annotations" / "val.json").read_text())
    return sum(1 for a in coco["annotations"]
               if (a.get("attributes") or {}).get("state") == "yellow" and a["attributes"].get("facing_camera"))


def fresh_sets(checkpoint: str | Path, seeds=FRESH_SEEDS, root: Path = Path("data/fresh"),
               frames: int = FRESH_FRAMES, *, show_progress: bool = True,
               zoom: bool = True) -> tuple[list[dict], dict[str, Any]]:
    """Each set's figures (with the bars it misses, the pooled ones aside) and the AP@0.5 of
    every class pooled over the sets (with the pooled bars it misses)."""
    metric, sets = ap50_metric(), []
    for seed in tqdm(seeds, desc="fresh sets", unit="set", disable=not show_progress):
        figures = fresh_set_figures(checkpoint, seed, Path(root), frames, pooled_ap50=metric, zoom=zoom)
        figures["missed"] = missed_bars(figures, skip=POOLED)
        sets.append(figures)
    ap50 = per_class_ap(metric.compute(), list(CLASSES))
    pooled = {"ap50": ap50, "yellow_ap50": ap50["traffic_light_yellow"],
              "yellow_boxes": sum(s["yellow_boxes"] for s in sets)}
    pooled["missed"] = missed_bars(pooled, only=POOLED)
    return sets, pooled


def missed_bars(figures: dict[str, Any], *, skip=(), only=None) -> list[str]:
    """'figure value < bar' for each bar the figures miss (a missing figure misses), over the
    bars in `only` (default all) but those in `skip`."""
    missed = []
    for key, (op, bar) in FRESH_BARS.items():
        if key in skip or (only is not None and key not in only):
            continue
        value = figures.get(key)
        if value is None or (value < bar if op == ">=" else value > bar):
            missed.append(f"{key} {value} {'<' if op == '>=' else '>'} {bar}")
    return missed

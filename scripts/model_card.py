"""Write a checkpoint's model card from its own metadata (the figures cannot drift from the file).

    python scripts/model_card.py perception/weights/mtl_mbv3small_fpn96_s48_seg4_cs.pt \
        --step "stagepilot collect --config configs/rigs/front_only.yaml --out data/perception --frames 3000 --workers 2" \
        --timing "collect 3.2 min + train 66 min on the 2-core CPU" \
        --fresh docs/results/fresh_sets/shipped.json --refiner perception/weights/box_refiner.pt \
        > perception/weights/MODEL_CARD.md

`--step` repeats, in order, for the commands before the checkpoint's own training command;
`--fresh` is scripts/fresh_sets.py's JSON for the checkpoint; `--refiner` the box refiner the
stage runs with it (perception/refine.py), from its own metadata too.
"""

from __future__ import annotations

import argparse
import json
import hashlib
from pathlib import Path

from stagepilot.perception.evaluate import MIOU_CLASSES
from stagepilot.perception.checkpoint import load_checkpoint

BARS = {"vehicle AP@0.5": (">=", 0.85), "pedestrian AP@0.5": (">=", 0.75), "mIoU (5 classes)": (">=", 0.80),
        "vehicle position error, median within 30 m": ("<=", 1.0)}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _crop_note(augment: dict) -> str:
    if not augment.get("crop"):
        return ""
    (ch, cw), (lo, hi) = augment["crop"], augment.get("scale", (1.0, 1.0))
    whole = augment.get("whole_frames_last", 0)
    note = f", on random {cw}x{ch} windows of frames zoomed by {lo}-{hi}"
    return note + (f", the last {whole} epochs on whole frames" if whole else "")


def _origin(meta: dict, path: Path) -> str:
    config = meta.get("config", {})
    init = config.get("init")
    if init:
        source = ("this file's previous version, the model of the training command before the last one below"
                  if Path(init).name == path.name else f"`{init}`")
        return (f"fine-tuned {meta.get('epoch')} epochs from {source} (the chain starts from a model trained from "
                "scratch, no pretrained weights) on frames of the embedded simulator")
    return f"trained {meta.get('epoch')} epochs from scratch (no pretrained weights) on frames of the embedded simulator"


def _fresh_section(fresh: dict, name: str) -> list[str]:
    from fresh_sets import table  # scripts/fresh_sets.py, beside this script

    return ["", "## Fresh sets", "",
            "Four validation sets rendered from collect seeds that no training run and no choice of recipe drew "
            "(Town02, front camera; `python scripts/fresh_sets.py <this file>`, pipeline/fresh_sets.py). "
            "**missed** marks a figure on the wrong side of its bar.", "",
            table(name, fresh["sets"], fresh["pooled"])]


def _refiner_section(path: Path, detector: Path) -> list[str]:
    from stagepilot.perception.checkpoint import file_sha256
    from stagepilot.perception.refine import load_refiner

    refinement = load_refiner(path)
    meta = refinement.meta
    params = sum(p.numel() for p in refinement.model.parameters())
    ours = meta.get("detector_sha256") == file_sha256(detector)
    lines = ["", "## Box refiner", "",
             f"File `{path.name}` ({path.stat().st_size / 1e6:.1f} MB, sha256 {meta['sha256'][:16]}...), "
             f"`{meta['architecture']}`, {params / 1e6:.2f} M parameters: the stage moves the edges of this "
             f"model's {', '.join(meta['classes'])} boxes under {meta['max_height_px']:g} px tall (score >= "
             f"{meta['min_score']:g}) on the frame's own pixels (perception/refine.py). Trained on "
             + ("this file's boxes" if ours else "**another detector's boxes**")
             + f", {meta['pairs']} boxes paired with labels, {meta['epochs']} epochs: "
             f"`{meta['training_command']}` (capture {meta['minutes']['capture']} min + train "
             f"{meta['minutes']['train']} min).", ""]
    val = meta.get("val")
    if val:
        bands = list(val["without"]["recall_by_height"])
        lines += ["Its data's val split, vehicles, recall by box height (score >= 0.3, IoU >= 0.5), "
                  "the stage's detections without and with it:", "",
                  "| | AP@0.5 | " + " | ".join(bands) + " |", "|---|---|" + "---|" * len(bands)]
        for name in ("without", "with"):
            row = val[name]
            lines.append(f"| {name} | {_fmt(row['vehicle_ap50'])} | "
                         + " | ".join(_fmt(row["recall_by_height"][b]["recall"]) for b in bands) + " |")
    return lines


def card(path: Path, steps: list[str], timing: str, fresh: dict | None = None, refiner: Path | None = None) -> str:
    model, meta = load_checkpoint(path)
    split, metrics = next(iter(meta["metrics"].items()))
    size = path.stat().st_size
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    params = sum(p.numel() for p in model.parameters())
    figures = {
        "vehicle AP@0.5": metrics["ap50"]["vehicle"],
        "pedestrian AP@0.5": metrics["ap50"]["pedestrian"],
        "mIoU (5 classes)": metrics["miou"],
        "vehicle position error, median within 30 m": metrics["position_error_median_m"]["vehicle"],
    }
    lines = [
        f"# Model card: `{meta['architecture']}`",
        "",
        f"File `{path.name}` ({size / 1e6:.1f} MB, sha256 {digest}...), {params / 1e6:.2f} M parameters, "
        + _origin(meta, path) + _crop_note(meta.get("config", {}).get("augment", {})) + ".",
        "",
        "## Inputs and outputs",
        "",
        f"- Input: RGB, float in [0, 1], {meta['input_size'][0]}x{meta['input_size'][1]} (H x W); "
        + ("the 640x360 front camera as it is. " if tuple(meta["input_size"]) == (360, 640)
           else "the stage area-scales the 640x360 front camera to it. ")
        + "ImageNet mean/std normalisation is inside the model.",
        f"- Detection classes: {', '.join(meta['classes'])}.",
        f"- Segmentation classes: {', '.join(meta['seg_classes'])} (from CARLA semantic tags).",
        "",
        f"## Metrics on the held-out split `{split}` ({metrics['frames']} frames)",
        "",
        "CARLA's Town02 (a map training never sees; training draws the four project maps and CARLA's Town01), "
        "seeds training never draws. The network on the whole frame alone, as its training evaluated it (the "
        "stage also reads the horizon band magnified: perception/zoom.py, and the fresh sets below): "
        f"`stagepilot eval perception --checkpoint <this file> --data data/{Path(meta['data_manifest']['path']).name} "
        "--json perception.learned.horizon_zoom=1`.",
        "",
        "| figure | value | bar |",
        "|---|---|---|",
    ]
    for name, value in figures.items():
        op, bar = BARS[name]
        ok = value is not None and (value >= bar if op == ">=" else value <= bar)
        lines.append(f"| {name} | {_fmt(value)} | {op} {bar} ({'met' if ok else 'MISSED'}) |")
    lines += ["", "AP@0.5 and AP@0.5:0.95 per class (COCO, torchmetrics / pycocotools):", "",
              "| class | AP@0.5 | AP@0.5:0.95 |", "|---|---|---|"]
    for cls in meta["classes"]:
        lines.append(f"| {cls} | {_fmt(metrics['ap50'][cls])} | {_fmt(metrics['ap50_95'][cls])} |")
    lines += ["", f"IoU per segmentation class (mIoU over {', '.join(MIOU_CLASSES)}: {_fmt(metrics['miou'])}):", "",
              "| class | IoU |", "|---|---|"]
    for cls, value in metrics["iou"].items():
        lines.append(f"| {cls} | {_fmt(value)} |")
    matches = metrics.get("position_matches", {})
    lines += ["", "Median ego-frame position error within 30 m (box ground contact through the camera model):", ""]
    for cls, value in metrics["position_error_median_m"].items():
        m = matches.get(cls, {})
        lines.append(f"- {cls}: {_fmt(value)} m ({m.get('matched')} of {m.get('eligible')} objects matched)")
    by_height = metrics.get("recall_by_height")
    if by_height:
        bands = list(next(iter(by_height.values())))
        lines += ["", f"Recall by ground-truth box height in the 640x360 camera (score >= {metrics['score_threshold']}, "
                  "IoU >= 0.5): boxes, recall.", "", "| class | " + " | ".join(bands) + " |",
                  "|---|" + "---|" * len(bands)]
        for cls, row in by_height.items():
            cells = [f"{row[b]['boxes']}, {_fmt(row[b]['recall'])}" for b in bands]
            lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    if refiner:
        lines += _refiner_section(refiner, path)
    if fresh:
        lines += _fresh_section(fresh, path.name)
    lines += [
        "",
        "## Reproduce",
        "",
        "```sh",
        *steps,
        meta["training_command"],
        "```",
        "",
        f"Data manifest: `{Path(meta['data_manifest']['path']).name}/manifest.json`, sha256 "
        f"{meta['data_manifest']['sha256']}, {meta['data_manifest']['frames']} frames"
        + (f"; its files' content sha256 {meta['data_manifest']['content_sha256']}"
           if meta["data_manifest"].get("content_sha256") else "") + ".",
        "",
        f"Time: {timing}.",
        "",
        "`tests/test_learned_perception.py::test_shipped_model_meets_the_bars_on_freshly_generated_frames` "
        "renders new validation frames and recomputes these figures against the bars.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--step", action="append", required=True,
                        help="a command run before the checkpoint's own training command (repeat, in order)")
    parser.add_argument("--timing", required=True, help="how long collecting and training took, and where")
    parser.add_argument("--fresh", type=Path, help="scripts/fresh_sets.py's JSON for this checkpoint")
    parser.add_argument("--refiner", type=Path, help="the box refiner the stage runs with this checkpoint")
    args = parser.parse_args()
    fresh = json.loads(args.fresh.read_text()) if args.fresh else None
    print(card(args.checkpoint, args.step, args.timing, fresh, args.refiner), end="")


if __name__ == "__main__":
    main()

"""A checkpoint's accuracy bars on the fresh validation sets (pipeline/fresh_sets.py): renders each
seed's 600 front-camera Town02 frames once under --root, evaluates, prints a table and writes JSON.

    python scripts/fresh_sets.py perception/weights/mtl_mbv3small_fpn96_s48_seg4_cs.pt \
        --root data/fresh --json docs/results/fresh_sets.json

The detections are the stage's: each frame and its horizon band magnified (perception/zoom.py),
as the stack config sets the zoom; ``--no-zoom`` scores the network on the whole frame alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stagepilot.pipeline.fresh_sets import FRESH_BARS, FRESH_FRAMES, FRESH_SEEDS, LABELS, POOLED, fresh_sets


def table(checkpoint: str, sets: list[dict], pooled: dict) -> str:
    head = "| figure | bar | " + " | ".join(f"seed {s['seed']}" for s in sets) + " | sets pooled |"
    zoom = sets[0].get("horizon_zoom")
    how = (f"the stage's detections, the frame and its horizon band magnified {zoom['magnification']:g}x "
           f"({zoom['rows']} rows, {zoom.get('width', 1.0):g} of the width)" if zoom
           else "the network on the whole frame alone, no horizon zoom")
    refiner = sets[0].get("box_refiner")
    if refiner:
        how += (f", then its vehicle boxes under {refiner['max_height_px']:g} px tall refined on the frame's pixels "
                f"(`{Path(refiner['file']).name}`)")
    lines = [f"Fresh sets ({sets[0]['frames']} Town02 front-camera frames each) for `{checkpoint}`, {how}:", "",
             head, "|" + "---|" * (3 + len(sets))]

    def cell(figures: dict, key: str) -> str:
        value = figures.get(key)
        text = "" if value is None else f"{value:.3f}"
        if key == "yellow_ap50" and "yellow_boxes" in figures:
            text += f" ({figures['yellow_boxes']} boxes)"
        return text + (" **missed**" if key in {m.split()[0] for m in figures["missed"]} else "")

    for key, (op, bar) in FRESH_BARS.items():
        scope = "pooled" if key in POOLED else "each set"
        lines.append(f"| {LABELS[key]} | {op} {bar}, {scope} | " + " | ".join(cell(s, key) for s in sets)
                     + f" | {cell(pooled, key) if key in POOLED else ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--root", default="data/fresh", help="where the sets are rendered (and reused)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(FRESH_SEEDS))
    parser.add_argument("--frames", type=int, default=FRESH_FRAMES)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--no-zoom", action="store_true", help="the network alone, without the stage's horizon zoom")
    args = parser.parse_args(argv)
    sets, pooled = fresh_sets(args.checkpoint, args.seeds, Path(args.root), args.frames, zoom=not args.no_zoom)
    print(table(args.checkpoint, sets, pooled))
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "bars": FRESH_BARS, "sets": sets,
                                               "pooled": pooled}, indent=1) + "\n")
    return 0 if not any(s["missed"] for s in [*sets, pooled]) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The `stagepilot` commands that make and judge the perception model: collect, train, eval,
export (pipeline/cli.py builds the rest of the command line)."""

from __future__ import annotations

from pathlib import Path

from stagepilot.pipeline import commands as handlers
from stagepilot.pipeline.cli_args import add_maps_arg, add_sim_args, add_stack_args, positive_int


def add_model_commands(commands) -> None:
    """Add collect, train, train-refiner, eval and export to ``commands`` (the parser's subparsers)."""
    collect = commands.add_parser(
        "collect", help="render a perception dataset (COCO boxes, semantic masks) from the embedded simulator",
        description="Render varied scenes (maps, traffic, pedestrians, parked cars, cones, weather) with the "
        "embedded simulator and write every rig camera's images, semantic masks (CARLA tags), optional depth, "
        "COCO annotations per split and manifest.json. Training uses the project maps; validation uses "
        "Town02 and held-out seeds. The same command writes the same bytes.",
    )
    collect.add_argument("--out", required=True, type=Path, help="dataset folder (must not hold a dataset yet)")
    collect.add_argument("--frames", required=True, type=positive_int, help="frames to write, over all splits")
    collect.add_argument("--split", choices=["train", "val", "both"], default="both", help="splits to write (default: both)")
    collect.add_argument("--seed", type=int, default=0, help="seed of everything sampled (default: 0)")
    collect.add_argument("--val-fraction", type=float, default=0.2, help="share of frames for val with --split both")
    collect.add_argument("--frames-per-scene", type=positive_int, default=10, help="frames saved per sampled scene")
    collect.add_argument("--interval", type=float, default=0.5, metavar="S", help="sim seconds between saved frames")
    collect.add_argument("--image-format", choices=["jpg", "png"], default="jpg", help="camera image format")
    collect.add_argument("--depth", action="store_true", help="also write depth as 16-bit PNG [cm]")
    collect.add_argument("--first-yellow", type=float, default=0.0, metavar="SHARE",
                         help="share of training scenes whose first light on the route starts yellow (default: 0)")
    collect.add_argument("--crowd", type=float, default=0.0, metavar="SHARE",
                         help="share of training scenes made crowded: queues of far cars, more walkers and "
                              "parked cars, so far cars are often partly hidden (default: 0)")
    collect.add_argument("--workers", type=positive_int, default=1, help="processes (the output does not depend on it)")
    collect.add_argument("--quiet", action="store_true", help="no progress bar")
    add_maps_arg(collect)
    add_sim_args(collect)
    add_stack_args(collect)
    collect.set_defaults(handler=handlers.collect)

    train = commands.add_parser("train", help="train the perception network on a collected dataset",
                                description="Train PerceptionNet (perception/train.py) from a training YAML; "
                                "checkpoints every epoch, then evaluates the val split into model.pt.")
    train.add_argument("--config", required=True, type=Path, help="training YAML, e.g. configs/training/default.yaml")
    train.add_argument("--resume", type=Path, default=None, metavar="CKPT", help="continue from an epoch checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a value, e.g. epochs=3")
    train.set_defaults(handler=handlers.train)

    refiner = commands.add_parser(
        "train-refiner", help="train the box refiner on a detector's small vehicle boxes",
        description="Read a dataset's train split with the detector as the stage does, pair each small vehicle box "
        "with the label it overlaps, train the box refiner (perception/refine.py) on crops of the frame, and "
        "evaluate the val split with and without it (perception/train_refiner.py).")
    refiner.add_argument("--data", required=True, type=Path, help="a dataset from `stagepilot collect`")
    refiner.add_argument("--out", required=True, type=Path, help="refiner file to write")
    refiner.add_argument("--checkpoint", type=Path, default=None, help="the detector (default: the shipped model)")
    refiner.add_argument("--epochs", type=positive_int, default=24, help="epochs (default: 24)")
    refiner.add_argument("--seed", type=int, default=0, help="seed of the initial weights and batches (default: 0)")
    refiner.add_argument("--quiet", action="store_true", help="no progress bars")
    add_stack_args(refiner)
    refiner.set_defaults(handler=handlers.train_refiner)

    evaluate = commands.add_parser("eval", help="evaluate a trained model")
    eval_commands = evaluate.add_subparsers(dest="eval_command", metavar="STAGE", required=True)
    eval_perception = eval_commands.add_parser(
        "perception", help="AP per class, seg IoU and position error of a checkpoint on a dataset split")
    eval_perception.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint from `stagepilot train`")
    eval_perception.add_argument("--data", required=True, type=Path, help="a dataset from `stagepilot collect`")
    eval_perception.add_argument("--split", default="val", help="split to evaluate (default: val)")
    eval_perception.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    add_stack_args(eval_perception)
    eval_perception.set_defaults(handler=handlers.eval_perception)

    export = commands.add_parser("export", help="export a model to another runtime")
    export_commands = export.add_subparsers(dest="export_command", metavar="FORMAT", required=True)
    export_onnx = export_commands.add_parser(
        "onnx", help="the perception network as ONNX, checked against PyTorch with onnxruntime",
        description="Write the perception network's raw heads (cls, box, seg) as an ONNX graph with a dynamic "
        "batch axis, run it with onnxruntime and print the largest difference from PyTorch per output.")
    export_onnx.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: the shipped model)")
    export_onnx.add_argument("--out", required=True, type=Path, help="ONNX file to write")
    export_onnx.add_argument("--opset", type=positive_int, default=18, help="ONNX opset (default: 18)")
    export_onnx.set_defaults(handler=handlers.export_onnx)

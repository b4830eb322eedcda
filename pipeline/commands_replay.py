"""What `stagepilot replay` and `stagepilot recording` do, given their parsed arguments."""

from __future__ import annotations

import sys
from pathlib import Path

from stagepilot.core.config import ConfigError
from stagepilot.pipeline.codec import RecordingError

STAGE_NAMES = ("perception", "planner", "controller")


def _recordings(items: list[str]) -> tuple[list[Path], list[str]]:
    """Split the positional arguments: recordings (a file, or a run folder holding drive.mcap)
    and `key.path=value` overrides."""
    paths, overrides = [], []
    for item in items:
        if "=" in item and not Path(item).exists():
            overrides.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            path = path / "drive.mcap"
        if not path.is_file():
            raise RecordingError(f"{item}: no such recording")
        paths.append(path)
    if not paths:
        raise ConfigError("replay: name a recording (a drive.mcap, or a run folder that holds one)")
    return paths, overrides


def _stages(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in STAGE_NAMES]
    if unknown or not names:
        raise ConfigError(f"--stages {text}: expected a comma-separated subset of {', '.join(STAGE_NAMES)}")
    return names


def replay(args) -> int:
    from stagepilot.pipeline.replay_compare import load_tolerances

    paths, overrides = _recordings(args.items)
    if args.update_golden:
        return _update_golden(paths, overrides, args)
    tolerances = load_tolerances(args.tolerances, exact=args.exact)
    status = 0
    for path in paths:
        status = max(status, _resim(path, overrides, tolerances, args) if args.resim
                     else _replay_one(path, overrides, tolerances, args))
    return status


def _replay_one(path: Path, overrides, tolerances, args) -> int:
    from stagepilot.pipeline.replay import replay

    result = replay(path, _stages(args.stages), config_files=args.config, overrides=overrides,
                    tolerances=tolerances, show_progress=not args.quiet)
    print(result.table())
    for stage in result.stages.values():
        print(stage.first.line() if stage.first else f"{stage.name}: matches on all {stage.frames} frames")
    if args.report is not None:
        from stagepilot.pipeline.replay_report import write_report

        print(f"report: {write_report(args.report, result)}")
    if result.truncated:
        print(f"stagepilot: error: {path}: {result.truncated}", file=sys.stderr)
    elif not result.ok:
        print(f"stagepilot: regression: {path}: " + "; ".join(
            f"{s.name} differs on {s.diverged} of {s.frames} frames" for s in result.stages.values() if s.first),
            file=sys.stderr)
    return result.exit_status()


def _resim(path: Path, overrides, tolerances, args) -> int:
    from stagepilot.pipeline.resim import resim, write_resim_report

    result = resim(path, config_files=args.config, overrides=overrides, tolerances=tolerances,
                   show_progress=not args.quiet)
    print(result.table())
    if args.report is not None:
        print(f"report: {write_resim_report(args.report, result)}")
    if result.truncated:
        print(f"stagepilot: error: {path}: {result.truncated}", file=sys.stderr)
    return result.exit_status()


def _update_golden(paths, overrides, args) -> int:
    from stagepilot.pipeline.replay_golden import update_golden

    if overrides or args.config or args.resim or args.report:
        raise ConfigError("--update-golden takes recordings only: the reference outputs come from the code as it is")
    for path in paths:
        print(update_golden(path, show_progress=not args.quiet).summary())
    return 0


def recording_info(args) -> int:
    from stagepilot.pipeline.recording_tools import format_info, recording_info

    print(format_info(recording_info(args.file)))
    return 0


def recording_export(args) -> int:
    from stagepilot.pipeline.recording_tools import export_frames, parse_range

    try:
        first, last = parse_range(args.frames)
        summary = export_frames(args.file, first, last, args.out)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(f"wrote {summary.get('frames', 0)} frames to {args.out}")
    return 0

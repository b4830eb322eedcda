"""The results page: collect drive and benchmark figures, render docs/results.md and the README's block.

    python scripts/results.py collect-run RUN_DIR...           # metrics.json, run.json, config.yaml + machine.json
    python scripts/results.py collect-bench NAME FILE.json|-   # a `stagepilot bench ... --json` output
    python scripts/results.py drive [SCENARIO...]              # drive the result set, then collect it
    python scripts/results.py bench [sim plan control perception]   # run the benches, then collect them
    python scripts/results.py render [--check]                 # docs/results.md and README.md from docs/results/

Every collect re-renders, so README.md and docs/results.md always show what docs/results/ holds.
`render --check` writes nothing and exits 1 when either file differs from what render would write.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_render beside this script
from results_render import ResultsError, model_card, render_block, render_page, replace_block  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUN_FILES = ("metrics.json", "run.json", "config.yaml")  # small files only; never the video
# The drives of the result set and their `stagepilot drive` arguments: the default drive with
# learned perception, the scenario drives with the ground-truth stand-in so that they measure
# planning and control.
DRIVES = {
    "town_loop": [],
    "curve_lane_keeping": ["--perception", "perfect"],
    "lead_vehicle_braking": ["--perception", "perfect"],
    "pedestrian_crossing": ["--perception", "perfect"],
    "red_light_junction": ["--perception", "perfect"],
}
BENCHES = ("sim", "plan", "control", "perception")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
def machine_info() -> dict:
    """CPU model, cores, the SIMD flags that decide the CPU paths, and the GPU if one answers."""
    fields = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
    except (OSError, subprocess.CalledProcessError):
        pass
    flags = set(fields.get("Flags", "").split()) or _proc_cpuinfo_flags()
    cores = int(fields["CPU(s)"]) if fields.get("CPU(s)", "").isdigit() else None
    return {"cpu": fields.get("Model name") or platform.processor() or "unknown",
            "arch": fields.get("Architecture") or platform.machine(),
            "cores": cores, "flags": [f for f in CPU_FLAGS if f in flags], "gpu": _gpu_name(),
            "host": socket.gethostname()}


def _proc_cpuinfo_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
    return ", ".join(names) if out.returncode == 0 and names else None


def collect_run(run_dir: Path, data: Path, name: str | None = None, note: str | None = None) -> Path:
    """Copy a run folder's small files to data/runs/<scenario>/ with machine.json beside them."""
    missing = [f for f in ("metrics.json", "run.json") if not (run_dir / f).is_file()]
    if missing:
        raise ResultsError(f"{run_dir}: no {' or '.join(missing)} (is the drive finished?)")
    run = json.loads((run_dir / "run.json").read_text())
    name = name or run["scenario"]["name"]
    dest = data / "runs" / name
    dest.mkdir(parents=True, exist_ok=True)
    for file in RUN_FILES:
        if (run_dir / file).is_file():
            shutil.copyfile(run_dir / file, dest / file)
    machine = run.get("machine") or machine_info()
    if run.get("host") and machine.get("host") and run["host"] != machine["host"]:
        print(f"warning: {run_dir} was driven on {run['host']}, its machine read on {machine['host']}",
              file=sys.stderr)
    machine["date"] = run["started"][:10]
    if note:
        machine["note"] = note
    _write_json(dest / "machine.json", machine)
    return dest


def collect_bench(name: str, source: str, data: Path, date: str | None = None, note: str | None = None) -> Path:
    """Store a bench's JSON as data/bench/<name>.json and this machine as <name>.machine.json."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        result = json.loads(text)
    except json.JSONDecodeError as error:
        raise ResultsError(f"{source}: not a JSON object ({error})") from None
    bench_kind(result, source)
    dest = data / "bench" / f"{name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_json(dest, result)
    machine = machine_info()
    machine["date"] = date or datetime.date.today().isoformat()
    if note:
        machine["note"] = note
    _write_json(dest.with_suffix(".machine.json"), machine)
    return dest


def bench_kind(result: dict, source: str) -> str:
    """Which `stagepilot bench` wrote this JSON, by its keys."""
    for kind, key in (("sim", "steps_per_s"), ("plan", "candidates"), ("control", "controller"),
                      ("perception", "torchvision_pair")):
        if isinstance(result, dict) and key in result:
            return kind
    raise ResultsError(f"{source}: not the JSON of `stagepilot bench sim|plan|control|perception --json`")


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _stagepilot() -> str:
    beside = Path(sys.executable).parent / "stagepilot"
    found = str(beside) if beside.is_file() else shutil.which("stagepilot")
    if not found:
        raise ResultsError("no `stagepilot` command: install the project (make install) first")
    return found


def drive_all(scenarios: list[str], out: Path, data: Path) -> None:
    """Drive each scenario of the result set (one after another: they time themselves) and collect it."""
    for scenario in scenarios:
        if scenario not in DRIVES:
            raise ResultsError(f"{scenario}: not in the result set ({', '.join(DRIVES)})")
        run_dir = out / scenario
        command = [_stagepilot(), "drive", "--quiet", "--scenario", scenario, "--out", str(run_dir), "--overwrite",
                   *DRIVES[scenario]]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
        collect_run(run_dir, data)


def bench_all(kinds: list[str], data: Path) -> None:
    """Run each bench and collect it. The benches time the wall clock, so a machine that was
    busy (1-minute load average over 0.5 at the bench's start or end) is noted beside them."""
    unknown = [kind for kind in kinds if kind not in BENCHES]
    if unknown:
        raise ResultsError(f"{', '.join(unknown)}: not a bench ({', '.join(BENCHES)})")
    for kind in kinds:
        command = [_stagepilot(), "bench", kind, "--json"]
        print("$", " ".join(command[1:]), flush=True)
        before = _load()
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        after = _load()
        note = f"load average {before:.1f} at its start, {after:.1f} at its end" if max(before, after) > 0.5 else None
        source = data / "bench" / f"{kind}.tmp"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(out)
        try:
            collect_bench(kind, str(source), data, note=note)
        finally:
            source.unlink()


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


# ---------------------------------------------------------------- load


def load_runs(data: Path) -> dict[str, dict]:
    runs = {}
    for folder in sorted((data / "runs").glob("*/")):
        run = {f.split(".")[0]: _read(folder / f) for f in ("metrics.json", "run.json", "machine.json")}
        config = folder / "config.yaml"
        run["config"] = yaml.safe_load(config.read_text()) if config.is_file() else {}
        runs[folder.name] = run
    return runs


def load_benches(data: Path) -> dict[str, dict]:
    benches = {}
    for path in sorted((data / "bench").glob("*.json")):
        if path.name.endswith(".machine.json"):
            continue
        result = _read(path)
        benches[path.stem] = {"result": result, "kind": bench_kind(result, str(path)),
                              "machine": _read(path.with_suffix(".machine.json"))}
    return benches


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ResultsError(f"{path}: missing")
    return json.loads(path.read_text())


def render(data: Path, page: Path, readme: Path, root: Path, check: bool) -> int:
    runs, benches, card = load_runs(data), load_benches(data), model_card(root)
    wanted = {page: render_page(runs, benches, card),
              readme: replace_block(readme.read_text(), render_block(runs, benches, card), readme)}
    stale = [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    if check:
        for path in stale:
            old = path.read_text().splitlines() if path.is_file() else []
            diff = difflib.unified_diff(old, wanted[path].splitlines(), str(path), "rendered", lineterm="", n=1)
            print("\n".join(list(diff)[:40]), file=sys.stderr)
        if stale:
            print(f"stale: {', '.join(map(str, stale))}; run `python scripts/results.py render`", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="results.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "docs/results", help="collected data (docs/results)")
    parser.add_argument("--page", type=Path, default=ROOT / "docs/results.md", help="page to render")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README with the results block")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("collect-run", help="collect finished run folders")
    run.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    run.add_argument("--name", help="store under this name instead of the scenario's (one RUN_DIR)")
    run.add_argument("--note", help="conditions worth reading beside the figures, e.g. 'shared: load average 5'")
    bench = commands.add_parser("collect-bench", help="collect a `stagepilot bench ... --json` output")
    bench.add_argument("name", metavar="NAME")
    bench.add_argument("file", metavar="FILE.json", help="the JSON, or - for stdin")
    bench.add_argument("--date", help="measurement date (default: today)")
    bench.add_argument("--note", help="conditions worth reading beside the figures")
    drive = commands.add_parser("drive", help="drive the result set and collect it")
    drive.add_argument("scenarios", nargs="*", default=list(DRIVES), metavar="SCENARIO")
    drive.add_argument("--out", type=Path, default=ROOT / "runs/results", help="where the run folders go")
    benches = commands.add_parser("bench", help="run the benches and collect them")
    benches.add_argument("kinds", nargs="*", metavar="BENCH", help=f"any of {', '.join(BENCHES)} (default: all)")
    for sub in (run, bench, drive, benches):
        sub.add_argument("--no-render", action="store_true", help="collect only")
    page = commands.add_parser("render", help="write docs/results.md and the README's results block")
    page.add_argument("--check", action="store_true", help="write nothing; exit 1 if either file is stale")
    args = parser.parse_args(argv)
    try:
        if args.command == "collect-run":
            if args.name and len(args.run_dirs) > 1:
                raise ResultsError("--name takes one RUN_DIR")
            for run_dir in args.run_dirs:
                print(f"collected {collect_run(run_dir, args.data, args.name, args.note)}")
        elif args.command == "collect-bench":
            print(f"collected {collect_bench(args.name, args.file, args.data, args.date, args.note)}")
        elif args.command == "drive":
            drive_all(args.scenarios, args.out, args.data)
        elif args.command == "bench":
            bench_all(args.kinds or list(BENCHES), args.data)
        if args.command == "render" or not args.no_render:
            return render(args.data, args.page, args.readme, ROOT, getattr(args, "check", False))
    except KeyError as error:
        print(f"results.py: error: the collected data has no key {error} (written by another version?)",
              file=sys.stderr)
        return 2
    except (ResultsError, subprocess.CalledProcessError) as error:
        print(f"results.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

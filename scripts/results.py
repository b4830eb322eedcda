"""The results page: collect drive and benchmark figures, render docs/results.md and the README's block.

    python scripts/results.py collect-run RUN_DIR...           # metrics.json, run.json, config.yaml + machine.json
    python scripts/results.py collect-bench NAME FILE.json|-   # a `stagepilot bench ... --json` output
    python scripts/results.py drive [SCENARIO...]              # drive the result set, then collect it
    python scripts/results.py bench [sim plan control perception]   # run the benches, then collect them
    python scripts/results.py render [--check]                 # docs/results.md and README.md from docs/results/

Every collect re-renders, so README.md and docs/results.md always show what docs/results/ holds.
`render --check` writes nothing and exits 1 when either file differs from what render would write.
Only the standard library and yaml: the page can be rebuilt without the stack's dependencies.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RUN_FILES = ("metrics.json", "run.json", "config.yaml")  # small files only; never the video
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
DEFAULT_DRIVE = "town_loop"  # what `make drive` drives
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
# nuPlan's comfort bounds at the 95th percentile; the same values as NUPLAN_BOUNDS in the
# stack's driving metrics (a test keeps the two equal).
NUPLAN_BOUNDS = {"lon_accel_min": -4.05, "lon_accel_max": 2.40, "lat_accel_abs": 4.89,
                 "yaw_rate_abs": 0.95, "lon_jerk_abs": 4.13}
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
MODEL_CARD = Path("perception/weights/MODEL_CARD.md")
REGENERATE = ("python scripts/results.py drive && python scripts/results.py bench",
              "python scripts/results.py collect-run RUN_DIR...")


class ResultsError(Exception):
    pass


# ---------------------------------------------------------------- machine


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


def machine_label(machine: dict) -> str:
    """'AMD EPYC, 2 cores' (+ ', GPU NAME')."""
    label = f"{machine['cpu']}, {machine['cores']} cores" if machine.get("cores") else machine["cpu"]
    return label + (f", {machine['gpu']}" if machine.get("gpu") else "")


# ---------------------------------------------------------------- collect


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
        command = [_stagepilot(), "drive", "--quiet", "--scenario", scenario, "--out", str(run_dir), *DRIVES[scenario]]
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


def model_card(root: Path) -> dict | None:
    """The shipped model's bars and per-class AP tables, and its training date and machine, from its card."""
    path = root / MODEL_CARD
    if not path.is_file():
        return None
    text = path.read_text()
    title = re.search(r"^# Model card: `([^`]+)`", text, flags=re.M)
    when = re.search(r"^Time: .*?(?: on the (.+?))?,? (\d{4}-\d\d-\d\d)\.?$", text, flags=re.M)
    bars, per_class = _table(text, "| figure | value | bar |"), _table(text, "| class | AP@0.5 | AP@0.5:0.95 |")
    if not title or not when or not bars:
        raise ResultsError(f"{path}: no title, bars table or 'Time: ... on the MACHINE, DATE.' line")
    return {"architecture": title.group(1), "bars": bars, "per_class": per_class,
            "machine": when.group(1) or "machine not stated", "date": when.group(2)}


def _table(text: str, header: str) -> list[list[str]]:
    """The body rows of the markdown table that starts with `header`."""
    lines = text[text.find(header):].splitlines()[2:] if header in text else []
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


# ---------------------------------------------------------------- figures


def ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def outcome_text(outcome: dict, with_time: bool = False) -> str:
    after = f" after {outcome['duration_s']:.1f} s" if with_time else ""
    if outcome.get("error"):
        return f"error{after}: {outcome['error']}"
    if outcome.get("interrupted"):
        return f"interrupted{after}"
    if outcome["completed"]:
        return "route completed" + (f" in {outcome['duration_s']:.1f} s" if with_time else "")
    return f"route not completed at the {outcome['duration_s']:.0f} s limit"


def route_text(outcome: dict) -> str:
    done, total = outcome["route_progress_m"], outcome["route_length_m"]
    return f"{done:.0f} of {total:.0f} m, {100 * done / total:.0f} %"


def comfort_checks(comfort: dict) -> list[tuple[str, float, str, bool]]:
    """(name, value, bound text, within) per nuPlan figure."""
    b = NUPLAN_BOUNDS
    return [
        ("longitudinal acceleration p5 [m/s²]", comfort["lon_accel_p5"], f"≥ {b['lon_accel_min']}",
         comfort["lon_accel_p5"] >= b["lon_accel_min"]),
        ("longitudinal acceleration p95 [m/s²]", comfort["lon_accel_p95"], f"≤ {b['lon_accel_max']:.2f}",
         comfort["lon_accel_p95"] <= b["lon_accel_max"]),
        ("abs. lateral acceleration p95 [m/s²]", comfort["lat_accel_abs_p95"], f"≤ {b['lat_accel_abs']}",
         comfort["lat_accel_abs_p95"] <= b["lat_accel_abs"]),
        ("abs. yaw rate p95 [rad/s]", comfort["yaw_rate_abs_p95"], f"≤ {b['yaw_rate_abs']}",
         comfort["yaw_rate_abs_p95"] <= b["yaw_rate_abs"]),
        ("abs. longitudinal jerk p95 [m/s³]", comfort["lon_jerk_abs_p95"], f"≤ {b['lon_jerk_abs']}",
         comfort["lon_jerk_abs_p95"] <= b["lon_jerk_abs"]),
    ]


def comfort_cell(value: float, within: bool, bound: str) -> str:
    return f"{value:.2f}" if within else f"**{value:.2f}** (outside {bound})"


def comfort_summary(comfort: dict) -> str:
    outside = [f"{name.split(' [')[0].removeprefix('abs. ')} {value:.2f} {name.split('[')[1].rstrip(']')} "
               f"against its bound {bound}"
               for name, value, bound, within in comfort_checks(comfort) if not within]
    return "inside nuPlan's comfort bounds" if not outside else "outside nuPlan's bounds: " + "; ".join(outside)


def stamp(machine: dict) -> str:
    """'DATE, MACHINE' and the collector's note on the conditions, if any."""
    note = f" ({machine['note']})" if machine.get("note") else ""
    return f"{machine['date']}, {machine_label(machine)}{note}"


def drive_setup(run: dict) -> str:
    config, outcome = run["config"], run["metrics"]["outcome"]
    parts = [f"seed {run['run']['scenario']['seed']}"]
    if config:
        parts += [f"{config['perception']['kind']} perception", f"`{config['controller']['kind']}`"]
    parts.append(f"`{outcome['time_model']}` time model" + (", pipelined" if outcome.get("pipelined") else ""))
    return ", ".join(parts)


def events_text(outcome: dict) -> str:
    counts = [("collisions", "collision"), ("red_lights", "red light run"), ("off_road", "off-road"),
              ("lane_departures", "lane departure"), ("contacts_at_standstill", "contact at standstill"),
              ("failsafe_frames", "fail-safe frame")]
    found = [f"{outcome[k]} {word}{'s' if outcome[k] != 1 else ''}" for k, word in counts if outcome.get(k)]
    return ", ".join(found) if found else "none"


def over_budget_text(stage: dict) -> str:
    over, count = stage["over_budget"], stage["count"]
    return f"{over} of {count} ({100 * over / count:.0f} %)" if over else "0"


# ---------------------------------------------------------------- render: docs/results.md


def render_page(runs: dict, benches: dict, card: dict | None) -> str:
    lines = [
        "# Results",
        "",
        "<!-- Written by scripts/results.py from docs/results/; edit the data or the script, not this page. -->",
        "",
        "Every figure of a stagepilot drive or benchmark, with the date and machine it was measured on.",
        "The README's figures are taken from the same data. Regenerate with:",
        "",
        "```sh",
        f"{REGENERATE[0]}   # drive the result set and run the benches, then render",
        f"{REGENERATE[1]}   # or collect drives made elsewhere (metrics.json, run.json)",
        "python scripts/results.py collect-bench NAME FILE.json         # a `stagepilot bench ... --json` output",
        "python scripts/results.py render --check                       # exits 1 if this page or the README is stale",
        "```",
        "",
        "The data lives in `docs/results/`: per drive its `metrics.json`, `run.json`, `config.yaml` and",
        "`machine.json` (CPU model, cores, SIMD flags, GPU, date), per benchmark its JSON and",
        "`NAME.machine.json`.",
        "",
    ]
    lines += _machines_table(runs, benches)
    if runs:
        lines += _drives_section(runs)
    if benches:
        lines += _bench_section(benches)
    if card:
        lines += _card_section(card)
    return "\n".join(lines).rstrip() + "\n"


def _machines_table(runs: dict, benches: dict) -> list[str]:
    machines = {}
    for item in [r["machine"] for r in runs.values()] + [b["machine"] for b in benches.values()]:
        machines.setdefault(machine_label(item), item)
    lines = ["## Machines", "", "| machine | architecture | SIMD flags | GPU |", "|---|---|---|---|"]
    for label, item in machines.items():
        lines.append(f"| {label} | {item.get('arch', '')} | {', '.join(item.get('flags', [])) or 'none listed'} "
                     f"| {item.get('gpu') or 'none'} |")
    return lines + [""]


def _drives_section(runs: dict) -> list[str]:
    lines = ["## Drives", "",
             "Embedded simulator, `stagepilot drive`. Outcome, events and path tracking (rear-axle lateral",
             "error to the reference path):", "",
             "| drive | setup | outcome | route | duration | events | lateral error RMS / max | date, machine |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        m = run["metrics"]
        o, t = m["outcome"], m["tracking"]
        lines.append(f"| {name} | {drive_setup(run)} | {outcome_text(o)} | {route_text(o)} | "
                     f"{o['duration_s']:.1f} s | {events_text(o)} | "
                     f"{t['lateral_rms_m']:.3f} / {t['lateral_max_m']:.2f} m | {stamp(run['machine'])} |")
    lines += ["", "Comfort at the 95th percentile against nuPlan's bounds (bold: outside its bound):", ""]
    checks = comfort_checks(next(iter(runs.values()))["metrics"]["comfort"])
    lines.append("| drive | " + " | ".join(f"{name} ({bound})" for name, _, bound, _ in checks) + " | date, machine |")
    lines.append("|---" * (len(checks) + 2) + "|")
    for name, run in runs.items():
        cells = [comfort_cell(v, ok, bound) for _, v, bound, ok in comfort_checks(run["metrics"]["comfort"])]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {stamp(run['machine'])} |")
    lines += ["", "Per-stage latency on the wall clock. A miss is a stage over its budget in the time model's",
              "own terms; under `budget` a wall-clock overrun does not change the drive and is counted in",
              "\"over budget (wall)\". Sensor-to-actuator is the latency charged from frame to command:", ""]
    for name, run in runs.items():
        lines += _latency_table(name, run)
    return lines


def _latency_table(name: str, run: dict) -> list[str]:
    m = run["metrics"]
    s2a = m["sensor_to_actuator_ms"]
    lines = [f"**{name}** ({m['outcome']['frames']} frames; {stamp(run['machine'])})", "",
             "| stage | budget | p50 | p95 | p99 | max | misses | over budget (wall) |",
             "|---|---|---|---|---|---|---|---|"]
    for stage, t in m["latency"].items():
        p50 = ms(t["p50_ms"]) + (" (over budget)" if t["p50_ms"] > t["budget_ms"] else "")
        lines.append(f"| {stage} | {t['budget_ms']:g} ms | {p50} | {ms(t['p95_ms'])} | {ms(t['p99_ms'])} | "
                     f"{ms(t['max_ms'])} | {t['misses']} | {over_budget_text(t)} |")
    lines.append(f"| sensor to actuator | | {ms(s2a['p50_ms'])} | | {ms(s2a['p99_ms'])} | {ms(s2a['max_ms'])} | | |")
    extra = [f"{len(m.get('misses', []))} misses logged", f"{len(m.get('failsafes', []))} fail-safes"]
    return lines + ["", "; ".join(extra) + ".", ""]


def _bench_section(benches: dict) -> list[str]:
    lines = ["## Benchmarks", ""]
    for name, bench in benches.items():
        r, kind = bench["result"], bench["kind"]
        lines += [f"**{name}** (`stagepilot bench {kind} --json`; {stamp(bench['machine'])})", "",
                  "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in BENCH_ROWS[kind](r)]
        lines.append("")
    return lines


def _sim_rows(r: dict) -> list[tuple[str, str]]:
    return [("camera frames per second (one core)", f"{r['frames_per_s']:g} ({r['camera']})"),
            ("frame p50 / p99 / max", f"{ms(r['frame']['p50_ms'])} / {ms(r['frame']['p99_ms'])} / {ms(r['frame']['max_ms'])}"),
            ("world steps per second, cameras off", f"{r['steps_per_s']:g}"),
            ("step p50 / p99 / max", f"{ms(r['step']['p50_ms'])} / {ms(r['step']['p99_ms'])} / {ms(r['step']['max_ms'])}"),
            ("scene", f"{r['scenario']}: {r['actors']} actors, {r['static_boxes']} static boxes"),
            ("threads", r["threads"])]


def _plan_rows(r: dict) -> list[tuple[str, str]]:
    return [("lattice planner p50 / p99 / max", f"{ms(r['p50_ms'])} / {ms(r['p99_ms'])} / {ms(r['max_ms'])}"),
            ("candidates (median / max)", f"{r['candidates']} / {r['candidates_max']}"),
            ("obstacles, calls, fallbacks", f"{r['obstacles']}, {r['calls']}, {r['fallbacks']}"),
            ("exact (shapely) checks per call, mean", f"{r['exact_checks_mean']:g}"),
            ("exact checks of every footprint alone, p50",
             ms(r["naive_exact_collision_p50_ms"]) if r.get("naive_exact_collision_p50_ms") else "not run")]


def _control_rows(r: dict) -> list[tuple[str, str]]:
    horizon = f", horizon {r['horizon']}" if r.get("horizon") else ""
    return [("controller", f"{r['controller']}{horizon}"),
            ("step p50 / p99 / max", f"{ms(r['p50_ms'])} / {ms(r['p99_ms'])} / {ms(r['max_ms'])}"),
            ("calls, fallbacks", f"{r['calls']}, {r['fallbacks']}")]


def _perception_rows(r: dict) -> list[tuple[str, str]]:
    ours, pair = r["ours"], r["torchvision_pair"]
    return [("ours p50 / p99", f"{ms(ours['p50_ms'])} / {ms(ours['p99_ms'])} ({r['architecture']}, "
                               f"{r['ours_input']}, {r['ours_weights']} weights, {r['params_m']['ours']} M parameters)"),
            ("torchvision pair p50 / p99", f"{ms(pair['p50_ms'])} / {ms(pair['p99_ms'])} (ssdlite320 + lraspp, "
                                           f"{r['params_m']['torchvision_pair']} M parameters)"),
            ("speed-up at p50", f"{r['speedup_p50']:g}x"),
            ("device, dtype, threads", f"{r['device']}, {r['dtype']}, {r['threads']}")]


BENCH_ROWS = {"sim": _sim_rows, "plan": _plan_rows, "control": _control_rows, "perception": _perception_rows}


def _card_section(card: dict) -> list[str]:
    lines = ["## Shipped perception model", "",
             f"From `{MODEL_CARD}` (`{card['architecture']}`, trained {card['date']} on the {card['machine']};",
             "held-out Town02 frames, a map training never sees):", "",
             "| figure | value | bar |", "|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in card["bars"]]
    if card["per_class"]:
        lines += ["", "| class | AP@0.5 | AP@0.5:0.95 |", "|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in card["per_class"]]
    return lines + [""]


def card_headline(card: dict) -> str:
    figures = "; ".join(f"{name} {value}{' m' if 'error' in name else ''} (bar {bar.replace('>=', '≥').replace('<=', '≤').replace(' (', ': ').rstrip(')')})"
                        for name, value, bar in card["bars"])
    text = f"Shipped perception model on its held-out Town02 frames: {figures}"
    if card["per_class"]:
        name, ap, _ = min(card["per_class"], key=lambda row: float(row[1]))
        text += f". Weakest class: {name} (AP@0.5 {ap})"
    return text + f" (`{MODEL_CARD}`, {card['date']}, {card['machine']})."


# ---------------------------------------------------------------- render: README block


def render_block(runs: dict, benches: dict, card: dict | None) -> str:
    lines = [BEGIN, "<!-- Written by `python scripts/results.py render` from docs/results/; "
                    "all figures and their sources: docs/results.md. -->", ""]
    if DEFAULT_DRIVE in runs:
        lines += _default_drive_lines(runs[DEFAULT_DRIVE])
    else:
        lines += [f"The default drive ({DEFAULT_DRIVE}) has not been collected yet: "
                  f"`python scripts/results.py drive {DEFAULT_DRIVE}`.", ""]
    others = {k: v for k, v in runs.items() if k != DEFAULT_DRIVE}
    if others:
        lines += ["Scenario drives:", "",
                  "| drive | setup | outcome | lateral error RMS / max | comfort (nuPlan, p95) | date, machine |",
                  "|---|---|---|---|---|---|"]
        for name, run in others.items():
            m = run["metrics"]
            o, t = m["outcome"], m["tracking"]
            outcome = f"{outcome_text(o, with_time=True)} ({route_text(o)}); events: {events_text(o)}"
            lines.append(f"| {name} | {drive_setup(run)} | {outcome} | "
                         f"{t['lateral_rms_m']:.3f} / {t['lateral_max_m']:.2f} m | {comfort_summary(m['comfort'])} | "
                         f"{stamp(run['machine'])} |")
        lines.append("")
    if benches:
        lines += ["Benchmarks:", "", "| bench | figures | date, machine |", "|---|---|---|"]
        lines += [f"| `{name}` | {BENCH_HEADLINE[b['kind']](b['result'])} | {stamp(b['machine'])} |"
                  for name, b in benches.items()]
        lines.append("")
    if card:
        lines += [card_headline(card), ""]
    return "\n".join(lines + [END])


def _default_drive_lines(run: dict) -> list[str]:
    m = run["metrics"]
    o, t, s2a = m["outcome"], m["tracking"], m["sensor_to_actuator_ms"]
    lines = [f"The default drive (`make drive`: {DEFAULT_DRIVE}, {drive_setup(run)}; "
             f"{stamp(run['machine'])}): {outcome_text(o, with_time=True)} ({route_text(o)}); "
             f"events: {events_text(o)}; rear-axle lateral error {t['lateral_rms_m']:.2f} m RMS "
             f"(max {t['lateral_max_m']:.2f} m); {comfort_summary(m['comfort'])}.", "",
             "| stage | budget | p50 | p99 | max | misses | over budget (wall clock) |", "|---|---|---|---|---|---|---|"]
    for stage, s in m["latency"].items():
        p50 = ms(s["p50_ms"]) + (f" (over its {s['budget_ms']:g} ms budget)" if s["p50_ms"] > s["budget_ms"] else "")
        lines.append(f"| {stage} | {s['budget_ms']:g} ms | {p50} | {ms(s['p99_ms'])} | {ms(s['max_ms'])} | "
                     f"{s['misses']} | {over_budget_text(s)} |")
    lines += ["", f"Sensor-to-actuator latency charged: p50 {ms(s2a['p50_ms'])}, max {ms(s2a['max_ms'])}. Under the",
              "`budget` time model a wall-clock overrun is counted but does not change the drive; "
              "`--time-model measured` charges it.", ""]
    return lines


def _sim_headline(r: dict) -> str:
    return (f"{r['frames_per_s']:g} camera frames/s ({r['camera']}), {r['steps_per_s']:g} world steps/s; "
            f"one core, {r['scenario']}")


def _plan_headline(r: dict) -> str:
    return (f"lattice planner p50 {ms(r['p50_ms'])}, p99 {ms(r['p99_ms'])}, max {ms(r['max_ms'])}; "
            f"{r['candidates']} candidates, {r['obstacles']} obstacles")


def _control_headline(r: dict) -> str:
    return f"{r['controller']} step p50 {ms(r['p50_ms'])}, p99 {ms(r['p99_ms'])}, max {ms(r['max_ms'])}"


def _perception_headline(r: dict) -> str:
    return (f"network path p50 {ms(r['ours']['p50_ms'])}, p99 {ms(r['ours']['p99_ms'])}; torchvision "
            f"ssdlite320 + lraspp p50 {ms(r['torchvision_pair']['p50_ms'])}: {r['speedup_p50']:g}x at p50 "
            f"({r['device']}, {r['dtype']}, {r['threads']} threads)")


BENCH_HEADLINE = {"sim": _sim_headline, "plan": _plan_headline, "control": _control_headline,
                  "perception": _perception_headline}


def replace_block(readme: str, block: str, path: Path) -> str:
    begin, end = readme.find(BEGIN), readme.find(END)
    if begin < 0 or end < begin:
        raise ResultsError(f"{path}: no {BEGIN} ... {END} block")
    return readme[:begin] + block + readme[end + len(END):]


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

"""Render docs/results.md and the README's results block from the collected figures
(scripts/results.py collects them and calls this)."""

from __future__ import annotations

import re
from pathlib import Path

from stagepilot.pipeline.metrics import NUPLAN_BOUNDS

from results_bench import BENCH_HEADLINE, BENCH_ROWS, ms  # beside this script

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
DEFAULT_DRIVE = "town_loop"  # what `make drive` drives
MODEL_CARD = Path("perception/weights/MODEL_CARD.md")
REGENERATE = ("python scripts/results.py drive && python scripts/results.py bench",
              "python scripts/results.py collect-run RUN_DIR...")



class ResultsError(Exception):
    pass


# ---------------------------------------------------------------- machine


def cpu_path(flags: list[str]) -> str:
    """What the CPU offers the network: native bf16 (AVX-512 BF16 or AMX), or AVX2 only."""
    if {"amx_bf16", "avx512_bf16"} & set(flags):
        return "bf16 (" + " + ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) + ")"
    return "AVX2 only, no bf16" if "avx2" in flags else "no AVX2"


def machine_label(machine: dict) -> str:
    """'AMD EPYC, 2 cores, bf16 (avx512_bf16)' (+ ', GPU NAME')."""
    label = f"{machine['cpu']}, {machine['cores']} cores" if machine.get("cores") else machine["cpu"]
    if machine.get("flags") is not None:
        label += f", {cpu_path(machine['flags'])}"
    return label + (f", {machine['gpu']}" if machine.get("gpu") else "")


# ---------------------------------------------------------------- collect


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
              "\"over budget (wall)\". Sensor to actuator runs from the capture of the frame behind each "
              "command (a held one's own) to the tick the command applies; the charged delay is the "
              "runtime's part of it (drives recorded before the first was kept show the charged delay alone):", ""]
    for name, run in runs.items():
        lines += _latency_table(name, run)
    return lines


def _latency_table(name: str, run: dict) -> list[str]:
    m = run["metrics"]
    lines = [f"**{name}** ({m['outcome']['frames']} frames; {stamp(run['machine'])})", "",
             "| stage | budget | p50 | p95 | p99 | max | misses | over budget (wall) |",
             "|---|---|---|---|---|---|---|---|"]
    for stage, t in m["latency"].items():
        p50 = ms(t["p50_ms"]) + (" (over budget)" if t["p50_ms"] > t["budget_ms"] else "")
        lines.append(f"| {stage} | {t['budget_ms']:g} ms | {p50} | {ms(t['p95_ms'])} | {ms(t['p99_ms'])} | "
                     f"{ms(t['max_ms'])} | {t['misses']} | {over_budget_text(t)} |")
    for label, row in _delay_rows(m):
        lines.append(f"| {label} | | {ms(row['p50_ms'])} | | {ms(row['p99_ms'])} | {ms(row['max_ms'])} | | |")
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
    o, t = m["outcome"], m["tracking"]
    lines = [f"The default drive (`make drive`: {DEFAULT_DRIVE}, {drive_setup(run)}; "
             f"{stamp(run['machine'])}): {outcome_text(o, with_time=True)} ({route_text(o)}); "
             f"events: {events_text(o)}; rear-axle lateral error {t['lateral_rms_m']:.2f} m RMS "
             f"(max {t['lateral_max_m']:.2f} m); {comfort_summary(m['comfort'])}.", "",
             "| stage | budget | p50 | p99 | max | misses | over budget (wall clock) |", "|---|---|---|---|---|---|---|"]
    for stage, s in m["latency"].items():
        p50 = ms(s["p50_ms"]) + (f" (over its {s['budget_ms']:g} ms budget)" if s["p50_ms"] > s["budget_ms"] else "")
        lines.append(f"| {stage} | {s['budget_ms']:g} ms | {p50} | {ms(s['p99_ms'])} | {ms(s['max_ms'])} | "
                     f"{s['misses']} | {over_budget_text(s)} |")
    delays = "; ".join(f"{label}: p50 {ms(row['p50_ms'])}, p99 {ms(row['p99_ms'])}, max {ms(row['max_ms'])}"
                       for label, row in _delay_rows(m))
    lines += ["", f"{delays[0].upper()}{delays[1:]}. Under the",
              "`budget` time model a wall-clock overrun is counted but does not change the drive; "
              "`--time-model measured` charges it.", ""]
    return lines


def _delay_rows(m: dict) -> list[tuple[str, dict]]:
    """(label, percentiles): sensor to actuator and the charged delay; a drive recorded before
    the two were told apart has the charged delay under the first name."""
    if "charged_delay_ms" not in m:
        return [("charged delay", m["sensor_to_actuator_ms"])]
    return [("sensor to actuator (capture to the command's tick)", m["sensor_to_actuator_ms"]),
            ("charged delay", m["charged_delay_ms"])]


def replace_block(readme: str, block: str, path: Path) -> str:
    begin, end = readme.find(BEGIN), readme.find(END)
    if begin < 0 or end < begin:
        raise ResultsError(f"{path}: no {BEGIN} ... {END} block")
    return readme[:begin] + block + readme[end + len(END):]

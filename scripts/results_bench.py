"""Each benchmark's figures as table rows (docs/results.md) and as one line (the README's block):
`stagepilot bench NAME --json` output in, text out (scripts/results_render.py uses these)."""

from __future__ import annotations


def ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def _with_zoom(r: dict) -> str:
    """The perception bench's frame with its horizon zoom (perception/zoom.py), when it timed one."""
    zoom = r.get("ours_with_zoom")
    return (f"; with the horizon zoom p50 {ms(zoom['p50_ms'])}, p99 {ms(zoom['p99_ms'])}, "
            f"{r['speedup_p50_with_zoom']:g}x" if zoom else "")


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
            ("speed-up at p50", f"{r['speedup_p50']:g}x{_with_zoom(r)}"),
            ("device, dtype, threads", f"{r['device']}, {r['dtype']}, {r['threads']}")]


BENCH_ROWS = {"sim": _sim_rows, "plan": _plan_rows, "control": _control_rows, "perception": _perception_rows}


def _sim_headline(r: dict) -> str:
    return (f"{r['frames_per_s']:g} camera frames/s ({r['camera']}), {r['steps_per_s']:g} world steps/s; "
            f"one core, {r['scenario']}")


def _plan_headline(r: dict) -> str:
    return (f"lattice planner p50 {ms(r['p50_ms'])}, p99 {ms(r['p99_ms'])}, max {ms(r['max_ms'])}; "
            f"{r['candidates']} candidates, {r['obstacles']} obstacles"
            + (f"; fallback stops in {r['fallbacks']} of {r['calls']} calls" if "fallbacks" in r else ""))


def _control_headline(r: dict) -> str:
    return f"{r['controller']} step p50 {ms(r['p50_ms'])}, p99 {ms(r['p99_ms'])}, max {ms(r['max_ms'])}"


def _perception_headline(r: dict) -> str:
    return (f"network path p50 {ms(r['ours']['p50_ms'])}, p99 {ms(r['ours']['p99_ms'])}; torchvision "
            f"ssdlite320 + lraspp p50 {ms(r['torchvision_pair']['p50_ms'])}: {r['speedup_p50']:g}x at p50"
            f"{_with_zoom(r)} ({r['device']}, {r['dtype']}, {r['threads']} threads)")


BENCH_HEADLINE = {"sim": _sim_headline, "plan": _plan_headline, "control": _control_headline,
                  "perception": _perception_headline}

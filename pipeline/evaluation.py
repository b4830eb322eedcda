"""`stagepilot evaluate`: a scenario suite driven in parallel, each drive scored, one number.

The suite (sim/suites.py) is sampled into concrete scenarios, deterministically from its seed.
Each scenario is one job: a fresh process (or Ray task) loads the stack config, drives the
scenario through the one driver (pipeline/driver.py) with the run folder writer, the recorder
and the criteria observer, and returns its score (pipeline/score.py). A job that raises is
recorded as failed, with its error and a driving score of 0, and the others go on.

Backends: `local` (a process pool of `--workers`; each worker gets cores / workers torch
threads so that they do not oversubscribe the CPU) and `ray` (each job a Ray task with one
CPU; `--ray-address` joins a cluster, otherwise a local Ray starts). Both run the same job
function, so they give the same scores; the order of results is the suite's, whatever order
the jobs finish in.

With perfect perception of `coverage: all` the cameras are not rendered unless `--video` asks
for them: that stand-in reads no pixels, and the drives are the same frame for frame (checked on
three families' draws: identical outcome and trajectory), three times faster. The default
`coverage: rig` needs the rig's images: what the cameras see is what it reports.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stagepilot.core.config import ConfigError, config_hash, load_stack
from stagepilot.pipeline.interrupts import SignalsInterrupt
from stagepilot.pipeline.provenance import write_json

SCORE_FIELDS = ("driving_score", "route_completion", "infraction_penalty", "infractions",
                "outside_route_lanes_pct", "status", "min_ttc_s")


@dataclass
class EvaluationResult:
    suite: str
    out_dir: Path
    scenarios: list[dict[str, Any]]  # one per scenario, in the suite's order
    config_hash: str
    backend: str
    workers: int
    wall_s: float
    families: dict[str, float] = field(default_factory=dict)  # mean driving score per family

    @property
    def mean_driving_score(self) -> float:
        scores = [s["driving_score"] for s in self.scenarios]
        return sum(scores) / len(scores) if scores else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "mean_driving_score": round(self.mean_driving_score, 3),
                "families": {k: round(v, 3) for k, v in self.families.items()}, "config_hash": self.config_hash,
                "backend": self.backend, "workers": self.workers, "wall_s": round(self.wall_s, 2),
                "scenarios": self.scenarios}


# ---------------------------------------------------------------- one job (runs in a worker)


def _set_threads(threads: int) -> None:
    """`threads` for every thread pool a drive uses: torch, OpenMP/BLAS (numpy) and OpenCV."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import cv2

    cv2.setNumThreads(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def run_scenario(job: dict[str, Any]) -> dict[str, Any]:
    """Drive and score one scenario; never raises for a failing drive (returns it as failed)."""
    if job["threads"] != (os.cpu_count() or 1):  # a worker's share of the cores
        _set_threads(job["threads"])
    from stagepilot.pipeline.driver import drive
    from stagepilot.pipeline.recorder import Recorder
    from stagepilot.pipeline.score import CriteriaObserver, score_drive
    from stagepilot.pipeline.writer import RunWriter
    from stagepilot.sim.scenario import Scenario

    entry = {"id": job["id"], "family": job["family"], "params": job["params"], "run_dir": job["out_dir"]}
    start = time.perf_counter()
    try:
        config = load_stack(job["config_files"], job["overrides"])
        scenario = Scenario.model_validate(job["scenario"])
        if job.get("map_text"):  # a Ray node need not have the map where the driver found it
            local_map = Path(tempfile.mkdtemp(prefix="stagepilot-map-")) / Path(scenario.map_path).name
            local_map.write_text(job["map_text"])
            scenario = scenario.model_copy(update={"map_path": str(local_map)})
        out = Path(job["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        criteria = CriteriaObserver()
        observers = [RunWriter(out, config, scenario, video=job["video"]), criteria]
        if job["record"]:
            observers.append(Recorder(out / "drive.mcap", config, scenario))
        # Cameras render only when something looks at them: the network, the rig oracle's
        # visibility, or the video (pipeline/evaluation.py docstring).
        perception = config.perception
        render = perception.kind == "learned" or perception.perfect.coverage == "rig" or job["video"]
        result = drive(config, scenario, observers=tuple(observers), render=render)
        score = score_drive(result, criteria, blocked_s=job["blocked_s"])
    except Exception as exc:  # reported, and the suite goes on
        return {**entry, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "driving_score": 0.0,
                "route_completion": 0.0, "infraction_penalty": 0.0, "infractions": {},
                "wall_s": round(time.perf_counter() - start, 2)}
    latency = {stage: row["p99_ms"] for stage, row in result.latency.items()}
    return {**entry, **score.as_dict(), "latency_p99_ms": latency, "duration_s": result.outcome["duration_s"],
            "wall_s": round(time.perf_counter() - start, 2)}


# ---------------------------------------------------------------- backends


def _worker_init(threads: int) -> None:
    _set_threads(threads)


def _longest_first(jobs: list[dict]) -> list[dict]:
    """Jobs in the order that keeps every worker busy to the end: the longest scenarios (by
    their time limit) first, so that no long one starts last."""
    return sorted(jobs, key=lambda job: -float(job["scenario"].get("duration_s", 0.0)))


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """A one-line ConfigError, before anything runs, when `address` (host:port or
    ray://host:port) does not answer."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address}: expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"--ray-address {address}: cannot reach the Ray cluster ({exc.strerror or exc})") from None


class ScenarioPool:
    """Scenario jobs (run_scenario) on `workers` local processes or as Ray tasks, for callers
    that schedule the jobs themselves: `submit` a job, `wait` for any of the handles, read its
    `result`. One local worker runs each job in this process, when it is submitted.

    `isolate` runs even a single local worker in a process of its own, so that Ctrl-C reaches
    the caller between jobs' results rather than inside a drive."""

    def __init__(self, backend: str = "local", workers: int = 1, ray_address: str | None = None,
                 isolate: bool = False):
        if backend not in ("local", "ray"):
            raise ConfigError(f"--backend {backend}: expected local or ray")
        self.backend, self.workers, self.ray_address, self.isolate = backend, workers, ray_address, isolate
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._pool: ProcessPoolExecutor | None = None
        self._ray = None
        self._started_ray = False
        self._task = None
        self._signals = SignalsInterrupt()  # `kill` stops the workers too, as Ctrl-C does

    def __enter__(self) -> ScenarioPool:
        if self.backend == "ray":
            try:
                import ray
            except ImportError:
                raise ConfigError("--backend ray: Ray is not installed (pip install 'stagepilot[ray]')") from None
            if self.ray_address:
                check_ray_address(self.ray_address)
            self._ray = ray
            self._started_ray = not ray.is_initialized()
            if self._started_ray:
                kwargs = {"address": self.ray_address} if self.ray_address else {
                    "num_cpus": self.workers, "include_dashboard": False}
                ray.init(log_to_driver=False, **kwargs)
            self._task = ray.remote(num_cpus=1)(run_scenario)
        elif self.workers > 1 or self.isolate:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"),
                                             initializer=_worker_init, initargs=(self.threads,))
        if not self.inline:
            self._signals.__enter__()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._signals.__exit__(exc_type, *exc)
        if self._pool is not None:
            interrupted = exc_type is not None and issubclass(exc_type, BaseException) and not issubclass(
                exc_type, Exception)
            if interrupted:  # Ctrl-C: do not wait for the drives in flight
                for process in list(getattr(self._pool, "_processes", {}).values()):
                    process.terminate()
            self._pool.shutdown(wait=not interrupted, cancel_futures=True)
            self._pool = None
        if self._ray is not None and self._started_ray:
            self._ray.shutdown()
        self._ray = None

    @property
    def inline(self) -> bool:
        """Jobs run in this process, one at a time."""
        return self._pool is None and self._ray is None

    def submit(self, job: dict[str, Any]):
        if self._ray is not None:
            return self._task.remote(job)
        if self._pool is not None:
            return self._pool.submit(run_scenario, job)
        future: Future = Future()
        future.set_result(run_scenario(job))
        return future

    def wait(self, handles: list, timeout: float | None = None) -> list:
        """The handles among `handles` that are done (at least one unless `timeout` passed)."""
        if not handles:
            return []
        if self._ray is not None:
            done, _ = self._ray.wait(list(handles), num_returns=1, timeout=timeout)
            return done
        done, _ = futures_wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle) -> dict[str, Any]:
        return self._ray.get(handle) if self._ray is not None else handle.result()


def run_jobs(jobs: list[dict], pool: ScenarioPool, bar: tqdm) -> list[dict]:
    """Every job, as many at a time as the pool has workers (longest first; in order on one
    worker in this process); results in finishing order."""
    if pool.inline:
        results = []
        for job in jobs:
            results.append(run_scenario(job))
            bar.update(1)
        return results
    pending = [pool.submit(job) for job in _longest_first(jobs)]
    results = []
    while pending:
        for handle in pool.wait(pending):
            pending.remove(handle)
            results.append(pool.result(handle))
            bar.update(1)
    return results


def scenario_jobs(sampled, *, config_files=(), overrides=(), out_dir: Path, threads: int, blocked_s: float,
                  video: bool = False, record: bool = True, ship_maps: bool = False) -> list[dict[str, Any]]:
    """One job per sampled scenario (SuiteScenario), in the suite's order; `ship_maps` carries
    each map's text for workers on other machines (Ray)."""
    return [{"id": s.id, "family": s.family, "params": s.params, "scenario": s.scenario.model_dump(mode="json"),
             "config_files": [str(f) for f in config_files], "overrides": list(overrides),
             "out_dir": str((Path(out_dir) / "scenarios" / s.id).resolve()), "video": video, "record": record,
             "blocked_s": blocked_s, "threads": threads,
             "map_text": Path(s.scenario.map_path).read_text() if ship_maps else None} for s in sampled]


# ---------------------------------------------------------------- the suite


def default_out_dir(suite: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"eval-{stamp}-{suite}"


def share_note(config, workers: int) -> None:
    """Say so when parallel workers outnumber the CARLA servers: they take turns (one lease each)."""
    if config.sim.source != "carla":
        return
    from stagepilot.sim.carla.connection import endpoints

    servers = len(endpoints(config.carla))
    if workers > servers:
        print(f"stagepilot: {workers} workers share {servers} CARLA server(s): each drive holds a server, so they "
              "take turns; list more in carla.servers (docs/carla.md)", file=sys.stderr)


def evaluate(suite_name: str, *, config_files=(), overrides=(), workers: int = 1, backend: str = "local",
             ray_address: str | None = None, out_dir: Path | None = None, video: bool = False, record: bool = True,
             maps_dirs=(), show_progress: bool = False) -> EvaluationResult:
    """Sample the suite, run every scenario, score them; everything that can be wrong with the
    input (suite, family, parameter, config, Ray address) is an error before any scenario runs."""
    from stagepilot.sim.suites import load_suite

    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected at least 1")
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend {backend}: expected local or ray")
    suite = load_suite(suite_name)
    config = load_stack(list(config_files), list(overrides))
    sampled = suite.sample(maps_dirs)
    share_note(config, min(workers, len(sampled)))
    if backend == "ray" and ray_address:
        check_ray_address(ray_address)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(suite.name)
    pool = ScenarioPool(backend, workers, ray_address)
    jobs = scenario_jobs(sampled, config_files=config_files, overrides=overrides, out_dir=out_dir,
                         threads=pool.threads, blocked_s=float(suite.criteria.get("blocked_s", 180.0)), video=video,
                         record=record, ship_maps=backend == "ray")
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(jobs), desc=f"evaluate {suite.name}", unit="scenario", disable=not show_progress,
               file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        with pool:
            results = run_jobs(jobs, pool, bar)
    finally:
        bar.close()
    order = {s.id: i for i, s in enumerate(sampled)}
    results.sort(key=lambda r: order[r["id"]])
    evaluation = EvaluationResult(suite.name, out_dir, results, config_hash(config), backend, workers,
                                  time.perf_counter() - start)
    evaluation.families = family_means(results)
    return evaluation


def family_means(results: list[dict]) -> dict[str, float]:
    by_family: dict[str, list[float]] = {}
    for r in results:
        by_family.setdefault(r["family"] or "explicit", []).append(r["driving_score"])
    return {family: sum(v) / len(v) for family, v in sorted(by_family.items())}


def write_results(evaluation: EvaluationResult) -> Path:
    path = evaluation.out_dir / "results.json"
    write_json(path, evaluation.as_dict())  # atomic; NaN and infinities as null
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """A previous evaluation's results.json (or the folder holding it), for --compare."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--compare {path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"--compare {path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list):
        raise ConfigError(f"--compare {path}: not an evaluation's results.json (no scenarios list)")
    return data


def compare_scores(evaluation: EvaluationResult, other: dict[str, Any]) -> dict[str, float | None]:
    """Per scenario id: this evaluation's driving score minus the other's (None: not in it)."""
    before = {s["id"]: s.get("driving_score") for s in other["scenarios"]}
    return {s["id"]: (None if before.get(s["id"]) is None else s["driving_score"] - before[s["id"]])
            for s in evaluation.scenarios}

"""The staged runtime: budgets, time models, miss policies, fail-safe, telemetry, pipelining.

Stages run in order on each sensor frame: perception (Observation -> Perception), planner
(EgoState, Route, Perception -> Plan), controller (EgoState, Plan, t -> Control). The
runtime times every call on the wall clock (synchronising CUDA first when a stage ran on a
GPU) and decides, by the time model, when in sim time each output is ready:

- ideal: every stage takes no sim time; the command applies on its own tick.
- budget: a stage takes its budget (plus any injected delay); deterministic.
- measured: a stage takes what it measured (plus any injected delay).

A stage whose modelled latency exceeds its budget is a miss, handled by its policy: warn
(record it and wait for the output), hold (use the newest output that was ready by the
deadline; a held perception is moved into the current ego frame, a held plan is re-anchored
to the current pose; with nothing earlier, wait for the late output), or failsafe.

The fail-safe is decided here and nowhere else: a missed budget under `failsafe`, perception
older than `stale_input_s`, perception that flags its frame unusable or holds non-finite
numbers, an ego state that is not finite, or a plan or control that is not finite each skip
the remaining stages and command `runtime.failsafe_brake`. Stages refuse such input rather
than brake on their own. The command computed for frame k applies from tick
k + round(latency / dt) until a newer one replaces it; the latency charged to each frame is
recorded, and so is its sensor-to-actuator latency: from the capture of the camera frame
behind the command (a held perception's or a held plan's own frame) to that tick.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from stagepilot.core.config import ConfigError, StackConfig
from stagepilot.pipeline.between_ticks import BetweenTicks
from stagepilot.pipeline.faults import FaultInjector
from stagepilot.core.finite import control_is_finite, ego_is_finite, perception_is_finite, plan_is_finite
from stagepilot.core.messages import Control, EgoState, Observation, Perception, Plan
from stagepilot.core.roadmap import RoadMap
from stagepilot.pipeline.records import FrameRecord
from stagepilot.pipeline.stack import DrivingStack
from stagepilot.pipeline.trace import ChromeTrace

STAGES = ("perception", "planner", "controller")
OUTPUT_IS_FINITE = {"planner": plan_is_finite, "controller": control_is_finite}
OUTPUT_NAME = {"planner": "plan", "controller": "control"}
NO_COMMAND = Control(brake=1.0)  # the actuators before the first command arrives: parked


@dataclass
class StageTelemetry:
    """Per-stage wall-clock latencies and budget misses."""

    name: str
    budget_ms: float
    samples_ms: list[float] = field(default_factory=list)
    misses: int = 0  # late under the time model: the miss policy acted
    over_budget: int = 0  # wall clock over budget, whatever the time model (budget: no effect)
    parts_ms: dict[str, list[float]] = field(default_factory=dict)  # the stage's own parts (core/spans.py)

    def row(self) -> dict:
        ms = np.array(self.samples_ms) if self.samples_ms else np.zeros(1)
        parts = {name: {"p50_ms": round(float(np.percentile(v, 50)), 3), "p99_ms": round(float(np.percentile(v, 99)), 3)}
                 for name, v in self.parts_ms.items()}
        return {
            "count": len(self.samples_ms),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3),
            "budget_ms": self.budget_ms,
            "misses": self.misses,
            "over_budget": self.over_budget,
            **({"parts": parts} if parts else {}),
        }


@dataclass(frozen=True)
class _Ready:
    """A perception output with the sim time it was ready and the ego pose of its frame."""

    perception: Perception
    frame_t: float
    ready_t: float
    ego: EgoState


def _cuda_sync() -> None:
    torch = __import__("sys").modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def reanchor_perception(perception: Perception, then: EgoState, now: EgoState, t: float) -> Perception:
    """Detections and the stop line seen from `then`, re-expressed in the ego frame at `now`
    (objects predicted at constant velocity to time t)."""
    age = t - perception.t
    ct, st = math.cos(then.yaw), math.sin(then.yaw)
    cn, sn = math.cos(now.yaw), math.sin(now.yaw)
    moved = []
    for det in perception.detections:
        ex, ey = det.position
        vx, vy = det.velocity
        wx, wy = then.x + ct * ex - st * ey, then.y + st * ex + ct * ey
        wvx, wvy = ct * vx - st * vy, st * vx + ct * vy
        wx, wy = wx + wvx * age, wy + wvy * age
        dx, dy = wx - now.x, wy - now.y
        moved.append(dataclasses.replace(
            det, position=(cn * dx + sn * dy, -sn * dx + cn * dy),
            yaw=det.yaw + then.yaw - now.yaw, velocity=(cn * wvx + sn * wvy, -sn * wvx + cn * wvy)))
    light = perception.traffic_light
    if light is not None:
        ends = []
        for ex, ey in (light.stop_line[:2], light.stop_line[2:]):
            wx, wy = then.x + ct * ex - st * ey, then.y + st * ex + ct * ey
            dx, dy = wx - now.x, wy - now.y
            ends += [cn * dx + sn * dy, -sn * dx + cn * dy]
        light = dataclasses.replace(light, stop_line=tuple(ends))
    return dataclasses.replace(perception, detections=tuple(moved), traffic_light=light)


def reanchor_plan(plan: Plan, ego: EgoState, t: float) -> Plan:
    """The plan's remaining trajectory shifted so that where it says the ego is now is where
    the ego is."""
    dt = t - plan.t
    x0 = float(np.interp(dt, plan.times, plan.x))
    y0 = float(np.interp(dt, plan.times, plan.y))
    return dataclasses.replace(plan, x=plan.x + (ego.x - x0), y=plan.y + (ego.y - y0))


class StagedRuntime:
    """Runs the stack on each frame under the configured time model and miss policies."""

    def __init__(self, config: StackConfig, road_map: RoadMap | None, stack: DrivingStack | None = None,
                 signal_heads=None):
        self.config = config
        self.runtime = config.runtime
        self.dt = config.sim.dt_s
        self.stack = stack or DrivingStack(config, road_map, signal_heads)
        self.faults = FaultInjector(config.faults)
        stages = self.runtime.stages
        self.budget_s = {name: getattr(stages, name).budget_ms / 1e3 for name in STAGES}
        self.policy = {name: getattr(stages, name).on_miss for name in STAGES}
        self.injected_s = {name: config.faults.stage_delay_ms.get(name, 0.0) / 1e3 for name in STAGES}
        self.telemetry = {name: StageTelemetry(name, getattr(stages, name).budget_ms) for name in STAGES}
        self.trace = ChromeTrace()
        for name in STAGES:  # one track per stage, even for a stage that never ran
            self.trace.tid(name)
        self.wall0 = time.perf_counter()
        self._ready: list[_Ready] = []
        self._last_plan: Plan | None = None
        # planner outputs: (plan, sim time it was ready, capture time of the frame behind it)
        self._plans: list[tuple[Plan, float, float]] = []
        self._source_t: dict[float, float] = {}  # a plan's frame time -> the capture time behind it
        self._last_control: Control = NO_COMMAND
        self._schedule: dict[int, tuple[int, Control]] = {}  # due tick -> (source frame, command)
        self.expected_delay_s = 0.0  # [s] the command delay the controller was last told
        self._applied, self._applied_frame = NO_COMMAND, -1
        self.records: list[FrameRecord] = []
        self.between_ticks = BetweenTicks(self)
        if self.runtime.pipelined and self.runtime.time_model == "ideal":
            raise ConfigError("runtime.pipelined: pipelined execution needs a time model with latency (budget or measured)")

    # ------------------------------------------------------------ timing

    def _timed(self, name: str, frame: int, fn, *args):
        """Run a stage; return (output, measured wall s, modelled sim s)."""
        start = time.perf_counter()
        out = fn(*args)
        _cuda_sync()
        measured = time.perf_counter() - start
        telemetry = self.telemetry[name]
        telemetry.samples_ms.append(measured * 1e3)
        telemetry.over_budget += measured > self.budget_s[name]
        self.trace.stage(name, start - self.wall0, measured, frame)
        spans = getattr(getattr(fn, "__self__", None), "spans", None)
        for part, offset, duration in (spans.parts if spans is not None else ()):
            telemetry.parts_ms.setdefault(part, []).append(duration * 1e3)
            self.trace.part(name, part, start - self.wall0 + offset, duration, frame)
        model = self.runtime.time_model
        modelled = 0.0 if model == "ideal" else (self.budget_s[name] if model == "budget" else measured)
        return out, measured, modelled + self.injected_s[name]

    def _miss(self, name: str, latency_s: float, frame: int, misses: list[str]) -> bool:
        if self.runtime.time_model == "ideal" or latency_s <= self.budget_s[name] + 1e-9:
            return False
        self.telemetry[name].misses += 1
        line = f"{name}: {latency_s * 1e3:.1f} ms > {self.budget_s[name] * 1e3:.0f} ms budget ({self.policy[name]})"
        misses.append(line)
        self.trace.instant("budget miss", time.perf_counter() - self.wall0, stage=name, args={"frame": frame, "detail": line})
        return True

    # ------------------------------------------------------------ one frame

    def perceive(self, obs: Observation) -> tuple[Observation, Perception, float, float]:
        """Faults applied, then perception: (observation as seen, output, measured s, modelled s)."""
        seen = self.faults.apply(obs)
        perception, measured, modelled = self._timed("perception", obs.frame, self.stack.perception.step, seen)
        return seen, perception, measured, modelled

    def decide(self, obs: Observation, perceived: tuple) -> FrameRecord:
        """Planner and controller for one frame, given its perception result. Each stage's
        output goes through its miss policy once (`_settle`); any fault ends in `_failsafe`."""
        seen, perception, p_measured, p_latency = perceived
        t, ego, frame = obs.t, obs.ego, obs.frame
        calls = {"perception": ((seen,), perception)}
        self._ready = [*self._ready[-63:], _Ready(perception, t, t + p_latency, ego)]
        misses: list[str] = []
        measured = {"perception": p_measured * 1e3}
        used, ready_t, failsafe = self._settle("perception", perception, p_latency, t, frame, misses,
                                               lambda due: self._held_perception(ego, t, due))
        failsafe = failsafe or self._input_fault(obs, used, max(ready_t, t))
        plan, control = self._last_plan, self._last_control
        if failsafe is None:
            plan, ready_t, failsafe = self._run("planner", frame, ready_t, misses, measured, calls,
                                                (ego, obs.route, used, t), lambda due: self._held_plan(ego, t, due))
        if failsafe is None:
            self._tell_controller(t, ready_t)
            control, ready_t, failsafe = self._run("controller", frame, ready_t, misses, measured, calls,
                                                   (ego, plan, t), lambda due: self._last_control)
        if failsafe is None:
            self._last_plan = plan
            source_t = self._source_t.get(plan.t, used.t)  # a held plan: the frame it came from
        else:
            control, ready_t = self._failsafe(frame, failsafe), max(ready_t, t)
            source_t = used.t
        self._last_control = control
        delay_s, applies_t = self._schedule_command(frame, t, ready_t, control)
        stepped = self.between_ticks.events.pop(frame, None)  # the first frame at a lower operating point
        events = obs.events + ((stepped,) if stepped else ())
        record = FrameRecord(t=t, frame=frame, ego=ego, control=control, plan=plan, perception=used,
                             events=events, stage_ms=measured, charged_delay_s=delay_s,
                             misses=tuple(misses), failsafe=failsafe, calls=calls,
                             sensor_to_actuator_s=applies_t - source_t, controller_delay_s=self.expected_delay_s)
        # Keep the log light: the semantic mask, the road surface and the stage calls go to
        # observers, not the records.
        self.records.append(dataclasses.replace(record, perception=dataclasses.replace(used, semantic=None, road=None),
                                                calls={}))
        return record

    def _tell_controller(self, t: float, start: float) -> None:
        """Tell the controller when its command will apply, for its delay compensation: the
        tick the time model will charge, its own latency taken as its budget (`budget`) or its
        last measured time (`measured`)."""
        expect = getattr(self.stack.controller, "expect_delay", None)
        if expect is None:
            return
        self.expected_delay_s = self.expected_command_delay(t, start)
        expect(self.expected_delay_s)

    def expected_command_delay(self, t: float, start: float) -> float:
        """[s] from the frame at `t` to the tick its command will apply, the controller
        starting at sim time `start`."""
        if self.runtime.time_model == "ideal":
            return self.ticks_for(0.0) * self.dt
        samples = self.telemetry["controller"].samples_ms
        own = self.budget_s["controller"]
        if self.runtime.time_model == "measured" and samples:
            own = samples[-1] / 1e3
        return self.ticks_for(start - t + own + self.injected_s["controller"]) * self.dt

    def _run(self, name: str, frame: int, start: float, misses: list[str], measured: dict, calls: dict,
             args: tuple, held):
        """Stage `name` on `args`, starting at sim time `start`: (output, ready time, fail-safe reason)."""
        output, wall_s, latency_s = self._timed(name, frame, getattr(self.stack, name).step, *args)
        measured[name] = wall_s * 1e3
        calls[name] = (args, output)
        if name == "planner" and plan_is_finite(output):  # a later frame may hold it
            self._plans = [*self._plans[-63:], (output, start + latency_s, args[2].t)]
            self._source_t = {p.t: source for p, _, source in self._plans}
        used, ready_t, failsafe = self._settle(name, output, latency_s, start, frame, misses, held)
        if OUTPUT_IS_FINITE[name](used):
            return used, ready_t, failsafe
        # Never keep (or hold later) a broken output: the frame records the last good one.
        last_good = self._last_plan if name == "planner" else self._last_control
        return last_good, ready_t, failsafe or f"unusable output: {OUTPUT_NAME[name]} is not finite"

    def _settle(self, name: str, output, latency_s: float, start: float, frame: int, misses: list[str], held):
        """The stage's miss policy applied to an output that took `latency_s` from `start`:
        (output to use, when it is ready, fail-safe reason or None). On a miss, `warn` waits
        for the late output, `failsafe` gives up at the deadline, and `hold` uses
        `held(deadline)`, the newest earlier output ready by the deadline, or waits for the
        late output when there is none."""
        late_t = start + latency_s
        if not self._miss(name, latency_s, frame, misses) or self.policy[name] == "warn":
            return output, late_t, None
        deadline = start + self.budget_s[name]
        if self.policy[name] == "failsafe":
            return output, deadline, f"{name} missed its budget"
        kept = held(deadline)
        return (output, late_t, None) if kept is None else (kept, deadline, None)

    def _held_perception(self, ego: EgoState, t: float, due: float) -> Perception | None:
        ready = [r for r in self._ready[:-1] if r.ready_t <= due + 1e-9]
        return reanchor_perception(ready[-1].perception, ready[-1].ego, ego, t) if ready else None

    def _held_plan(self, ego: EgoState, t: float, due: float) -> Plan | None:
        """The newest earlier plan ready by `due`, re-anchored to the current pose."""
        ready = [plan for plan, ready_t, _ in self._plans[:-1] if ready_t <= due + 1e-9]
        return reanchor_plan(ready[-1], ego, t) if ready else None

    def _input_fault(self, obs: Observation, perception: Perception, when: float) -> str | None:
        """Why the planner cannot use this frame: stale or unusable perception, an ego state
        that is not finite, or perception with non-finite numbers. None when it can."""
        age = when - perception.t
        if age > self.runtime.stale_input_s + 1e-9:
            return f"stale input: perception is {age * 1e3:.0f} ms old"
        if not perception.usable:
            return f"unusable input: {perception.reason}"
        if not ego_is_finite(obs.ego):
            return "unusable input: the ego state is not finite"
        if not perception_is_finite(perception):
            return "unusable input: perception is not finite"
        return None


    def _failsafe(self, frame: int, reason: str) -> Control:
        """The one fail-safe command: a bounded emergency stop at `runtime.failsafe_brake`."""
        self.trace.instant("failsafe", time.perf_counter() - self.wall0, stage="controller",
                           args={"frame": frame, "reason": reason})
        return Control(brake=self.runtime.failsafe_brake)

    def _schedule_command(self, frame: int, t: float, ready_t: float, control: Control) -> tuple[float, float]:
        """Schedule the frame's command for the tick its latency reaches: (the charged delay [s],
        the sim time of the tick at which the command applies [s])."""
        delay_s = 0.0 if self.runtime.time_model == "ideal" else ready_t - t
        ticks = self.ticks_for(delay_s)
        due = frame + ticks
        if due not in self._schedule or self._schedule[due][0] < frame:
            self._schedule[due] = (frame, control)
        return delay_s, t + ticks * self.dt

    def ticks_for(self, delay_s: float) -> int:
        """The ticks after its frame at which a command `delay_s` [s] late applies."""
        ticks = int(math.floor(delay_s / self.dt + 0.5))  # round half up
        return max(ticks, 1) if self.runtime.pipelined else ticks  # pipelined: the next step was already taken

    def command_for_step(self, tick: int) -> Control:
        """The command in force during the step that starts at `tick`: the newest frame's
        command among those due; a command from an older frame than the one in force
        (it took longer) is dropped."""
        for k in sorted(k for k in self._schedule if k <= tick):
            source, control = self._schedule.pop(k)
            if source >= self._applied_frame:
                self._applied, self._applied_frame = control, source
        return self._applied

    def latency_table(self) -> dict:
        return {name: tel.row() for name, tel in self.telemetry.items()}

    # ------------------------------------------------------------ the loop

    def run(self, sim, obs: Observation, on_frame=None, max_time_s: float | None = None) -> Observation:
        """Drive `sim` from `obs` until the scenario ends (or max_time_s). `on_frame(obs,
        record)` sees every frame. Pipelined: perception of frame n+1 runs in a worker
        thread while planner and controller work on frame n."""
        limit = sim.scenario.duration_s if max_time_s is None else max_time_s
        # The collector's work happens between ticks, and so does the operating point's guard
        # (pipeline/between_ticks.py): at the top of each tick, when no stage runs.
        between = self.between_ticks
        between.start()
        pool = None
        try:
            perceived = self.perceive(obs)
            pool = ThreadPoolExecutor(max_workers=1) if self.runtime.pipelined else None
            while True:
                between.tick(obs.frame, obs.t)
                if pool is not None and not (sim.done or obs.t >= limit - 1e-9):
                    # The command for this step was decided by earlier frames (latency >= 1 tick).
                    next_obs = sim.step(self.command_for_step(obs.frame))
                    future = pool.submit(self.perceive, next_obs)
                    record = self.decide(obs, perceived)
                    if on_frame:
                        on_frame(obs, record)
                    obs, perceived = next_obs, future.result()
                    continue
                record = self.decide(obs, perceived)
                if on_frame:
                    on_frame(obs, record)
                if sim.done or obs.t >= limit - 1e-9:
                    return obs
                obs = sim.step(self.command_for_step(obs.frame))
                perceived = self.perceive(obs)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            between.end()

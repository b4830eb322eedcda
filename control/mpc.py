"""MPC tracker: steering and acceleration from one linear time-varying QP, solved by OSQP.

Model: kinematic bicycle about the rear axle in path-error form, linearised each tick about
the plan (curvature kappa_k, speed v_k along the horizon). States, inputs and step h:

    x = [e_y, e_psi, delta, e_s, e_v, a]      lateral [m] (left +), heading [rad], front-wheel
                                              angle [rad], station [m], speed [m/s], accel [m/s^2]
    u = [delta_rate, a_cmd]                   [rad/s], [m/s^2]

    e_y'   = v e_psi                         e_s' = e_v
    e_psi' = v / (L cos^2 delta_r) (delta - delta_r) - kappa^2 v e_y
    delta' = delta_rate                      e_v' = a - a_ref,   a' = (a_cmd - a) / tau

delta_r = atan(L kappa) is the curvature feed-forward: the model and the cost both measure
the wheel angle from it. e_psi is measured from the body axis turned by the rear axle's
steady-state sideslip in the curve (`rear_slip_rad_per_mps2`), so a car cornering on the
path reads no heading error. The steering rows are integrated exactly for a steer ramp, the
longitudinal ones by a zero-order hold of the lag model. Constraints: |delta| <= max angle,
|delta_rate| <= max rate, a_cmd within the acceleration limits. Heading and steer weights
are scheduled on each stage's speed (the kinematic model leaves out the tyres' lag, which
grows with speed).

The QP over z = [x_0..x_N, u_0..u_{N-1}] (OSQP's MPC example layout; x_0 pinned by equality
bounds) is set up once; each tick updates q, l, u and the values of P (diagonal) and A, with
the same sparsity, warm-started (REFERENCE.md, Control practice). The command delay is
compensated by propagating the measured state through the commands already sent
(Autoware): the delay the runtime charges under its time model (`expect_delay`, before each
step) plus the configured `actuator_lag_s`. When OSQP fails or returns non-finite numbers, the tick falls back to pure
pursuit + PID and is counted in `fallback_count`.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import osqp
import scipy.sparse as sp
from scipy.linalg import expm

from stagepilot.control.actuator import ActuatorMap
from stagepilot.control.geometry import VehicleGeometry
from stagepilot.control.longitudinal import emergency_pedals, hold_still
from stagepilot.control.reference import PlanReference
from stagepilot.control.tracker import PidTracker, check_inputs
from stagepilot.core.messages import Control, EgoState, Plan
from stagepilot.core.config_control import MpcConfig, StandstillConfig

MAX_DELAY_TICKS = 64  # commands kept for the delay compensation

NX, NU = 6, 2
EY, EPSI, DELTA, ES, EV, ACC = range(NX)
RATE, ACMD = range(NU)
_ACCEPTED = (osqp.SolverStatus.OSQP_SOLVED, osqp.SolverStatus.OSQP_SOLVED_INACCURATE)


def longitudinal_zoh(step_s: float, time_constant_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(Phi (3, 3), Gamma (3,)) of s' = v, v' = a, a' = (a_cmd - a) / tau, held for one step."""
    if time_constant_s < 1e-3:  # no lag: a follows the command at once
        return (np.array([[1.0, step_s, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
                np.array([0.5 * step_s**2, step_s, 1.0]))
    continuous = np.zeros((4, 4))
    continuous[0, 1] = continuous[1, 2] = 1.0
    continuous[2, 2] = -1.0 / time_constant_s
    continuous[2, 3] = 1.0 / time_constant_s
    discrete = expm(continuous * step_s)
    return discrete[:3, :3], discrete[:3, 3]


class PathErrorQp:
    """The MPC's sparse QP, built and set up once; `solve` only changes values."""

    def __init__(self, config: MpcConfig, vehicle: VehicleGeometry):
        self.config = config
        self.vehicle = vehicle
        n, h = config.horizon_steps, config.step_s
        self.horizon, self.step_s = n, h
        self.n_var = NX * (n + 1) + NU * n
        self._phi, self._gamma = longitudinal_zoh(h, config.accel_time_constant_s)
        self._build_constraints()
        self._build_cost()
        self.solver = osqp.OSQP()
        self.solver.setup(self._P, self._q, self._A, self._l, self._u, verbose=False, warm_starting=True,
                          polishing=config.osqp.polishing, max_iter=config.osqp.max_iter,
                          eps_abs=config.osqp.eps_abs, eps_rel=config.osqp.eps_rel)
        self.setup_count = 1
        self.last_status = ""
        self.last_iterations = 0

    def x_index(self, k: int | np.ndarray, j: int) -> int | np.ndarray:
        return k * NX + j

    def u_index(self, k: int | np.ndarray, j: int) -> int | np.ndarray:
        return NX * (self.horizon + 1) + k * NU + j

    # ------------------------------------------------------------ setup

    def _build_constraints(self) -> None:
        n, h, xi, ui = self.horizon, self.step_s, self.x_index, self.u_index
        rows: list[int] = []
        cols: list[int] = []
        values: list[float] = []

        def add(row: int, col: int, value: float) -> int:
            rows.append(row)
            cols.append(col)
            values.append(value)
            return len(values) - 1

        for j in range(NX):
            add(j, xi(0, j), 1.0)  # x_0 = x_init, through l = u
        ltv = {key: [] for key in ("ey_epsi", "ey_delta", "ey_rate", "epsi_ey", "epsi_delta", "epsi_rate")}
        for k in range(n):
            row = NX * (k + 1)  # x_{k+1} - A_k x_k - B_k u_k = c_k
            for j in range(NX):
                add(row + j, xi(k + 1, j), 1.0)
            add(row + EY, xi(k, EY), -1.0)
            ltv["ey_epsi"].append(add(row + EY, xi(k, EPSI), -1.0))
            ltv["ey_delta"].append(add(row + EY, xi(k, DELTA), -1.0))
            ltv["ey_rate"].append(add(row + EY, ui(k, RATE), -1.0))
            ltv["epsi_ey"].append(add(row + EPSI, xi(k, EY), -1.0))
            add(row + EPSI, xi(k, EPSI), -1.0)
            ltv["epsi_delta"].append(add(row + EPSI, xi(k, DELTA), -1.0))
            ltv["epsi_rate"].append(add(row + EPSI, ui(k, RATE), -1.0))
            add(row + DELTA, xi(k, DELTA), -1.0)
            add(row + DELTA, ui(k, RATE), -h)
            for a in range(3):
                for b in range(3):
                    if self._phi[a, b] != 0.0:
                        add(row + ES + a, xi(k, ES + b), -self._phi[a, b])
                if self._gamma[a] != 0.0:
                    add(row + ES + a, ui(k, ACMD), -self._gamma[a])
        bound_row = NX * (n + 1)
        self._rows_steer = slice(bound_row, bound_row + n)
        for k in range(1, n + 1):
            add(bound_row + k - 1, xi(k, DELTA), 1.0)
        input_row = bound_row + n
        for k in range(n):
            for j in range(NU):
                add(input_row + k * NU + j, ui(k, j), 1.0)
        n_rows = input_row + NU * n
        self.n_constraints = n_rows

        # Each entry gets a unique id as its value, so the CSC order of the entries can be read back.
        ids = sp.csc_matrix((np.arange(1.0, len(values) + 1.0), (rows, cols)), shape=(n_rows, self.n_var))
        ids.sort_indices()
        self._csc_order = ids.data.astype(np.int64) - 1  # data[j] holds entry _csc_order[j]
        self._entries = np.array(values)
        self._ltv = {key: np.array(idx) for key, idx in ltv.items()}
        self._A = ids
        self._A.data = self._entries[self._csc_order]

        cfg, vehicle = self.config, self.vehicle
        self._l = np.zeros(n_rows)
        self._u = np.zeros(n_rows)
        self._l[self._rows_steer], self._u[self._rows_steer] = -vehicle.max_steer_angle_rad, vehicle.max_steer_angle_rad
        inputs = slice(input_row, n_rows)
        self._l[inputs] = np.tile([-vehicle.max_steer_rate_rad_s, cfg.accel_min_mps2], n)
        self._u[inputs] = np.tile([vehicle.max_steer_rate_rad_s, cfg.accel_max_mps2], n)

    def _build_cost(self) -> None:
        cfg, n = self.config, self.horizon
        # Diagonal P with every entry stored, so the speed-scheduled weights change values only.
        self._state_weights = np.tile([cfg.weight_lateral, 0.0, 0.0, cfg.weight_station, cfg.weight_speed, 0.0],
                                      (n + 1, 1))  # (N+1, NX); heading and steer columns per tick
        self._stage_factor = np.ones(n + 1)
        self._stage_factor[n] = cfg.terminal_factor
        self._state_weights *= self._stage_factor[:, None]
        self._input_weights = np.tile([cfg.weight_steer_rate, cfg.weight_accel], n)
        self._P = sp.csc_matrix((self._diagonal(np.full(n + 1, 1.0), np.full(n + 1, 1.0)),
                                 np.arange(self.n_var), np.arange(self.n_var + 1)), shape=(self.n_var, self.n_var))
        self._q = np.zeros(self.n_var)
        self._q_steer = self.x_index(np.arange(n + 1), DELTA)
        self._q_accel = self.u_index(np.arange(n), ACMD)

    def _diagonal(self, heading_weights: np.ndarray, steer_weights: np.ndarray) -> np.ndarray:
        """P's diagonal for per-stage heading and steer weights (N+1,), terminal factor applied."""
        self._state_weights[:, EPSI] = heading_weights * self._stage_factor
        self._state_weights[:, DELTA] = steer_weights * self._stage_factor
        return np.concatenate([self._state_weights.ravel(), self._input_weights])

    # ------------------------------------------------------------ per tick

    def solve(self, x0: np.ndarray, speed: np.ndarray, curvature: np.ndarray, station_ref: np.ndarray,
              speed_ref: np.ndarray, accel_ref: np.ndarray) -> np.ndarray | None:
        """Optimal z for initial state x0 (NX,), linearisation speeds (N,), path curvature
        (N+1,), planned station / speed (N+1,) and acceleration (N,); None when OSQP fails."""
        h, n, L = self.step_s, self.horizon, self.vehicle.wheelbase_m
        steer_ref = np.arctan(L * curvature)  # (N+1,) the curvature feed-forward
        gain = speed[:n] / (L * np.cos(steer_ref[:n]) ** 2)  # (N,) d(e_psi')/d(delta)
        k_ref = steer_ref[:n]
        e, ltv = self._entries, self._ltv
        e[ltv["ey_epsi"]] = -h * speed
        e[ltv["ey_delta"]] = -0.5 * h * h * speed * gain
        e[ltv["ey_rate"]] = -(h**3 / 6.0) * speed * gain
        e[ltv["epsi_ey"]] = h * curvature[:n] ** 2 * speed
        e[ltv["epsi_delta"]] = -h * gain
        e[ltv["epsi_rate"]] = -0.5 * h * h * gain

        affine = np.zeros((n, NX))  # c_k
        affine[:, EY] = -0.5 * h * h * speed * gain * k_ref
        affine[:, EPSI] = -h * gain * k_ref
        affine[:, ES] = station_ref[:-1] + self._phi[0, 1] * speed_ref[:-1] - station_ref[1:]
        affine[:, EV] = speed_ref[:-1] - speed_ref[1:]
        self._l[:NX] = self._u[:NX] = x0
        self._l[NX:NX * (n + 1)] = self._u[NX:NX * (n + 1)] = affine.ravel()

        cfg = self.config
        stage_speed = np.append(speed, speed[-1])  # (N+1,)
        diagonal = self._diagonal(np.interp(stage_speed, cfg.weight_heading_bp_mps, cfg.weight_heading_v),
                                  np.interp(stage_speed, cfg.weight_steer_bp_mps, cfg.weight_steer_v))
        self._q[self._q_steer] = -self._state_weights[:, DELTA] * steer_ref
        self._q[self._q_accel] = -cfg.weight_accel * accel_ref

        try:
            self.solver.update(q=self._q, l=self._l, u=self._u, Px=diagonal, Ax=e[self._csc_order])
            result = self.solver.solve(raise_error=False)
        except (ValueError, RuntimeError, osqp.OSQPException) as exc:
            self.last_status = f"error: {exc}"
            return None
        self.last_status = result.info.status
        self.last_iterations = int(result.info.iter)
        if result.info.status_val not in _ACCEPTED or not np.all(np.isfinite(result.x)):
            return None
        return result.x


class MpcTracker:
    """One MPC for steering and acceleration; pure pursuit + PID when a solve fails."""

    name = "mpc"

    def __init__(self, config: MpcConfig, standstill: StandstillConfig, vehicle: VehicleGeometry,
                 actuator: ActuatorMap, dt_s: float, fallback: PidTracker):
        self.config = config
        self.standstill = standstill
        self.vehicle = vehicle
        self.actuator = actuator
        self.dt_s = dt_s
        self.qp = PathErrorQp(config, vehicle)
        self.fallback = fallback
        self.command_delay_s = 0.0  # [s] the runtime's: from the frame to the tick its command applies
        self._lag_gain = 1.0 - math.exp(-dt_s / max(config.accel_time_constant_s, 1e-9))
        self.reset()

    @property
    def solver(self) -> osqp.OSQP:
        return self.qp.solver

    @property
    def setup_count(self) -> int:
        return self.qp.setup_count

    def expect_delay(self, delay_s: float) -> None:
        """The runtime says when this frame's command will apply: `delay_s` [s] after the frame
        (0 under `ideal`; the charged latency, in whole ticks, under `budget` and `measured`)."""
        self.command_delay_s = float(delay_s)

    @property
    def compensation_s(self) -> float:
        """[s] the delay compensated: the runtime's command delay plus the actuator lag."""
        return self.command_delay_s + self.config.actuator_lag_s

    @property
    def delay_ticks(self) -> int:
        return round(self.compensation_s / self.dt_s)

    def reset(self) -> None:
        self._sent: deque[tuple[float, float]] = deque(maxlen=MAX_DELAY_TICKS)
        self.fallback.reset()
        self.fallback_count = 0  # ticks where OSQP failed and pure pursuit + PID drove
        self.solve_count = 0
        self.last_steer_angle_rad = 0.0  # [rad] front-wheel angle commanded
        self.last_accel_mps2 = 0.0  # [m/s^2] acceleration commanded
        self.last_solution: np.ndarray | None = None
        self.solver.warm_start(x=np.zeros(self.qp.n_var), y=np.zeros(self.qp.n_constraints))

    def step(self, ego: EgoState, plan: Plan, t: float) -> Control:
        check_inputs(ego, plan)
        ref = PlanReference(plan)
        tau = t - plan.t
        if hold_still(ego, ref, tau, self.standstill):
            self.fallback.reset()
            return self._send(ego, Control(steer=self.vehicle.steer_command(ego.steer_angle),
                                           brake=self.standstill.hold_brake), self.config.accel_min_mps2)
        if not ref.has_path:
            return self._fall_back(ego, plan, t)
        solution = self._solve(ego, ref, tau + self.delay_ticks * self.dt_s)
        if solution is None:
            return self._fall_back(ego, plan, t)
        self.solve_count += 1
        self.last_solution = solution
        qp = self.qp
        steer_path = solution[qp.x_index(np.arange(qp.horizon + 1), DELTA)]
        angle = float(np.interp(self.dt_s, qp.step_s * np.arange(qp.horizon + 1), steer_path))
        angle = max(min(angle, self.vehicle.max_steer_angle_rad), -self.vehicle.max_steer_angle_rad)
        accel = float(solution[qp.u_index(0, ACMD)])
        if plan.decision == "emergency_stop":
            # a town-loop stop achieved 3.9 of 6 m/s^2 in its last metres, and sent one frame of throttle
            planned = float(ref.accel_at(tau + self.delay_ticks * self.dt_s))
            accel, throttle, brake = emergency_pedals(self.actuator, accel, planned, ego.speed)
        else:
            throttle, brake = self.actuator.command(accel, ego.speed)
        return self._send(ego, Control(steer=self.vehicle.steer_command(angle), throttle=throttle,
                                       brake=brake), accel)

    def _fall_back(self, ego: EgoState, plan: Plan, t: float) -> Control:
        self.fallback_count += 1
        control = self.fallback.step(ego, plan, t)
        return self._send(ego, control, self.fallback.longitudinal.last_accel_mps2)

    def _send(self, ego: EgoState, control: Control, accel_mps2: float) -> Control:
        self.last_steer_angle_rad = -control.steer * self.vehicle.max_steer_angle_rad
        self.last_accel_mps2 = accel_mps2
        self._sent.append((self.last_steer_angle_rad, accel_mps2))
        return control

    def _predicted_ego(self, ego: EgoState) -> tuple[float, float, float, float, float, float]:
        """(x, y, yaw, speed, wheel angle, accel) once the commands still in flight have acted
        (kinematic bicycle, rear axle)."""
        x, y, yaw, speed = ego.x, ego.y, ego.yaw, ego.speed
        angle, accel = ego.steer_angle, ego.accel
        if self.delay_ticks == 0:
            return x, y, yaw, speed, angle, accel
        dt, max_change = self.dt_s, self.vehicle.max_steer_rate_rad_s * self.dt_s
        for angle_cmd, accel_cmd in list(self._sent)[-self.delay_ticks:]:
            angle += min(max(angle_cmd - angle, -max_change), max_change)
            accel += (accel_cmd - accel) * self._lag_gain
            x += speed * math.cos(yaw) * dt
            y += speed * math.sin(yaw) * dt
            yaw += speed * math.tan(angle) / self.vehicle.wheelbase_m * dt
            speed = max(speed + accel * dt, 0.0)
        return x, y, yaw, speed, angle, accel

    def _solve(self, ego: EgoState, ref: PlanReference, tau0: float) -> np.ndarray | None:
        """Errors against the plan at plan time tau0 (now + delay), then the QP."""
        cfg, qp = self.config, self.qp
        x, y, yaw, speed, angle, accel = self._predicted_ego(ego)
        here = ref.project(x, y)
        # in a steady curve the rear axle slides outwards: the body points inside the path
        slip = cfg.rear_slip_rad_per_mps2 * speed * speed * here.curvature
        taus = tau0 + qp.step_s * np.arange(qp.horizon + 1)  # (N+1,)
        station_ref = ref.station_at(taus)
        speed_ref = ref.speed_at(taus)
        accel_ref = ref.accel_at(taus[:-1])
        station_error = float(np.clip(here.s - station_ref[0], -cfg.station_error_limit_m,
                                      cfg.station_error_limit_m))
        x0 = np.array([here.lateral_m, math.remainder(yaw - slip - here.yaw, 2.0 * math.pi),
                       max(min(angle, self.vehicle.max_steer_angle_rad), -self.vehicle.max_steer_angle_rad),
                       station_error, speed - speed_ref[0], accel])
        # Linearise about the speed the car can reach towards the plan within the limits.
        elapsed = taus[:-1] - tau0
        lin_speed = np.maximum(speed + np.clip(speed_ref[:-1] - speed, cfg.accel_min_mps2 * elapsed,
                                               cfg.accel_max_mps2 * elapsed), 0.0)  # (N,)
        travelled = np.concatenate([[0.0], np.cumsum(lin_speed * qp.step_s)])  # (N+1,)
        curvature = ref.curvature_at(here.s + travelled)
        return qp.solve(x0, lin_speed, curvature, station_ref, speed_ref, accel_ref)

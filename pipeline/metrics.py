"""Driving metrics: comfort against nuPlan's bounds, and path-tracking error.

Comfort follows nuPlan's definitions (REFERENCE.md): longitudinal acceleration in
[-4.05, 2.40] m/s^2, |lateral acceleration| <= 4.89 m/s^2, |yaw rate| <= 0.95 rad/s,
|longitudinal jerk| <= 4.13 m/s^3, each judged at the 95th percentile. Derivatives come
from a Savitzky-Golay filter over the speed, as nuPlan smooths its signals.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import savgol_filter

NUPLAN_BOUNDS = {
    "lon_accel_min": -4.05,
    "lon_accel_max": 2.40,
    "lat_accel_abs": 4.89,
    "yaw_rate_abs": 0.95,
    "lon_jerk_abs": 4.13,
}


def comfort(speed: np.ndarray, yaw_rate: np.ndarray, dt: float, window_s: float = 0.5) -> dict[str, float]:
    """Percentile figures of a drive sampled every dt seconds, and whether each is in bounds."""
    speed = np.asarray(speed, float)
    yaw_rate = np.asarray(yaw_rate, float)
    window = max(int(round(window_s / dt)) | 1, 5)
    if len(speed) <= window:
        raise ValueError(f"need more than {window} samples for comfort metrics, got {len(speed)}")
    accel = savgol_filter(speed, window, 2, deriv=1, delta=dt)
    jerk = savgol_filter(speed, window, 2, deriv=2, delta=dt)
    lat_accel = speed * yaw_rate
    figures = {
        "lon_accel_p5": float(np.percentile(accel, 5)),
        "lon_accel_p95": float(np.percentile(accel, 95)),
        "lat_accel_abs_p95": float(np.percentile(np.abs(lat_accel), 95)),
        "yaw_rate_abs_p95": float(np.percentile(np.abs(yaw_rate), 95)),
        "lon_jerk_abs_p95": float(np.percentile(np.abs(jerk), 95)),
    }
    figures["within_bounds"] = bool(
        figures["lon_accel_p5"] >= NUPLAN_BOUNDS["lon_accel_min"]
        and figures["lon_accel_p95"] <= NUPLAN_BOUNDS["lon_accel_max"]
        and figures["lat_accel_abs_p95"] <= NUPLAN_BOUNDS["lat_accel_abs"]
        and figures["yaw_rate_abs_p95"] <= NUPLAN_BOUNDS["yaw_rate_abs"]
        and figures["lon_jerk_abs_p95"] <= NUPLAN_BOUNDS["lon_jerk_abs"]
    )
    return figures


def tracking_error(lateral_errors: np.ndarray) -> dict[str, float]:
    e = np.asarray(lateral_errors, float)
    return {"lateral_rms_m": float(np.sqrt(np.mean(e**2))), "lateral_max_m": float(np.max(np.abs(e)))}

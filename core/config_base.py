"""Base pieces of the typed config schema, shared by every schema module."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Physical ranges every schema shares: a value beyond them is a typo, not a setting.
MAX_SPEED_MPS = 100.0  # [m/s] any speed, breakpoint or speed noise
MAX_DURATION_S = 6 * 3600.0  # [s] a drive, a phase, a trigger time
MAX_DELAY_S = 60.0  # [s] an injected delay, a latency, a hold time
MAX_DELAY_MS = 1000.0 * MAX_DELAY_S  # [ms] a stage budget or an injected stage delay
MAX_DISTANCE_M = 100_000.0  # [m] a position, a station, a range
MAX_ACCEL_MPS2 = 50.0  # [m/s^2] an acceleration or deceleration
MAX_WEIGHT = 1e6  # a cost weight or gain
MAX_SEED = 2**63 - 1


class ConfigError(ValueError):
    """A configuration or scenario problem, with a message fit to print as one line."""


# No NaN or infinity anywhere in a config (dict and tuple values included).
STRICT_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Strict(BaseModel):
    """A config section: unknown keys are errors, values are finite and frozen once loaded."""

    model_config = STRICT_CONFIG

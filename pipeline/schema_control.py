"""Config schema of the controllers (`controller:` in configs/stack.yaml).

Owned by control/; kept in pipeline/ because the typed schema is shared (DESIGN.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stagepilot.pipeline.config_base import Strict


class ControllerConfig(Strict):
    kind: Literal["pid_pure_pursuit", "pid_stanley", "mpc"] = "mpc"

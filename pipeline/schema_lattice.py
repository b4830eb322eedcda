"""Config schema of the Frenet lattice planner (`planner.lattice:` in configs/stack.yaml).

Owned by planning/; kept in pipeline/ because the typed schema is shared (DESIGN.md).
"""

from __future__ import annotations

from pydantic import Field

from stagepilot.pipeline.config_base import Strict


class LatticeConfig(Strict):
    dt_s: float = Field(0.1, gt=0.0)  # trajectory sample step

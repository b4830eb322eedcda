"""Base pieces of the typed config schema, shared by every schema module."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration or scenario problem, with a message fit to print as one line."""


class Strict(BaseModel):
    """A config section: unknown keys are errors, values are frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

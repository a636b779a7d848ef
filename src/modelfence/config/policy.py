"""`policy:` — the Cedar policy set."""

from __future__ import annotations

from pydantic import Field

from .base import ConfigPath, Strict


class PolicySettings(Strict):
    """Cedar policy files; none listed means the shipped default (a key's own grants)."""

    files: list[ConfigPath] = Field(default_factory=list)
    schema_file: ConfigPath | None = Field(
        None, description="Cedar schema; default: the shipped one")
    state_dir: ConfigPath | None = Field(
        None, description="where the last good policy set is kept for worker restarts")

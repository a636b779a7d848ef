"""Attribute-based access policy with Cedar: who may do what to which model, in what context."""

from __future__ import annotations

from ..config import Settings
from .engine import DEFAULT_POLICY, DEFAULT_SCHEMA, PolicyBundle, PolicyEngine, Verdict
from .guard import PolicyGuard
from .request import Facts, cedar_request

__all__ = ["Facts", "PolicyBundle", "PolicyEngine", "PolicyGuard", "Verdict", "cedar_request",
           "engine_from_settings"]


def engine_from_settings(settings: Settings) -> PolicyEngine:
    files = list(settings.policy.files) or [DEFAULT_POLICY]
    return PolicyEngine(files, settings.policy.schema_file or DEFAULT_SCHEMA)

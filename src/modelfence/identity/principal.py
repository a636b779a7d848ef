"""Who is calling: the identity every later guard (policy, quota, monitor) reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    tenant: str
    groups: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    key_id: str | None = None
    expires_at: datetime | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def may_use(self, model: str) -> bool:
        """A key's own model grants; `*` grants every model."""
        return "*" in self.models or model in self.models

"""The privacy parts of one gateway, made from the settings: store, budget, two guards."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ..config import Settings
from ..errors import ConfigurationError
from ..kernel.metrics import GatewayMetrics
from ..shaping.guard import ShapingGuard
from .budget import Alert, PrivacyBudget, Spent
from .guard import PrivacyGuard, PrivacyUsageGuard, private_bands
from .repeats import RepeatKeys
from .store import PrivacyStore, privacy_store_from_url


@dataclass
class Privacy:
    store: PrivacyStore
    budget: PrivacyBudget
    usage: PrivacyUsageGuard
    guard: PrivacyGuard

    def watches(self, model: str) -> bool:
        return model in self.guard.models

    async def spent(self, model: str, principal: str, tenant: str) -> Spent:
        return await self.budget.spent(model, principal, tenant)

    def describe(self) -> dict[str, object]:
        s = self.budget.settings
        return {"principal_epsilon": s.principal_epsilon, "tenant_epsilon": s.tenant_epsilon,
                "delta": s.delta, "window": s.window, "on_spent": s.on_spent}


def build_privacy(settings: Settings, shaping: ShapingGuard, server_secret: bytes,
                  models: list[str], on_alert: Alert | None = None,
                  metrics: GatewayMetrics | None = None) -> Privacy:
    """Store (not opened), budget and guards for `models` (those with a private band)."""
    s = settings.privacy
    if s.store.startswith("memory:") and settings.server.workers > 1:
        # each worker would draw, remember and count on its own: repeats to another worker
        # would get fresh noise, and each would grant the whole budget
        raise ConfigurationError(
            f"privacy.store: memory:// keeps one process's ε spend and answers, and "
            f"server.workers is {settings.server.workers}; use sqlite:///PATH or "
            "postgresql:// so that workers share them")
    store = privacy_store_from_url(s.store, entries=s.repeat_entries, durable=s.durable)
    budget = PrivacyBudget(s, store, on_alert)
    private = private_bands(shaping, models)
    secret = hmac.new(server_secret, b"privacy", hashlib.sha256).digest()
    guard = PrivacyGuard(shaping, budget, RepeatKeys(secret, s.repeat_period_s), private,
                         metrics)
    return Privacy(store, budget, PrivacyUsageGuard(budget, guard.models), guard)

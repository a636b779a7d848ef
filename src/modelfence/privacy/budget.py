"""ε budgets per principal and per tenant on each model: read, charge, alert.

A charge adds the answers to both the principal's and the tenant's counts in one store call
and computes ε from the counts after it (`Accountant`); over either cap, it is given back
and refused. A tenant is charged whatever its principals are charged, a sum that can only
overstate what the tenant as a whole learned (two of its principals shown the same draw
pay twice). Budgets run per `window` (`total`: for the life of the store).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ..config.privacy import PrivacySettings
from ..quota.budgets import key_part, period_bounds
from .accountant import Accountant
from .store import PrivacyStore


@dataclass(frozen=True, slots=True)
class Spent:
    principal: float
    tenant: float


@dataclass(frozen=True, slots=True)
class Charge:
    """The outcome of a charge: `granted`, ε spent after it (before it, if refused), which
    budget refused it, and the seconds until that budget's window ends (None: never)."""

    granted: bool
    spent: Spent
    refused_by: str = ""
    retry_after_s: int | None = None


@dataclass(frozen=True, slots=True)
class PrivacyAlert:
    """A principal's or tenant's ε spent on a model crossed the alert share of its budget."""

    model: str
    principal: str
    tenant: str
    scope: str  # "principal" | "tenant"
    spent: float
    budget: float

    def describe(self) -> str:
        who = self.principal if self.scope == "principal" else f"tenant {self.tenant}"
        return (f"{who} has spent ε {self.spent:.3g} of {self.budget:g} on model "
                f"{self.model} ({self.spent / self.budget:.0%})")


Alert = Callable[[PrivacyAlert], Awaitable[None]]


class PrivacyBudget:
    def __init__(self, settings: PrivacySettings, store: PrivacyStore,
                 on_alert: Alert | None = None) -> None:
        self.settings = settings
        self.store = store
        self.accountant = Accountant(settings.delta)
        self._on_alert = on_alert

    def keys(self, model: str, principal: str, tenant: str, now: datetime | None = None
             ) -> tuple[str, str, datetime]:
        label, end = period_bounds(self.settings.window, now or datetime.now(UTC))
        m = key_part(model)
        return (f"{label}|{m}|p|{key_part(principal)}", f"{label}|{m}|t|{key_part(tenant)}",
                end)

    async def spent(self, model: str, principal: str, tenant: str) -> Spent:
        p, t, _ = self.keys(model, principal, tenant)
        counts = await self.store.counts([p, t])
        return Spent(self.accountant.epsilon(counts[0]), self.accountant.epsilon(counts[1]))

    async def charge(self, model: str, principal: str, tenant: str, mechanism: str,
                     n: int) -> Charge:
        p, t, end = self.keys(model, principal, tenant)
        after = await self.store.charge([p, t], mechanism, n)
        eps = Spent(self.accountant.epsilon(after[0]), self.accountant.epsilon(after[1]))
        s = self.settings
        over = ("principal" if s.principal_epsilon is not None and eps.principal >
                s.principal_epsilon else
                "tenant" if s.tenant_epsilon is not None and eps.tenant > s.tenant_epsilon
                else "")
        if over:
            back = await self.store.charge([p, t], mechanism, -n)
            before = Spent(self.accountant.epsilon(back[0]), self.accountant.epsilon(back[1]))
            retry = (None if s.window == "total" else
                     max(1, int((end - datetime.now(UTC)).total_seconds())))
            return Charge(False, before, over, retry)
        if self._on_alert is not None:
            await self._alerts(model, principal, tenant, mechanism, n, after, eps)
        return Charge(True, eps)

    async def _alerts(self, model: str, principal: str, tenant: str, mechanism: str, n: int,
                      after: list[dict[str, int]], eps: Spent) -> None:
        assert self._on_alert is not None
        s = self.settings
        for scope, counts, now, cap in (("principal", after[0], eps.principal,
                                         s.principal_epsilon),
                                        ("tenant", after[1], eps.tenant, s.tenant_epsilon)):
            if cap is None or now < s.alert_at * cap:
                continue
            before = self.accountant.epsilon({**counts, mechanism: counts[mechanism] - n})
            if before < s.alert_at * cap:
                await self._on_alert(PrivacyAlert(model, principal, tenant, scope, now, cap))

"""The budget guard: reserve each answered query against the caller's extraction budget."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from ..config import Budget
from ..errors import RateLimited
from ..gateway.call import Call
from ..gateway.chain import Guard
from .budgets import BudgetStore, period_bounds

log = logging.getLogger("modelfence.quota")


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A principal crossed `alert_at` of a budget: worth an audit event and a look."""

    principal: str
    tenant: str
    model: str
    period: str
    used_queries: int
    used_rows: int
    budget: Budget

    def describe(self) -> str:
        caps = [f"{self.used_queries}/{self.budget.queries} queries" if self.budget.queries
                else "", f"{self.used_rows}/{self.budget.rows} rows" if self.budget.rows else ""]
        return (f"{self.principal} used {' and '.join(c for c in caps if c)} of its "
                f"{self.budget.period} budget for {self.model} ({self.period})")


AlertSink = Callable[[BudgetAlert], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Held:
    key: str
    rows: int


class BudgetGuard(Guard):
    """Atomic reservations before the backend runs; given back if the call then fails."""

    name: ClassVar[str] = "budget"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "inputs"})

    def __init__(self, store: BudgetStore, budgets: list[Budget], alert: AlertSink) -> None:
        self._store = store
        self._budgets = budgets
        self._alert = alert

    async def on_request(self, call: Call) -> None:
        assert call.principal is not None and call.model is not None
        rows = call.inputs.rows if call.inputs else 1
        now = datetime.now(UTC)
        held: list[_Held] = []
        for index, budget in enumerate(self._budgets):
            if budget.models and call.model.name not in budget.models:
                continue
            period, ends = period_bounds(budget.period, now)
            key = f"{index}|{call.principal.id}|{call.model.name}|{period}"
            got = await self._store.reserve(key, 1, rows, budget.queries, budget.rows)
            if not got.granted:
                for h in held:
                    await self._store.release(h.key, 1, h.rows)
                call.note(self.name, "deny", f"budget {budget.period} exhausted")
                raise RateLimited(
                    f"extraction budget for model {call.model.name!r} exhausted: "
                    f"{_caps(budget)} per {budget.period}; it resets at {ends.isoformat()}",
                    retry_after_s=_until(ends), reason="budget_exhausted")
            held.append(_Held(key, rows))
            if _crossed(budget, got.used_queries, got.used_rows, rows):
                await self._alert(BudgetAlert(call.principal.id, call.principal.tenant,
                                              call.model.name, period, got.used_queries,
                                              got.used_rows, budget))
        call.budget_holds = held

    async def on_complete(self, call: Call) -> None:
        """A call that was not answered does not spend the budget."""
        holds: list[_Held] = call.budget_holds
        if holds and call.status != 200:
            for h in holds:
                await self._store.release(h.key, 1, h.rows)


def _caps(b: Budget) -> str:
    parts = [f"{b.queries} queries" if b.queries else "", f"{b.rows} rows" if b.rows else ""]
    return " and ".join(p for p in parts if p)


def _until(ends: datetime) -> int:
    return max(1, min(int(ends.timestamp() - time.time()), 2**31 - 1))


def _crossed(b: Budget, queries: int, rows: int, added_rows: int) -> bool:
    """True only for the reservation that crossed `alert_at`, so each crossing alerts once."""
    def crossed(used: int, added: int, cap: int | None) -> bool:
        return cap is not None and used - added < b.alert_at * cap <= used
    return crossed(queries, 1, b.queries) or crossed(rows, added_rows, b.rows)

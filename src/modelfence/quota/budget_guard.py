"""The budget guard: reserve each answered query against the caller's extraction budget."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from ..config import Budget
from ..errors import RateLimited
from ..kernel.call import Call
from ..kernel.chain import Guard
from .budgets import BudgetStore, budget_key, period_bounds

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
    used_tokens: int | None = None

    def describe(self) -> str:
        b = self.budget
        if self.used_tokens is not None:
            caps = [f"{self.used_tokens}/{b.tokens} tokens"]
        else:
            caps = [f"{self.used_queries}/{b.queries} queries" if b.queries else "",
                    f"{self.used_rows}/{b.rows} rows" if b.rows else ""]
        return (f"{self.principal} used {' and '.join(c for c in caps if c)} of its "
                f"{b.period} budget for {self.model} ({self.period})")


AlertSink = Callable[[BudgetAlert], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Held:
    key: str
    rows: int
    tokens: bool = False  # a token reservation: `rows` holds the tokens reserved
    budget: Budget | None = None
    period: str = ""


class BudgetGuard(Guard[Call]):
    """Atomic reservations before the backend runs; given back if the call then fails.

    Token budgets (LLM calls) reserve the most the request can use (`call.token_cost`:
    prompt and every choice's max_tokens) so a budget holds across replicas even while
    answers are still streaming, then settle to what was used when the call completes.
    """

    name: ClassVar[str] = "budget"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "body"})
    #: what the request costs, filled by each protocol's body guard (OIP rows, LLM tokens)
    reads: ClassVar[frozenset[str]] = frozenset({"rows", "token_cost"})

    def __init__(self, store: BudgetStore, budgets: list[Budget], alert: AlertSink) -> None:
        self._store = store
        self._budgets = budgets
        self._alert = alert
        # keys (budget, principal, model, period) this process alerted for: reservations
        # given back (failed calls, tokens settled low) can cross alert_at again
        self._alerted: OrderedDict[str, None] = OrderedDict()

    async def _alert_once(self, key: str, alert: BudgetAlert) -> None:
        if key in self._alerted:
            return
        self._alerted[key] = None
        while len(self._alerted) > 100_000:
            self._alerted.popitem(last=False)
        await self._alert(alert)

    async def on_request(self, call: Call) -> None:
        assert call.principal is not None and call.model is not None
        rows = call.rows or 1  # a call without data rows (an LLM request) counts as one
        now = datetime.now(UTC)
        held: list[_Held] = []
        call.budget_holds = held
        try:
            for index, budget in enumerate(self._budgets):
                if budget.models and call.model.name not in budget.models:
                    continue
                period, ends = period_bounds(budget.period, now)
                key = budget_key(index, call.principal.id, call.model.name, period)
                if budget.queries is not None or budget.rows is not None:
                    await self._reserve_queries(call, budget, key, rows, period, ends, held)
                if budget.tokens is not None and call.token_cost is not None:
                    await self._reserve_tokens(call, budget, key + "|tokens", period, ends, held)
        except BaseException:
            for h in held:
                await self._give_back(h)
            call.budget_holds = []
            raise

    async def _reserve_queries(self, call: Call, budget: Budget, key: str, rows: int,
                               period: str, ends: datetime, held: list[_Held]) -> None:
        assert call.principal is not None and call.model is not None
        got = await self._store.reserve(key, 1, rows, budget.queries, budget.rows)
        if not got.granted:
            call.note(self.name, "deny", f"budget {budget.period} exhausted")
            raise RateLimited(
                f"extraction budget for model {call.model.name!r} exhausted: "
                f"{_caps(budget)} per {budget.period}; it resets at {ends.isoformat()}",
                retry_after_s=_until(ends), reason="budget_exhausted")
        held.append(_Held(key, rows))
        if _crossed(budget.alert_at, got.used_queries, 1, budget.queries) or _crossed(
                budget.alert_at, got.used_rows, rows, budget.rows):
            await self._alert_once(key, BudgetAlert(
                call.principal.id, call.principal.tenant, call.model.name, period,
                got.used_queries, got.used_rows, budget))

    async def _reserve_tokens(self, call: Call, budget: Budget, key: str, period: str,
                              ends: datetime, held: list[_Held]) -> None:
        assert call.principal is not None and call.model is not None
        assert call.token_cost is not None and budget.tokens is not None
        cost = call.token_cost
        got = await self._store.reserve(key, 0, cost, None, budget.tokens)
        if not got.granted:
            left = max(budget.tokens - got.used_rows, 0)
            call.note(self.name, "deny", f"token budget {budget.period} exhausted")
            raise RateLimited(
                f"token budget for model {call.model.name!r}: {left} of {budget.tokens} "
                f"tokens per {budget.period} left, and this request may use up to {cost} "
                f"(its prompt and max_tokens for each choice); ask for fewer max_tokens or "
                f"wait until {ends.isoformat()}",
                retry_after_s=_until(ends), reason="token_budget_exhausted")
        held.append(_Held(key, cost, tokens=True, budget=budget, period=period))
        if _crossed(budget.alert_at, got.used_rows, cost, budget.tokens):
            await self._alert_once(key, BudgetAlert(
                call.principal.id, call.principal.tenant, call.model.name, period,
                got.used_queries, got.used_rows, budget, used_tokens=got.used_rows))

    async def on_complete(self, call: Call) -> None:
        """A call that was not answered does not spend the budget; tokens settle to use."""
        holds = [h for h in call.budget_holds if isinstance(h, _Held)]
        if not holds:
            return
        answered = call.status == 200
        for h in holds:
            if h.tokens and call.tokens_used is not None:
                await self._settle(call, h, call.tokens_used)
            elif not answered:
                await self._give_back(h)

    async def _settle(self, call: Call, held: _Held, used: int) -> None:
        """Give back what was reserved and not used; add what an estimate missed."""
        used = max(used, 0)
        if used < held.rows:
            await self._store.release(held.key, 0, held.rows - used)
        elif used > held.rows:
            extra = used - held.rows
            got = await self._store.reserve(held.key, 0, extra, None, None)
            b = held.budget
            if b is not None and _crossed(b.alert_at, got.used_rows, extra, b.tokens):
                assert call.principal is not None and call.model is not None
                await self._alert_once(held.key, BudgetAlert(
                    call.principal.id, call.principal.tenant, call.model.name, held.period,
                    got.used_queries, got.used_rows, b, used_tokens=got.used_rows))

    async def _give_back(self, held: _Held) -> None:
        """Release a whole reservation (a token one holds no query)."""
        await self._store.release(held.key, 0 if held.tokens else 1, held.rows)


def _caps(b: Budget) -> str:
    parts = [f"{b.queries} queries" if b.queries else "", f"{b.rows} rows" if b.rows else ""]
    return " and ".join(p for p in parts if p)


def _until(ends: datetime) -> int:
    return max(1, min(int(ends.timestamp() - time.time()), 2**31 - 1))


def _crossed(alert_at: float, used: int, added: int, cap: int | None) -> bool:
    """True only for the reservation that crossed `alert_at`, so each crossing alerts once."""
    return cap is not None and used - added < alert_at * cap <= used

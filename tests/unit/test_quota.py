"""Quotas: risk-adaptive cost, budget periods, atomic budget stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modelfence.config import Budget, QuotaSettings, RateLimit
from modelfence.errors import ConfigurationError, RateLimited, StoreError
from modelfence.identity.principal import Principal
from modelfence.quota.budget_guard import BudgetAlert, BudgetGuard
from modelfence.quota.budgets import BudgetStore, budget_store_from_url, period_bounds
from modelfence.quota.ratelimit import RateLimitGuard, risk_cost

CURVE = [(0.0, 1.0), (0.5, 1.0), (0.8, 4.0), (1.0, 10.0)]


@pytest.mark.parametrize(("risk", "cost"), [
    (0.0, 1), (0.3, 1), (0.5, 1), (0.6, 2), (0.8, 4), (0.9, 7), (1.0, 10), (5.0, 10), (-1, 1)])
def test_risk_cost_interpolates_and_rounds_up(risk: float, cost: int) -> None:
    assert risk_cost(risk, CURVE) == cost


def test_periods() -> None:
    now = datetime(2026, 11, 29, 15, 30, tzinfo=UTC)  # a Sunday
    assert period_bounds("month", now) == ("2026-11", datetime(2026, 12, 1, tzinfo=UTC))
    assert period_bounds("day", now) == ("2026-11-29", datetime(2026, 11, 30, tzinfo=UTC))
    assert period_bounds("week", now) == ("2026-W48", datetime(2026, 11, 30, tzinfo=UTC))
    assert period_bounds("month", datetime(2026, 12, 31, tzinfo=UTC))[1] == datetime(
        2027, 1, 1, tzinfo=UTC)
    assert period_bounds("total", now)[0] == "total"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BudgetStore]:
    url = (request.getfixturevalue("pg_url") if request.param == "postgres"
           else f"sqlite:///{tmp_path}/budgets.db")
    s = budget_store_from_url(url)
    await s.open()
    yield s
    await s.close()


async def test_reservations_never_exceed_the_cap_under_concurrency(store: BudgetStore) -> None:
    key = f"test|{uuid.uuid4().hex}"
    results = await asyncio.gather(*(store.reserve(key, 1, 3, 20, None) for _ in range(60)))
    assert sum(r.granted for r in results) == 20
    assert await store.usage(key) == (20, 60)


async def test_row_cap_and_release(store: BudgetStore) -> None:
    key = f"test|{uuid.uuid4().hex}"
    assert (await store.reserve(key, 1, 64, None, 100)).granted
    refused = await store.reserve(key, 1, 64, None, 100)
    assert not refused.granted and (refused.used_queries, refused.used_rows) == (1, 64)
    await store.release(key, 1, 64)
    assert await store.usage(key) == (0, 0)
    await store.release(key, 5, 500)  # never below zero
    assert await store.usage(key) == (0, 0)
    assert (await store.reserve(key, 1, 100, None, 100)).granted


async def test_sqlite_budgets_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/budgets.db"
    first = budget_store_from_url(url)
    await first.open()
    await first.reserve("k", 1, 1, 5, None)
    await first.close()
    second = budget_store_from_url(url)
    await second.open()
    assert await second.usage("k") == (1, 1)
    await second.close()


def test_budget_store_urls() -> None:
    with pytest.raises(ConfigurationError, match="budgets must survive restarts"):
        budget_store_from_url("memory://")
    with pytest.raises(ConfigurationError):
        budget_store_from_url("redis://127.0.0.1/0")


def fake_call(principal: str = "alice", model: str = "digits", rows: int = 1,
              risk: float = 0.0, tenant: str = "acme", token_cost: int | None = None) -> Any:
    return SimpleNamespace(
        principal=Principal(id=principal, tenant=tenant, models=(model,)),
        model=SimpleNamespace(name=model), rows=rows, risk=risk,
        status=0, budget_holds=[], note=lambda *a: None, token_cost=token_cost,
        tokens_used=None)


async def test_budget_guard_alerts_once_and_refunds_failed_calls(tmp_path: Path) -> None:
    store = budget_store_from_url(f"sqlite:///{tmp_path}/b.db")
    await store.open()
    alerts: list[BudgetAlert] = []

    async def alert(a: BudgetAlert) -> None:
        alerts.append(a)

    guard = BudgetGuard(store, [Budget(queries=10, period="day", alert_at=0.8)], alert)
    for _ in range(10):
        call = fake_call()
        await guard.on_request(call)
        call.status = 200
        await guard.on_complete(call)
    assert [a.used_queries for a in alerts] == [8]
    assert "8/10 queries" in alerts[0].describe()
    with pytest.raises(RateLimited) as info:
        await guard.on_request(fake_call())
    assert info.value.reason == "budget_exhausted" and "10 queries per day" in info.value.message
    assert int(info.value.headers()["Retry-After"]) <= 86400
    other = fake_call(principal="bob")  # budgets are per principal
    await guard.on_request(other)
    other.status = 502  # the backend failed: the query is given back
    await guard.on_complete(other)
    assert await store.usage(other.budget_holds[0].key) == (0, 0)
    await store.close()


async def test_budget_guard_applies_only_to_its_models(tmp_path: Path) -> None:
    store = budget_store_from_url(f"sqlite:///{tmp_path}/b.db")
    await store.open()

    async def alert(a: BudgetAlert) -> None:
        return None

    guard = BudgetGuard(store, [Budget(models=["secret"], queries=1)], alert)
    for _ in range(3):
        await guard.on_request(fake_call(model="public"))
    await guard.on_request(fake_call(model="secret"))
    with pytest.raises(RateLimited):
        await guard.on_request(fake_call(model="secret"))
    await store.close()


async def test_token_budgets_reserve_the_ceiling_and_settle_to_use(store: BudgetStore) -> None:
    alerts: list[BudgetAlert] = []

    async def alert(a: BudgetAlert) -> None:
        alerts.append(a)

    model = f"llm-{uuid.uuid4().hex[:8]}"
    guard = BudgetGuard(store, [Budget(models=[model], tokens=100, period="day",
                                       alert_at=0.5)], alert)
    calls = [fake_call(model=model, token_cost=30) for _ in range(8)]
    results = await asyncio.gather(*(guard.on_request(c) for c in calls),
                                   return_exceptions=True)
    granted = [c for c, r in zip(calls, results, strict=True) if r is None]
    assert len(granted) == 3  # 3 x 30 reserved; a 4th would pass 100 while all are in flight
    refusal = next(r for r in results if isinstance(r, RateLimited))
    assert refusal.reason == "token_budget_exhausted"
    assert "10 of 100 tokens per day left" in refusal.message and "30" in refusal.message
    for call, used in zip(granted, (5, 5, 40), strict=True):  # settle: 5 + 5 + 40 = 50
        call.status, call.tokens_used = 200, used
        await guard.on_complete(call)
    key = granted[0].budget_holds[0].key
    assert await store.usage(key) == (0, 50)
    failed = fake_call(model=model, token_cost=30)
    await guard.on_request(failed)
    failed.status = 502  # nothing came back: the whole reservation is given back
    await guard.on_complete(failed)
    assert await store.usage(key) == (0, 50)
    # 60: the reservation that crossed 50; the refunds fell back to 40 and the third call's
    # extra 10 tokens crossed 50 again: still one alert for this key and period
    assert [a.used_tokens for a in alerts] == [60]
    assert "tokens" in alerts[0].describe()
    # a budget of tokens only does not touch classifier calls (no token cost)
    classifier = fake_call(model=model)
    await guard.on_request(classifier)
    assert classifier.budget_holds == [] and await store.usage(key) == (0, 50)


@pytest.fixture
async def limits_guard() -> AsyncIterator[Any]:
    """Makes rate-limit guards and closes their Redis pools afterwards."""
    made: list[RateLimitGuard] = []

    def make(**kw: Any) -> RateLimitGuard:
        made.append(RateLimitGuard(QuotaSettings(**kw)))
        return made[-1]

    yield make
    for guard in made:
        await guard.close()


async def test_rate_limit_per_principal_with_headers(limits_guard: Any) -> None:
    guard = limits_guard(limits=[RateLimit(scope="principal", rate="3/minute")])
    for _ in range(3):
        await guard.on_request(fake_call())
    with pytest.raises(RateLimited) as info:
        await guard.on_request(fake_call())
    headers = info.value.headers()
    assert headers["RateLimit-Limit"] == "3" and headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["RateLimit-Policy"] == "3;w=60"
    await guard.on_request(fake_call(principal="bob"))  # another principal has its own


async def test_tenant_and_model_scopes(limits_guard: Any) -> None:
    guard = limits_guard(limits=[RateLimit(scope="tenant", rate="2/minute"),
                                 RateLimit(scope="model", rate="5/minute", models=["digits"])])
    await guard.on_request(fake_call(principal="a"))
    await guard.on_request(fake_call(principal="b"))
    with pytest.raises(RateLimited, match="per tenant"):
        await guard.on_request(fake_call(principal="c"))
    for t in ("t1", "t2", "t3"):
        await guard.on_request(fake_call(tenant=t))
    with pytest.raises(RateLimited, match="per model"):
        await guard.on_request(fake_call(tenant="t4"))
    await guard.on_request(fake_call(tenant="t5", model="other"))  # the model rule is scoped


async def test_risky_callers_get_a_smaller_rate(limits_guard: Any) -> None:
    guard = limits_guard(limits=[RateLimit(scope="principal", rate="8/minute")],
                         risk_curve=CURVE)
    calm = 0
    while calm < 20:
        try:
            await guard.on_request(fake_call(principal="calm"))
        except RateLimited:
            break
        calm += 1
    risky = 0
    while risky < 20:
        try:
            await guard.on_request(fake_call(principal="risky", risk=0.8))
        except RateLimited as exc:
            assert "risk" not in exc.message  # a flagged caller is not told so
            break
        risky += 1
    assert (calm, risky) == (8, 2)  # cost 4 at risk 0.8: a quarter of the rate


async def test_unreachable_redis_fails_closed_or_open_by_config(limits_guard: Any) -> None:
    dead = "redis://127.0.0.1:1/0"
    closed = limits_guard(storage=dead, limits=[RateLimit(scope="principal", rate="5/second")])
    with pytest.raises(StoreError) as info:
        await closed.on_request(fake_call())
    assert info.value.store == "ratelimit"
    opened = limits_guard(storage=dead, fail_open=True,
                          limits=[RateLimit(scope="principal", rate="5/second")])
    await opened.on_request(fake_call())  # allowed; a warning is logged


async def test_redis_rate_limits_are_shared(redis_url: str, limits_guard: Any) -> None:
    rule = [RateLimit(scope="principal", rate="4/minute")]
    a = limits_guard(storage=redis_url, limits=rule)
    b = limits_guard(storage=redis_url, limits=rule)
    who = f"p-{uuid.uuid4().hex}"
    for guard in (a, b, a, b):
        await guard.on_request(fake_call(principal=who))
    with pytest.raises(RateLimited):
        await a.on_request(fake_call(principal=who))

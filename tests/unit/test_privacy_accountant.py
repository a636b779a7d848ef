"""ε from answer counts: the same numbers as dp_accounting's RDP accountant composing the same
events; the spend in SQLite and PostgreSQL survives a restart; a budget holds, alerts once,
and a refused charge is given back."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import RdpAccountant

from modelfence.config.privacy import PrivacySettings
from modelfence.errors import ConfigurationError
from modelfence.privacy.accountant import ORDERS, Accountant
from modelfence.privacy.budget import PrivacyAlert, PrivacyBudget
from modelfence.privacy.forms import parse_private
from modelfence.privacy.repeats import Draw, RepeatKeys, row_bytes
from modelfence.privacy.store import (
    MemoryPrivacyStore,
    PostgresPrivacyStore,
    PrivacyStore,
    SqlitePrivacyStore,
)

from ..outage_support import scratch_database


def direct(counts: dict[str, int], delta: float) -> float:
    account = RdpAccountant(list(ORDERS), NeighboringRelation.REPLACE_ONE)
    for spec, n in counts.items():
        kind, _, arg = spec.partition(":")
        mechanism = parse_private(kind, arg)
        assert mechanism is not None
        account.compose(mechanism.cost.event, n)
    return float(account.get_epsilon(delta))


@pytest.mark.parametrize("counts", [
    {"dp-rr:1": 1000}, {"dp-rr:0.5": 5000}, {"dp-gauss:2,1e-06": 10},
    {"dp-gauss:1,1e-06": 3000}, {"dp-rr:0.5": 200, "dp-gauss:1,1e-06": 50},
    {"dp-laplace:0.1": 20_000, "dp-bdpl:0.3,0.2": 700},
])
def test_composition_matches_dp_accounting(counts: dict[str, int]) -> None:
    got = Accountant(1e-6).epsilon(counts)
    want = direct(counts, 1e-6)
    pure = [parse_private(*s.partition(":")[::2]) for s in counts]
    if all(m is not None and m.cost.delta == 0 for m in pure):
        basic = math.fsum(m.cost.epsilon * n for m, n in zip(pure, counts.values(),
                                                             strict=True) if m is not None)
        want = min(want, basic)  # basic composition, where it is the tighter
    assert got == pytest.approx(want, rel=1e-9)


def test_few_pure_answers_cost_their_sum_and_none_cost_nothing() -> None:
    a = Accountant(1e-6)
    assert a.epsilon({"dp-rr:1": 3}) == pytest.approx(3.0)  # RDP says 3.0048 here
    assert a.epsilon({}) == 0.0 and a.epsilon({"dp-rr:1": 0}) == 0.0
    # the block path and the general path agree
    assert a.single("dp-rr:1", 2500) == pytest.approx(a._compute((("dp-rr:1", 2500),)))


def test_an_unknown_mechanism_in_the_store_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="'round:2' is not a private mechanism"):
        Accountant(1e-6).epsilon({"round:2": 1})


async def _charges(store: PrivacyStore) -> None:
    await store.open()
    try:
        assert await store.charge(["p", "t"], "dp-rr:1", 3) == [{"dp-rr:1": 3}] * 2
        assert await store.charge(["p"], "dp-gauss:1,1e-06", 2) == [
            {"dp-rr:1": 3, "dp-gauss:1,1e-06": 2}]
        await store.charge(["p"], "dp-gauss:1,1e-06", -5)  # never below zero
        assert await store.counts(["p", "t", "nobody"]) == [{"dp-rr:1": 3}, {"dp-rr:1": 3}, {}]
        kept = await store.remember({b"k1": b"one"}, expires=100.0, now=10.0)
        assert kept == {b"k1": b"one"}
        again = await store.remember({b"k1": b"two", b"k2": b"x"}, expires=100.0, now=11.0)
        assert again == {b"k1": b"one", b"k2": b"x"}  # the first draw wins
        assert await store.recall([b"k1", b"k3"], now=12.0) == [b"one", None]
        assert await store.recall([b"k1"], now=100.0) == [None]  # expired
        assert (await store.remember({b"k1": b"three"}, 200.0, now=150.0)) == {b"k1": b"three"}
        await store.remember({b"k1": b"four"}, 200.0, now=151.0, first=False)
        assert await store.recall([b"k1"], now=152.0) == [b"four"]
    finally:
        await store.close()


def test_memory_store() -> None:
    asyncio.run(_charges(MemoryPrivacyStore()))


def test_memory_repeats_are_bounded() -> None:
    async def go() -> None:
        store = MemoryPrivacyStore(entries=2)
        await store.remember({b"a": b"1", b"b": b"2", b"c": b"3"}, 10.0, 0.0)
        assert await store.recall([b"a", b"b", b"c"], 1.0) == [None, b"2", b"3"]
    asyncio.run(go())


def test_sqlite_store_keeps_the_spend_across_a_restart(tmp_path: Path) -> None:
    asyncio.run(_charges(SqlitePrivacyStore(tmp_path / "privacy.db")))

    async def reopened() -> None:
        store = SqlitePrivacyStore(tmp_path / "privacy.db")
        await store.open()
        try:
            assert await store.counts(["p"]) == [{"dp-rr:1": 3}]
        finally:
            await store.close()
    asyncio.run(reopened())


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[str]:
    with scratch_database(pg_url, "modelfence_privacy_unit") as url:
        yield url


@pytest.mark.postgres
def test_postgres_store_keeps_the_spend_across_a_restart(pg_db: str) -> None:
    asyncio.run(_charges(PostgresPrivacyStore(pg_db)))

    async def reopened() -> None:
        store = PostgresPrivacyStore(pg_db)
        await store.open()
        try:
            assert await store.counts(["p", "t"]) == [{"dp-rr:1": 3}, {"dp-rr:1": 3}]
        finally:
            await store.close()
    asyncio.run(reopened())


@pytest.mark.postgres
def test_postgres_charges_never_overspend_under_concurrency(pg_db: str) -> None:
    """Forty concurrent charges of ε 1 through two stores (two replicas), budget 10: never
    more than ten granted, the store holds exactly those granted (refusals given back), and
    charges after the burst are granted up to exactly ten."""
    settings = PrivacySettings(store=pg_db, principal_epsilon=10.0, tenant_epsilon=None)

    async def go() -> None:
        stores = [PostgresPrivacyStore(pg_db), PostgresPrivacyStore(pg_db)]
        for s in stores:
            await s.open()
        try:
            budgets = [PrivacyBudget(settings, s) for s in stores]
            results = await asyncio.gather(*(
                budgets[i % 2].charge("m", "alice", "acme", "dp-rr:1", 1) for i in range(40)))
            granted = sum(r.granted for r in results)
            assert 1 <= granted <= 10
            spent = await budgets[0].spent("m", "alice", "acme")
            assert spent.principal == pytest.approx(granted)
            more = [await budgets[1].charge("m", "alice", "acme", "dp-rr:1", 1)
                    for _ in range(12 - granted)]
            assert sum(c.granted for c in more) == 10 - granted
        finally:
            for s in stores:
                await s.close()
    asyncio.run(go())


def test_budget_refuses_gives_back_and_alerts_once() -> None:
    alerts: list[PrivacyAlert] = []

    async def alert(a: PrivacyAlert) -> None:
        alerts.append(a)

    settings = PrivacySettings(store="memory://", principal_epsilon=3.5, tenant_epsilon=5.0,
                               alert_at=0.5, window="day")

    async def go() -> None:
        budget = PrivacyBudget(settings, MemoryPrivacyStore(), alert)
        got = [await budget.charge("m", "alice", "acme", "dp-rr:1", 1) for _ in range(4)]
        assert [c.granted for c in got] == [True, True, True, False]
        assert got[3].refused_by == "principal" and got[3].spent.principal == pytest.approx(3)
        assert got[3].retry_after_s is not None and 0 < got[3].retry_after_s <= 86_400
        assert [(a.scope, a.spent) for a in alerts] == [("principal", 2.0), ("tenant", 3.0)]
        bob = [await budget.charge("m", "bob", "acme", "dp-rr:1", 1) for _ in range(3)]
        assert [c.granted for c in bob] == [True, True, False]  # the tenant's 5 are spent
        assert bob[2].refused_by == "tenant"
        assert [(a.principal, a.scope) for a in alerts] == [
            ("alice", "principal"), ("alice", "tenant"), ("bob", "principal")]  # each once
        other = await budget.spent("other-model", "alice", "acme")
        assert other.principal == 0.0  # budgets are per model
    asyncio.run(go())


def test_repeat_keys_and_draws() -> None:
    keys = RepeatKeys(b"s" * 32, 86_400.0)
    rows = row_bytes([[[0.5, 1.0], [0.5, 1.0], [0.25, 1.0]]], 3)
    assert rows[0] == rows[1] != rows[2]
    a = keys.answers("m", "dp-rr:1", 7, rows)
    assert a[0] == a[1] != a[2]
    assert keys.answers("m", "dp-rr:1", 8, rows)[0] != a[0]  # a new period, a new draw
    assert keys.answers("m2", "dp-rr:1", 7, rows)[0] != a[0]
    assert keys.answers("m", "dp-rr:2", 7, rows)[0] != a[0]
    assert keys.seen("alice", a)[0] != keys.seen("bob", a)[0]
    assert RepeatKeys(b"t" * 32, 86_400.0).answers("m", "dp-rr:1", 7, rows)[0] != a[0]
    assert keys.period(86_400.0 * 7 + 5) == (7, 86_400.0 * 8)
    d = Draw.new(True, __import__("numpy").array([0.0, 1.0]))
    back = Draw.decode(d.encode())
    assert back.id == d.id and back.charged and back.row.tolist() == [0.0, 1.0]


@pytest.mark.postgres
def test_postgres_store_without_durable_commits(pg_db: str) -> None:
    """`privacy.durable: false`: this store's sessions commit without waiting for the
    disk; the charges are the same."""
    async def go() -> None:
        store = PostgresPrivacyStore(pg_db + "?connect_timeout=5", durable=False)
        await store.open()
        try:
            async def setting(conn: object) -> str:
                cur = await conn.execute("SHOW synchronous_commit")  # type: ignore[attr-defined]
                return str((await cur.fetchone())[0])

            assert await store._on_pool(setting, not_open="") == "off"
            assert await store.charge(["p"], "dp-rr:1", 2) == [{"dp-rr:1": 2}]
        finally:
            await store.close()
    asyncio.run(go())


def test_memory_store_refused_with_several_workers() -> None:
    from modelfence.config import settings_from_mapping
    from modelfence.privacy.wiring import build_privacy
    from modelfence.shaping.guard import ShapingGuard

    settings = settings_from_mapping({"server": {"workers": 2},
                                      "privacy": {"store": "memory://"}})
    with pytest.raises(ConfigurationError, match=r"memory:// keeps one process's ε spend "
                       r"and answers, and server.workers is 2; use sqlite:///PATH"):
        build_privacy(settings, ShapingGuard({}), b"s" * 32, [])


def test_by_default_epsilon_is_accounted_never_refused() -> None:
    settings = PrivacySettings(store="memory://")
    assert settings.principal_epsilon is None and settings.tenant_epsilon is None

    async def go() -> None:
        budget = PrivacyBudget(settings, MemoryPrivacyStore())
        got = await budget.charge("m", "alice", "acme", "dp-rr:4", 500)
        assert got.granted and got.spent.principal > 1000
    asyncio.run(go())

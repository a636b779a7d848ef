"""The audit search's query building (filters, keyset, hostile input) and the chain checks
a page view makes, against a real SQLite chained store."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from modelfence.audit.chain import Entry, Head, link
from modelfence.audit.store import Batch, Query
from modelfence.audit.store_sqlite import SqliteAuditStore
from modelfence.console import audit_search
from modelfence.console.chain_status import check_head, check_window
from modelfence.console.session import ConsoleSession
from modelfence.errors import BadRequest, Forbidden

T0 = 1_764_806_400_000_000  # 2025-12-04T00:00:00Z in µs


def _session(models: str = "*", tenants: str = "*") -> ConsoleSession:
    return ConsoleSession("sid", "ops", frozenset({"audit:read"}),
                          frozenset(models.split(",")), frozenset(tenants.split(",")), 2**40)


def test_filters_become_one_bound_query_newest_first() -> None:
    f, before = audit_search.parse({"principal": " alice ", "tenant": "t1", "model": "digits",
                                    "action": "infer", "status": "4xx", "before": "101"})
    q = audit_search.query(f, before, 50)
    assert (q.principal, q.tenant, q.model, q.action, q.status_class) == (
        "alice", "t1", "digits", "infer", 4)
    assert (q.upto_seq, q.limit, q.newest_first, q.by_time) == (100, 50, True, False)
    sql, args = q.sql("?")
    assert "OFFSET" not in sql and "alice" not in sql  # values are parameters only
    assert "status / 100 = ?" in sql and "seq <= ?" in sql
    assert sql.endswith("ORDER BY seq DESC LIMIT ?") and args[-1] == 50
    # the next page's link carries the filters and the keyset cursor
    assert "before=51" in f.link(51) and "principal=alice" in f.link(51)
    # a time range pages in time order, its cursor the (time, position) of the last row
    f, before = audit_search.parse({"since": "2025-12-04T00:00", "until": "2025-12-05T00:00Z",
                                    "before": f"{T0 + 5}.77"})
    q = audit_search.query(f, before, 50)
    assert (q.since_us, q.until_us, q.cursor, q.upto_seq) == (
        T0, T0 + 86_400_000_000, (T0 + 5, 77), None)
    sql, args = q.sql("?")
    assert "(ts_us, seq) < (?, ?)" in sql and sql.endswith("ORDER BY ts_us DESC, seq DESC "
                                                           "LIMIT ?")


def test_action_ending_in_a_star_is_a_prefix() -> None:
    f, _ = audit_search.parse({"action": "alert:*"})
    q = audit_search.query(f, None, 10)
    assert q.action is None and q.action_prefix == "alert:"


@pytest.mark.parametrize(("params", "says"), [
    ({"principal": "x" * 257}, "at most 256"),
    ({"model": "a\x00b"}, "control characters"),
    ({"status": "6xx"}, "one of 2xx"),
    ({"status": "' OR 1=1 --"}, "one of 2xx"),
    ({"since": "yesterday"}, "not a date"),
    ({"since": "9999-12-31T23:59:59+14:00", "until": "0001-01-01T00:00:00-14:00"},
     "before until"),
    ({"before": "-1"}, "record position"),
    ({"before": "1e9"}, "record position"),
    ({"before": "٣"}, "record position"),  # a digit, but not an ASCII one
    ({"before": "9" * 40}, "record position"),
])
def test_hostile_input_is_a_400_naming_the_field(params: dict[str, str], says: str) -> None:
    with pytest.raises(BadRequest, match=says) as exc:
        audit_search.parse(params)
    assert exc.value.status == 400


def test_scoped_admin_searches_its_models_and_tenants_only() -> None:
    f, _ = audit_search.parse({})
    scoped = audit_search.scoped(f, _session("digits,iris", "t1"))
    assert (scoped.model, scoped.tenant) == ("digits", "t1")
    with pytest.raises(Forbidden):
        audit_search.scoped(audit_search.Filters(model="secret"), _session("digits", "*"))
    with pytest.raises(Forbidden):
        audit_search.scoped(audit_search.Filters(tenant="t2"), _session("*", "t1"))
    assert audit_search.scoped(f, _session()) == f


async def _store(tmp_path: Path, n: int) -> SqliteAuditStore:
    store = SqliteAuditStore(tmp_path / "audit.db")
    await store.open()
    entries = [Entry(T0 + i, f"r{i}", f"p{i % 3}", f"t{i % 2}", "digits",
                     "alert:extraction" if i % 5 == 0 else "infer", 200 if i % 4 else 429,
                     b'{"reason":"ok"}') for i in range(n)]
    await store.commit(lambda head, cp: Batch(link(head, entries)))
    return store


async def test_keyset_pages_cover_every_match_once(tmp_path: Path) -> None:
    store = await _store(tmp_path, 60)
    try:
        f, _ = audit_search.parse({"principal": "p1", "status": "2xx"})
        seen, before = [], None
        while True:
            rows = await store.select(audit_search.query(f, before, 7))
            seen += [r.seq for r in rows]
            if len(rows) < 7:
                break
            before = rows[-1].seq
        want = [s for s in range(60, 0, -1) if (s - 1) % 3 == 1 and (s - 1) % 4]
        assert seen == want
        prefix = await store.select(audit_search.query(
            audit_search.parse({"action": "alert:*"})[0], None, 100))
        assert [r.seq for r in prefix] == [s for s in range(60, 0, -1) if (s - 1) % 5 == 0]
    finally:
        await store.close()


async def test_the_searches_use_an_index(tmp_path: Path) -> None:
    store = await _store(tmp_path, 10)
    await store.close()
    db = sqlite3.connect(tmp_path / "audit.db")
    for q in (Query(tenant="t1", newest_first=True), Query(action="infer", newest_first=True),
              Query(status_class=4, newest_first=True),
              Query(since_us=T0, until_us=T0 + 5, by_time=True, newest_first=True)):
        sql, args = q.sql("?")
        plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert "USING INDEX" in plan, (q, plan)
    db.close()


async def test_window_and_head_checks_find_an_edited_record(tmp_path: Path) -> None:
    store = await _store(tmp_path, 30)
    try:
        rows = await store.select(Query(principal="p0", newest_first=True, limit=5))
        assert (await check_window(store, rows)).ok
        head = await check_head(store, None)
        assert head.ok and head.head_seq == 30 and head.walked == 30
        assert head.checkpoint_seq == 0
    finally:
        await store.close()
    db = sqlite3.connect(tmp_path / "audit.db")
    db.execute("UPDATE modelfence_audit SET principal = 'mallory' WHERE seq = 28")
    db.commit()
    db.close()
    store = SqliteAuditStore(tmp_path / "audit.db", create=False)
    await store.open()
    try:
        rows = await store.select(Query(newest_first=True, limit=5))
        window = await check_window(store, rows)
        assert window.broken == (28,)
        head = await check_head(store, None)
        assert not head.ok and "28" in (head.problem or "")
    finally:
        await store.close()


async def test_head_check_against_a_signed_checkpoint(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from modelfence.audit.checkpoint import Signer

    signer = Signer(Ed25519PrivateKey.generate())
    store = SqliteAuditStore(tmp_path / "audit.db")
    await store.open()
    try:
        first = link(Head(), [Entry(T0 + i, None, "p", "t", "m", "infer", 200, b"{}")
                              for i in range(10)])
        await store.commit(lambda h, c: Batch(first, signer.sign(10, first[-1].hash, T0)))
        more = [Entry(T0 + 20 + i, None, "p", "t", "m", "infer", 200, b"{}") for i in range(4)]
        await store.commit(lambda h, c: Batch(link(h, more)))
        assert await store.newest_checkpoint() == (await store.checkpoints())[-1]
        head = await check_head(store, signer.public)
        assert head.ok and head.signature == "verified"
        assert (head.checkpoint_seq, head.walked, head.head_seq) == (10, 4, 14)
        other = Signer(Ed25519PrivateKey.generate())
        wrong = await check_head(store, other.public)
        assert not wrong.ok and "checkpoint at record 10" in (wrong.problem or "")
    finally:
        await store.close()


async def test_a_time_range_pages_in_time_order_by_its_own_cursor(tmp_path: Path) -> None:
    """Records replayed late (old time, new position) land where their time says."""
    store = SqliteAuditStore(tmp_path / "audit.db")
    await store.open()
    times = [T0 + i * 10 for i in range(40)] + [T0 + 55, T0 + 5]  # two late replays
    entries = [Entry(t, None, "p", "t", "m", "infer", 200, b"{}") for t in times]
    try:
        await store.commit(lambda head, cp: Batch(link(head, entries)))
        params = {"since": "2025-12-04T00:00:00+00:00", "until": "2025-12-04T00:00:00.000300"}
        f, before = audit_search.parse(params)
        assert f.by_time and before is None
        got, pages = [], 0
        while True:
            q = audit_search.query(f, before, 7)
            assert q.by_time and "ORDER BY ts_us DESC, seq DESC" in q.sql("?")[0]
            rows = await store.select(q)
            got += [r.ts_us - T0 for r in rows]
            pages += 1
            if len(rows) < 7:
                break
            query_string = f.link(f.cursor_after(rows[-1]))
            f, before = audit_search.parse(dict(parse_qsl(query_string)))
            assert before == (rows[-1].ts_us, rows[-1].seq)
        want = sorted([t - T0 for t in times if t < T0 + 300], reverse=True)
        assert got == want and pages == 5  # 30 + 2 replays in range, newest time first
        with pytest.raises(BadRequest, match="time and position"):
            audit_search.parse({**params, "before": "12"})
    finally:
        await store.close()

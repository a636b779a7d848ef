"""A record the store refuses for good is set aside; it never stops the records after it.

The store here is a real SQLite file with a trigger that refuses one model name, as
PostgreSQL refuses a NUL or an over-long index entry: a permanent error, not an outage.
"""

from __future__ import annotations

import logging
import sqlite3
import stat
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelfence.audit.checkpoint import CheckpointPolicy, Signer
from modelfence.audit.failure import pg_permanent, sqlite_permanent
from modelfence.audit.record import TRUNCATED, event_record, safe_text
from modelfence.audit.spill import Spill
from modelfence.audit.writer import ChainedSink

from .test_audit_chain import Rec
from .test_audit_spill import Counts, ids_in_order, until
from .test_audit_writer import GatedStore

REFUSE = """CREATE TRIGGER refuse_poison BEFORE INSERT ON modelfence_audit
            WHEN NEW.model = 'poison' BEGIN SELECT RAISE(ABORT, 'value refused'); END"""


async def refusing_store(path: Path) -> GatedStore:
    store = GatedStore(path)
    await store.open()  # creates the table
    with sqlite3.connect(path) as db:
        db.execute(REFUSE)
    return store


def rec(i: int) -> Rec:
    return Rec(i, model="poison") if i in (4, 7) else Rec(i)


def dead_letter(folder: Path) -> list[dict[str, object]]:
    path = folder / "audit-dead-letter.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_a_refused_record_is_set_aside_and_the_rest_committed_in_order(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    counts, key = Counts(), Ed25519PrivateKey.generate()
    dead: list[int] = []
    metrics = counts.metrics()
    store = await refusing_store(tmp_path / "a.db")
    sink = ChainedSink(store, batch_max=64, flush_interval_ms=1, retry_s=0.05,
                       signer=Signer(key), policy=CheckpointPolicy(5, 3600),
                       spill=Spill(tmp_path / "spill", 1 << 20, type(metrics)(
                           spilled=metrics.spilled, replayed=metrics.replayed,
                           lost=metrics.lost, dead_letter=dead.append)))
    await store.inner.close()
    await sink.open()
    store.gate.clear()  # every record below lands in one batch
    for i in range(10):
        await sink.write(rec(i))  # type: ignore[arg-type]
    store.gate.set()
    for i in range(10, 13):
        await sink.write(rec(i))  # type: ignore[arg-type]
    await sink.close()
    good = [f"req-{i}" for i in range(13) if i not in (4, 7)]
    assert await ids_in_order(tmp_path / "a.db", key) == good  # the chain verifies
    assert sink.dead_lettered == 2 == sum(dead) and sink.lost == 0 and counts.spilled == 0
    assert [d["request_id"] for d in dead_letter(tmp_path / "spill")] == ["req-4", "req-7"]
    assert caplog.text.count("the store refused") == 1  # once per batch, not per record
    assert "audit store cannot take records" not in caplog.text  # not an outage


async def test_refused_records_in_the_spill_do_not_block_its_replay(tmp_path: Path) -> None:
    counts = Counts()
    store = await refusing_store(tmp_path / "a.db")
    await store.inner.close()
    sink = ChainedSink(store, batch_max=8, flush_interval_ms=1, retry_s=0.05,
                       spill=Spill(tmp_path / "spill", 1 << 20, counts.metrics()))
    await sink.open()
    store.down = True  # an outage first: the poison goes to the spill with the rest
    for i in range(10):
        await sink.write(rec(i))  # type: ignore[arg-type]
    await until(lambda: counts.spilled == 10)
    store.down = False
    for i in range(10, 14):
        await sink.write(rec(i))  # type: ignore[arg-type]
    await until(lambda: sink.spill is not None and sink.spill.empty)
    await sink.close()
    assert await ids_in_order(tmp_path / "a.db") == [
        f"req-{i}" for i in range(14) if i not in (4, 7)]
    assert sink.dead_lettered == 2 and len(dead_letter(tmp_path / "spill")) == 2
    assert not list((tmp_path / "spill").glob("spill-*.log"))


async def test_without_a_spill_a_refused_record_is_counted_and_the_rest_committed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "modelfence.audit")
    store = await refusing_store(tmp_path / "a.db")
    await store.inner.close()
    sink = ChainedSink(store, durability="strict", retry_s=0.05)
    await sink.open()
    for i in range(6):
        await sink.write(rec(i))  # type: ignore[arg-type]
    await sink.close()
    assert await ids_in_order(tmp_path / "a.db") == [f"req-{i}" for i in range(6) if i != 4]
    assert sink.dead_lettered == 1 and "not kept" in caplog.text


class _PgError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        self.sqlstate = sqlstate


@pytest.mark.parametrize(("sqlstate", "refused"), [
    ("22021", True), ("22P05", True), ("54000", True), ("23505", True), ("42601", True),
    ("08006", False), ("57P01", False), ("57P03", False), ("53300", False), (None, False),
    ("40001", False), ("57014", False), ("42501", False)])
def test_postgres_errors_tell_a_refused_value_from_an_outage(sqlstate: str | None,
                                                            refused: bool) -> None:
    assert pg_permanent(_PgError(sqlstate)) is refused
    assert pg_permanent(TimeoutError()) is False


def test_values_psycopg_refuses_to_send_are_permanent() -> None:
    psycopg = pytest.importorskip("psycopg")
    assert pg_permanent(psycopg.DataError("PostgreSQL text fields cannot contain NUL"))
    assert pg_permanent(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates"))
    assert not pg_permanent(psycopg.OperationalError("connection failed"))
    assert not pg_permanent(psycopg.errors.ConnectionTimeout("pool"))


def test_sqlite_errors_tell_a_refused_value_from_an_outage() -> None:
    assert sqlite_permanent(sqlite3.IntegrityError("constraint failed"))
    assert sqlite_permanent(sqlite3.DataError("too big"))
    assert not sqlite_permanent(sqlite3.OperationalError("database is locked"))
    assert not sqlite_permanent(sqlite3.OperationalError("disk I/O error"))


def test_records_keep_only_safe_capped_text() -> None:
    r = event_record(action="admin:\x1b[31mx", reason="r\x00" * 5000, model="\x00m\ud800",
                     principal="p" * 5000, tenant="t\n")
    assert (r.action, r.model, r.tenant) == ("admin:[31mx", "m", "t")
    assert r.principal is not None and len(r.principal) == 256
    assert r.principal.endswith(TRUNCATED) and len(r.reason) == 1024
    assert orjson.dumps(r.to_dict())  # no surrogate left to refuse
    assert safe_text("plain text, unchanged") == "plain text, unchanged"


@pytest.mark.parametrize("field", ["request_id", "action", "model", "principal", "tenant",
                                   "key_id", "source", "decision", "reason", "replica",
                                   "shaping", "policy_ids", "trail key", "trail value"])
def test_each_text_field_is_cleaned_when_one_needs_it(field: str) -> None:
    """A clean record is kept as built (the quick check); one bad field anywhere, a value of
    another type or an over-long trail key sends the record through the careful path."""
    from dataclasses import replace

    clean = event_record(action="admin:key", reason="ok", model="m", principal="p",
                         tenant="t", target="k", details={"n": 1})
    clean.policy_ids, clean.trail, clean.shaping = ["grant"], [{"guard": "g"}], "full"
    assert replace(clean).to_dict() == clean.to_dict()  # nothing to clean: unchanged
    bad = "x\x00" + "y" * 2000
    if field == "policy_ids":
        r = replace(clean, policy_ids=[bad, 7])
        assert len(r.policy_ids[0]) == 256 and r.policy_ids[0].endswith(TRUNCATED)
        assert r.policy_ids[0].startswith("xy") and r.policy_ids[1] == "7"
    elif field.startswith("trail"):
        trail = [{bad: "v"}] if field == "trail key" else [{"guard": bad}]
        r = replace(clean, trail=trail)
        [(key, value)] = r.trail[0].items()
        assert len(key if field == "trail key" else value) == (256 if field == "trail key"
                                                                else 1024)
        assert "\x00" not in key + value
    else:
        r = replace(clean, **{field: bad})
        got = getattr(r, field)
        assert "\x00" not in got and got.endswith(TRUNCATED)
        assert len(got) == (1024 if field == "reason" else 256)
        assert replace(clean, **{field: 12}).to_dict()[field] == "12"  # not a str: made one

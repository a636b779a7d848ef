"""The chain format, checkpoints, configuration and sink wiring of the audit log.

Also home of the small helpers the other audit tests share (`Rec`, `write_log`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelfence.audit.chain import GENESIS, Head, Row, entry_from_dict, hash_of, link
from modelfence.audit.checkpoint import (
    Checkpoint,
    CheckpointPolicy,
    Signer,
    generate_keypair,
    load_public_key,
    load_signer,
)
from modelfence.audit.sinks import JsonlSink, LogSink, NullSink, audit_sink_from_url
from modelfence.audit.store import Query
from modelfence.audit.store_sqlite import SqliteAuditStore
from modelfence.audit.writer import ChainedSink
from modelfence.config import AuditSettings, settings_from_mapping
from modelfence.errors import ConfigurationError


class Rec:
    """Stands in for AuditRecord: the sink only calls `to_dict()`."""

    def __init__(self, i: int, **extra: Any) -> None:
        self.data = {"time": f"2025-01-01T00:00:{i % 60:02d}.{i:06d}+00:00",
                     "request_id": f"req-{i}", "action": "infer", "model": f"m{i % 3}",
                     "principal": f"user{i % 5}", "tenant": "acme", "status": 200,
                     "reason": "ok", "trail": [{"guard": "identity", "decision": "allow"}],
                     **extra}

    def to_dict(self) -> dict[str, Any]:
        return self.data


async def write_log(path: Path, n: int, *, signer: Signer | None = None, every: int = 10,
                    start: int = 0, **kw: Any) -> None:
    """Strict mode: one commit per record, so checkpoints fall exactly every `every`."""
    sink = ChainedSink(SqliteAuditStore(path), signer=signer, durability="strict",
                       policy=CheckpointPolicy(every, 3600), **kw)
    await sink.open()
    for i in range(start, start + n):
        await sink.write(Rec(i))  # type: ignore[arg-type]
    await sink.close()


def rows_of(path: Path) -> list[Row]:
    with sqlite3.connect(path) as db:
        return [Row._make(r) for r in db.execute(
            "SELECT seq, ts_us, request_id, principal, tenant, model, action, status, payload,"
            " prev, hash FROM modelfence_audit ORDER BY seq")]


def test_rows_link_and_hash_cover_every_column() -> None:
    entries = [entry_from_dict(Rec(i).to_dict(), now=0) for i in range(3)]
    rows = link(Head(), entries)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev == GENESIS
    assert [r.prev for r in rows[1:]] == [r.hash for r in rows[:-1]]
    assert all(hash_of(r) == r.hash for r in rows)
    # the payload is the record's canonical JSON: sorted keys, no spaces
    assert rows[0].payload == orjson.dumps(Rec(0).to_dict(), option=orjson.OPT_SORT_KEYS)
    assert rows[0].principal == "user0" and rows[0].model == "m0" and rows[0].status == 200
    assert rows[0].ts_us == 1_735_689_600_000_000
    for column in ("ts_us", "request_id", "principal", "tenant", "model", "action", "status",
                   "payload", "prev"):
        changed = rows[1]._replace(**{column: b"x" if column in ("payload", "prev") else
                                      (7 if column in ("ts_us", "status") else "x")})
        assert hash_of(changed) != rows[1].hash, column
    assert hash_of(rows[1], seq=5) != rows[1].hash


def test_entry_tolerates_missing_or_odd_fields() -> None:
    e = entry_from_dict({"time": "not a time", "status": "x", "principal": 5}, now=12.5)
    assert (e.ts_us, e.status, e.principal, e.model) == (12_500_000, None, "5", None)
    naive = entry_from_dict({"time": "2025-01-01T00:00:00"}, now=0)
    assert naive.ts_us == 1_735_689_600_000_000  # naive times are UTC


def test_checkpoint_signature_key_and_policy(tmp_path: Path) -> None:
    kid = generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    signer = load_signer(tmp_path / "k.pem")
    public = load_public_key(tmp_path / "k.pub.pem")
    assert signer.key_id == kid
    assert load_public_key(tmp_path / "k.pem").public_bytes_raw() == public.public_bytes_raw()
    cp = signer.sign(10, b"h" * 32, 1)
    assert cp.problem(public) is None
    assert Checkpoint.from_dict(orjson.loads(orjson.dumps(cp.to_dict()))) == cp
    forged = Checkpoint(11, cp.hash, cp.ts_us, cp.key_id, cp.signature)
    assert "not valid" in str(forged.problem(public))
    other = Ed25519PrivateKey.generate().public_key()
    assert "not by the given key" in str(cp.problem(other))
    with pytest.raises(ConfigurationError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "k.pem", tmp_path / "other.pem")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigurationError, match="not a PEM key"):
        load_signer(tmp_path / "junk.pem")
    with pytest.raises(ConfigurationError, match="must be an Ed25519 private key"):
        load_signer(tmp_path / "k.pub.pem")

    policy = CheckpointPolicy(every=100, interval_s=60)
    last = signer.sign(100, b"h" * 32, 0)
    assert not policy.due(150, last, 30_000_000)
    assert policy.due(200, last, 30_000_000)
    assert policy.due(101, last, 61_000_000)
    assert not policy.due(100, last, 999_000_000)  # nothing new since the last one


def test_config_defaults_and_paths_relative_to_config(tmp_path: Path) -> None:
    s = settings_from_mapping({}, base_dir=tmp_path)
    assert s.audit.sink == f"sqlite:///{tmp_path}/audit.db"
    assert s.audit.durability == "batched"
    s = settings_from_mapping({"audit": {"sink": "sqlite:////abs/a.db", "durability": "strict",
                                         "checkpoint_key_file": "keys/cp.pem"}},
                              base_dir=tmp_path)
    assert s.audit.sink == "sqlite:////abs/a.db"
    assert s.audit.checkpoint_key_file == tmp_path / "keys" / "cp.pem"
    with pytest.raises(ConfigurationError, match=r"audit\.durability"):
        settings_from_mapping({"audit": {"durability": "sometimes"}})


def test_sink_factory(tmp_path: Path) -> None:
    assert isinstance(audit_sink_from_url("none://"), NullSink)
    assert isinstance(audit_sink_from_url("log://"), LogSink)
    assert isinstance(audit_sink_from_url(f"jsonl:///{tmp_path}/a.jsonl"), JsonlSink)
    sink = audit_sink_from_url(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(sink, ChainedSink) and not sink.strict
    assert not (tmp_path / "a.db").exists()  # built, not opened: no file yet
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    strict = audit_sink_from_url(f"sqlite:///{tmp_path}/a.db", AuditSettings(
        durability="strict", checkpoint_key_file=tmp_path / "k.pem"))
    assert isinstance(strict, ChainedSink) and strict.strict
    with pytest.raises(ConfigurationError, match="cannot read audit checkpoint key"):
        audit_sink_from_url(f"sqlite:///{tmp_path}/a.db",
                            AuditSettings(checkpoint_key_file=tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="unknown sink"):
        audit_sink_from_url("kafka://broker")


async def test_store_queries_by_principal_model_and_time(tmp_path: Path) -> None:
    await write_log(tmp_path / "a.db", 30)
    store = SqliteAuditStore(tmp_path / "a.db", create=False)
    await store.open()
    try:
        def seqs(rows: Iterable[Row]) -> list[int]:
            return [r.seq for r in rows]

        assert seqs(await store.select(Query(principal="user1"))) == [2, 7, 12, 17, 22, 27]
        assert seqs(await store.select(Query(principal="user1", model="m1"))) == [2, 17]
        t10 = rows_of(tmp_path / "a.db")[9].ts_us
        assert seqs(await store.select(Query(since_us=t10, until_us=t10 + 3_000_000))) == [
            10, 11, 12]
        assert seqs(await store.select(Query(limit=3, newest_first=True))) == [30, 29, 28]
        pages = [seqs(p) async for p in store.scan(Query(after_seq=5), page=10)]
        assert pages == [list(range(6, 16)), list(range(16, 26)), list(range(26, 31))]
        # every filter of the query holds on every page, and pages come oldest first
        assert [p async for p in store.scan(Query(action_prefix="alert:"))] == []
        pages = [seqs(p) async for p in store.scan(
            Query(principal="user1", newest_first=True), page=4)]
        assert pages == [[2, 7, 12, 17], [22, 27]]
        assert (await store.head()).seq == 30
    finally:
        await store.close()


def test_a_row_is_its_entry_between_position_and_hashes() -> None:
    """Linking and hashing pass an entry on as `*entry` and read it back as `row[1:9]`."""
    from modelfence.audit.chain import COLUMNS, Entry

    assert ("seq", *Entry._fields, "prev", "hash") == COLUMNS
    e = entry_from_dict(Rec(3).to_dict(), now=0)
    [row] = link(Head(), [e])
    assert row[1:9] == tuple(e) and hash_of(row) == row.hash

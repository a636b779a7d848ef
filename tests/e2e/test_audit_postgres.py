"""The audit log on a real PostgreSQL: append, query, verify, tamper, replicas sharing it."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelfence.audit.chain import Row
from modelfence.audit.checkpoint import CheckpointPolicy, Signer, generate_keypair
from modelfence.audit.store import Query, audit_store_from_url
from modelfence.audit.store_postgres import LOCK_KEY, PostgresAuditStore
from modelfence.audit.verify import verify_store
from modelfence.audit.writer import ChainedSink
from modelfence.errors import StoreError

from ..unit.test_audit_chain import Rec
from .test_audit_crash import crash_and_recover, start_writer, verify

pytestmark = pytest.mark.postgres


async def test_append_query_verify_and_tamper(pg_audit_url: str) -> None:
    key = Ed25519PrivateKey.generate()
    sink = ChainedSink(audit_store_from_url(pg_audit_url), durability="strict",
                       signer=Signer(key), policy=CheckpointPolicy(10, 3600))
    await sink.open()
    for i in range(40):
        await sink.write(Rec(i))  # type: ignore[arg-type]
    await sink.close()

    store = audit_store_from_url(pg_audit_url)
    await store.open()
    try:
        assert [r.seq for r in await store.select(Query(principal="user2", model="m1"))] == [
            8, 23, 38]
        assert (await verify_store(store, public_key=key.public_key())).ok
        async with await psycopg.AsyncConnection.connect(pg_audit_url, autocommit=True) as c:
            await c.execute("UPDATE modelfence_audit SET model = 'hidden' WHERE seq = 12")
            damage = (await verify_store(store, public_key=key.public_key())).damage
            assert damage is not None and (damage.seq, damage.kind) == (12, "modified")
            await c.execute("UPDATE modelfence_audit SET model = 'm2' WHERE seq = 12")
            await c.execute("DELETE FROM modelfence_audit WHERE seq > 38")
            damage = (await verify_store(store, public_key=key.public_key())).damage
            assert damage is not None and (damage.seq, damage.kind) == (39, "truncated")
    finally:
        await store.close()


async def test_two_replica_processes_append_one_chain(pg_audit_url: str,
                                                      tmp_path: Path) -> None:
    """Two processes append at once; the advisory lock makes their batches take turns."""
    key = tmp_path / "cp.pem"
    generate_keypair(key, tmp_path / "cp.pub.pem")
    gate = tmp_path / "go"
    procs = [start_writer(pg_audit_url, "batched", key, 2000, tag, tmp_path / "acks", gate)
             for tag in ("a", "b")]
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"go.{t}").exists() for t in "ab"):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    gate.touch()
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read().decode()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    report, ids = await verify(pg_audit_url, key)
    assert report.ok, report.damage
    assert report.records == 4000 and report.last_checkpoint == 4000
    assert ids == {f"{t}-{i}" for t in "ab" for i in range(2000)}
    store = audit_store_from_url(pg_audit_url)
    await store.open()
    rows = await store.select(Query(limit=4000))
    await store.close()
    tags = [r.principal for r in rows]
    assert sum(a != b for a, b in itertools.pairwise(tags)) > 1  # really interleaved


async def test_sigkill_mid_load_on_postgres(pg_audit_url: str, tmp_path: Path) -> None:
    await crash_and_recover(pg_audit_url, "strict", tmp_path)


async def test_unreachable_postgres_is_a_store_error() -> None:
    store = PostgresAuditStore("postgresql://nobody@127.0.0.1:1/none", timeout_s=1)
    with pytest.raises(StoreError, match="postgresql audit store unreachable"):
        await store.open()


async def test_seal_prune_verify_and_tamper_on_postgres(pg_audit_url: str,
                                                        tmp_path: Path) -> None:
    """Retention on PostgreSQL: the same segments, the same anchor after pruning."""
    from modelfence.audit.retention import prune, seal, verify_archive
    from modelfence.errors import RetentionRefused

    signer = Signer(Ed25519PrivateKey.generate())
    sink = ChainedSink(audit_store_from_url(pg_audit_url), durability="strict", signer=signer,
                       policy=CheckpointPolicy(10, 3600))
    await sink.open()
    for i in range(40):
        await sink.write(Rec(i))  # type: ignore[arg-type]
    await sink.close()
    archive = tmp_path / "archive"
    store = audit_store_from_url(pg_audit_url)
    await store.open()
    try:
        done = await seal(store, signer, archive, segment_records=15)
        assert [(m.first_seq, m.last_seq) for m in done.segments] == [(1, 15), (16, 30)]
        done = await seal(store, signer, archive, through=40, segment_records=15)
        assert [(m.first_seq, m.last_seq) for m in done.segments] == [(31, 40)]
        with pytest.raises(RetentionRefused, match="chain's head"):
            await store.delete_through(40)
        pruned = await prune(store, signer.public, archive, through=30)
        assert pruned.rows == 30
        assert (await store.select(Query(limit=1)))[0].seq == 31
        report = await verify_store(store, public_key=signer.public)
        assert report.ok and (report.first_seq, report.last_seq) == (31, 40)
        whole = await verify_archive(store, archive, public_key=signer.public)
        assert whole.ok and (whole.first_seq, whole.records) == (1, 40)
        async with await psycopg.AsyncConnection.connect(pg_audit_url, autocommit=True) as c:
            await c.execute("UPDATE modelfence_audit SET tenant = 'other' WHERE seq = 31")
        damage = (await verify_store(store, public_key=signer.public)).damage
        assert damage is not None and (damage.seq, damage.kind) == (31, "modified")
        async with await psycopg.AsyncConnection.connect(pg_audit_url, autocommit=True) as c:
            await c.execute("DELETE FROM modelfence_audit WHERE seq = 31")
        damage = (await verify_store(store, public_key=signer.public)).damage
        assert damage is not None and (damage.seq, damage.kind) == (31, "deleted")
    finally:
        await store.close()


async def test_a_retry_waits_for_the_earlier_attempt_before_looking_for_it(
        pg_audit_url: str) -> None:
    """A commit whose reply was lost may still be committing when the retry looks for its
    first row: the look happens under the advisory lock, so the retry sees it landed and
    does not write the batch twice."""
    import asyncio

    from modelfence.audit.chain import Head, entry_from_dict, link
    from modelfence.audit.spill import Ambiguous
    from modelfence.audit.writer import _Pending

    entries = [entry_from_dict(Rec(i).to_dict(), now=time.time()) for i in range(3)]
    rows = link(Head(), entries)
    sink = ChainedSink(audit_store_from_url(pg_audit_url), retry_s=0)
    await sink.open()
    try:
        async with await psycopg.AsyncConnection.connect(pg_audit_url) as old:
            # the earlier attempt: rows written under the lock, COMMIT not yet done
            await old.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            async with old.cursor() as cur, cur.copy(
                    "COPY modelfence_audit (" + ",".join(Row._fields) + ") FROM STDIN") as cp:
                for row in rows:
                    await cp.write_row(row)
            retry = asyncio.create_task(sink._attempt(  # the writer's retry of that batch
                _Pending(entries, Ambiguous(rows[0].seq, rows[0].hash, len(rows)))))
            await asyncio.sleep(0.5)
            assert not retry.done()  # waits for the lock, not for nothing
            await old.commit()
        await asyncio.wait_for(retry, 10)
    finally:
        await sink.close()
    store = audit_store_from_url(pg_audit_url)
    await store.open()
    try:
        assert [r.request_id for r in await store.select(Query())] == [
            "req-0", "req-1", "req-2"]
        assert (await verify_store(store)).ok
    finally:
        await store.close()

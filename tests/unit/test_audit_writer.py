"""The chained sink: durability modes, back-pressure, failures, checkpoints, shared files."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelfence.audit.chain import Head, Row
from modelfence.audit.checkpoint import Checkpoint, CheckpointPolicy, Signer
from modelfence.audit.store import AuditStore, Batch, Plan, Probe, Query
from modelfence.audit.store_sqlite import SqliteAuditStore
from modelfence.audit.verify import verify_store
from modelfence.audit.writer import ChainedSink
from modelfence.errors import StoreError

from .test_audit_chain import Rec


class GatedStore(AuditStore):
    """A SQLite store whose commits wait for `gate`, or fail while `down`."""

    def __init__(self, path: Path) -> None:
        self.inner = SqliteAuditStore(path)
        self.gate = asyncio.Event()
        self.gate.set()
        self.down = False
        self.commits = 0

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def commit(self, plan: Plan, *, probe: Probe | None = None) -> Batch:
        await self.gate.wait()
        if self.down:
            raise StoreError("disk on fire")
        self.commits += 1
        return await self.inner.commit(plan, probe=probe)

    async def select(self, query: Query) -> list[Row]:
        return await self.inner.select(query)

    async def checkpoints(self) -> list[Checkpoint]:
        return await self.inner.checkpoints()

    async def head(self) -> Head:
        return await self.inner.head()


def count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM modelfence_audit").fetchone()[0])


async def test_strict_answers_after_the_commit(tmp_path: Path) -> None:
    sink = ChainedSink(SqliteAuditStore(tmp_path / "a.db"), durability="strict")
    await sink.open()
    for i in range(5):
        await sink.write(Rec(i))  # type: ignore[arg-type]
        assert count(tmp_path / "a.db") == i + 1  # visible to another connection already
    await sink.close()
    with pytest.raises(StoreError, match="not open"):
        await sink.write(Rec(9))  # type: ignore[arg-type]


async def test_batched_answers_first_and_commits_in_batches(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "a.db")
    key = Ed25519PrivateKey.generate()
    sink = ChainedSink(store, batch_max=50, flush_interval_ms=5, signer=Signer(key),
                       policy=CheckpointPolicy(10_000, 3600))
    await sink.open()
    store.gate.clear()
    for i in range(200):
        await asyncio.wait_for(sink.write(Rec(i)), 1)  # type: ignore[arg-type]
    assert count(tmp_path / "a.db") == 0  # answered, not yet written
    store.gate.set()
    await sink.close()
    assert sink.written == 200 and sink.lost == 0
    assert store.commits <= 6  # about 200 / batch_max, plus the seal
    await store.open()
    report = await verify_store(store, public_key=key.public_key())
    assert report.ok and report.records == 200
    assert report.last_checkpoint == 200  # close signed the head


async def test_full_queue_makes_writers_wait_and_drops_nothing(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "a.db")
    sink = ChainedSink(store, queue_max=2, batch_max=1, flush_interval_ms=0)
    await sink.open()
    store.gate.clear()
    writes = [asyncio.create_task(sink.write(Rec(i))) for i in range(6)]  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert sum(t.done() for t in writes) < 6  # back-pressure, not loss
    store.gate.set()
    await asyncio.gather(*writes)
    await sink.close()
    assert count(tmp_path / "a.db") == 6


async def test_idle_writer_signs_the_head_after_the_interval(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    caplog.set_level(logging.INFO, "modelfence.audit.checkpoint")
    store = SqliteAuditStore(tmp_path / "a.db")
    sink = ChainedSink(store, signer=Signer(Ed25519PrivateKey.generate()), flush_interval_ms=0,
                       policy=CheckpointPolicy(every=1000, interval_s=0.1))
    await sink.open()
    for i in range(3):
        await sink.write(Rec(i))  # type: ignore[arg-type]
    await asyncio.sleep(0.4)
    assert [cp.seq for cp in await store.checkpoints()][-1] == 3  # without waiting for close
    assert '"seq":3' in caplog.text  # shipped with the logs: an anchor kept elsewhere
    await sink.close()


async def test_two_writers_on_one_file_build_one_chain(tmp_path: Path) -> None:
    """Two granian workers share audit.db: the head is read under the write lock."""
    key = Ed25519PrivateKey.generate()
    sinks = [ChainedSink(SqliteAuditStore(tmp_path / "a.db"), batch_max=7, flush_interval_ms=0,
                         signer=Signer(key), policy=CheckpointPolicy(25, 3600))
             for _ in range(2)]
    for s in sinks:
        await s.open()

    async def pump(sink: ChainedSink, base: int) -> None:
        for i in range(150):
            await sink.write(Rec(base + i))  # type: ignore[arg-type]
            if i % 10 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(pump(sinks[0], 0), pump(sinks[1], 1000))
    for s in sinks:
        await s.close()
    store = SqliteAuditStore(tmp_path / "a.db")
    await store.open()
    report = await verify_store(store, public_key=key.public_key())
    ids = {r.request_id for r in await store.select(Query(limit=1000))}
    await store.close()
    assert report.ok and report.records == 300, report.damage
    assert ids == {f"req-{i}" for i in [*range(150), *range(1000, 1150)]}

"""An audit store outage: batches go to the local spill and are replayed in order, or the
gateway refuses calls; nothing is dropped, and records survive a restart."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelfence.audit.checkpoint import CheckpointPolicy, Signer
from modelfence.audit.spill import Spill, SpillMetrics, pending_in
from modelfence.audit.store import Query
from modelfence.audit.store_sqlite import SqliteAuditStore
from modelfence.audit.verify import verify_store
from modelfence.audit.writer import ChainedSink
from modelfence.errors import StoreError

from .test_audit_chain import Rec
from .test_audit_writer import GatedStore


class Counts:
    def __init__(self) -> None:
        self.spilled = self.replayed = self.lost = 0
        self.pending = (0, 0)

    def metrics(self) -> SpillMetrics:
        def add(name: str):  # type: ignore[no-untyped-def]
            return lambda n: setattr(self, name, getattr(self, name) + n)
        return SpillMetrics(spilled=add("spilled"), replayed=add("replayed"), lost=add("lost"),
                            pending=lambda r, b: setattr(self, "pending", (r, b)))


async def ids_in_order(path: Path, key: Ed25519PrivateKey | None = None) -> list[str]:
    store = SqliteAuditStore(path)
    await store.open()
    try:
        report = await verify_store(store, public_key=key.public_key() if key else None)
        assert report.ok, report.damage
        return [str(r.request_id) for r in await store.select(Query(limit=100_000))]
    finally:
        await store.close()


async def until(check, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("durability", ["batched", "strict"])
async def test_an_outage_spills_and_replays_every_record_in_order(
        tmp_path: Path, durability: str, caplog: pytest.LogCaptureFixture) -> None:
    counts, key = Counts(), Ed25519PrivateKey.generate()
    store = GatedStore(tmp_path / "a.db")
    sink = ChainedSink(store, durability=durability, batch_max=8, flush_interval_ms=1,  # type: ignore[arg-type]
                       retry_s=0.05, signer=Signer(key), policy=CheckpointPolicy(20, 3600),
                       spill=Spill(tmp_path / "spill", 1 << 20, counts.metrics()))
    await sink.open()
    for i in range(10):
        await sink.write(Rec(i))  # type: ignore[arg-type]
    store.down = True
    for i in range(10, 60):  # answered during the outage (strict: once in the spill)
        await asyncio.wait_for(sink.write(Rec(i)), 5)  # type: ignore[arg-type]
    await until(lambda: counts.spilled >= 50)
    assert sink.spill is not None and sink.spill.records == counts.pending[0] >= 50
    assert sink.accepting and await sink.ready()
    assert pending_in(tmp_path / "spill") == sink.spill.records
    store.down = False
    for i in range(60, 80):  # newer records wait behind the spilled ones
        await sink.write(Rec(i))  # type: ignore[arg-type]
    await until(lambda: sink.spill is not None and sink.spill.empty)
    await sink.close()
    assert await ids_in_order(tmp_path / "a.db", key) == [f"req-{i}" for i in range(80)]
    assert counts.replayed == counts.spilled >= 50 and counts.lost == 0 and sink.lost == 0
    assert counts.pending == (0, 0)
    assert caplog.text.count("audit store cannot take records") == 1  # once, not per batch
    assert caplog.text.count("audit store answers again") == 1
    assert list((tmp_path / "spill").iterdir()) == []  # a clean stop leaves no segment


async def test_spilled_records_survive_a_restart_and_go_first(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "a.db")
    first = ChainedSink(store, batch_max=4, flush_interval_ms=1, retry_s=0.05,
                        spill=Spill(tmp_path / "spill", 1 << 20), close_timeout_s=0.2)
    await first.open()
    store.down = True
    for i in range(30):
        await first.write(Rec(i))  # type: ignore[arg-type]
    await first.close()  # the store never came back: the records stay in the spill
    assert pending_in(tmp_path / "spill") == 30

    counts = Counts()
    second = ChainedSink(SqliteAuditStore(tmp_path / "a.db"), batch_max=4, flush_interval_ms=1,
                         spill=Spill(tmp_path / "spill", 1 << 20, counts.metrics()))
    await second.open()
    for i in range(30, 40):
        await second.write(Rec(i))  # type: ignore[arg-type]
    await until(lambda: second.spill is not None and second.spill.empty)
    await second.close()
    assert await ids_in_order(tmp_path / "a.db") == [f"req-{i}" for i in range(40)]
    assert counts.replayed == 30 + counts.spilled  # newer records queued behind the old
    assert pending_in(tmp_path / "spill") == 0 and not list((tmp_path / "spill").iterdir())


async def test_a_full_spill_refuses_calls_until_the_store_answers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "modelfence.audit")
    store = GatedStore(tmp_path / "a.db")
    sink = ChainedSink(store, batch_max=4, flush_interval_ms=1, retry_s=0.02,
                       spill=Spill(tmp_path / "spill", 4096))
    await sink.open()
    store.down = True
    i = 0
    while sink.accepting:
        await sink.write(Rec(i))  # type: ignore[arg-type]
        i += 1
        await asyncio.sleep(0.005)
        assert i < 1000
    assert not await sink.ready()
    for j in range(i, i + 20):  # records of calls already answered: held, never dropped
        await sink.write(Rec(j))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert "calls are refused (503)" in caplog.text
    store.down = False
    await until(lambda: sink.accepting and sink.spill is not None and sink.spill.empty)
    await sink.close()
    assert await ids_in_order(tmp_path / "a.db") == [f"req-{n}" for n in range(i + 20)]
    assert sink.lost == 0


async def test_without_a_spill_a_failing_store_refuses_calls_and_drops_nothing(
        tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "a.db")
    sink = ChainedSink(store, durability="strict", retry_s=0.02)
    await sink.open()
    store.down = True
    write = asyncio.create_task(sink.write(Rec(1)))  # type: ignore[arg-type]
    await until(lambda: not sink.accepting)
    assert not write.done()
    store.down = False
    await asyncio.wait_for(write, 5)
    assert sink.accepting
    await sink.close()
    assert await ids_in_order(tmp_path / "a.db") == ["req-1"]


async def test_a_torn_last_line_is_cut_and_the_rest_replayed(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "a.db")
    first = ChainedSink(store, batch_max=4, flush_interval_ms=1, retry_s=0.02,
                        spill=Spill(tmp_path / "spill", 1 << 20), close_timeout_s=0.1)
    await first.open()
    store.down = True
    for i in range(5):
        await first.write(Rec(i))  # type: ignore[arg-type]
    await first.close()
    (segment,) = (tmp_path / "spill").glob("spill-*.log")
    with segment.open("ab") as f:
        f.write(b'[1,"req-torn"')  # a crash mid-append
    second = ChainedSink(SqliteAuditStore(tmp_path / "a.db"),
                         spill=Spill(tmp_path / "spill", 1 << 20))
    await second.open()
    await until(lambda: second.spill is not None and second.spill.empty)
    await second.close()
    assert await ids_in_order(tmp_path / "a.db") == [f"req-{i}" for i in range(5)]


async def test_leftovers_of_a_stopped_writer_are_cleared_at_open(tmp_path: Path) -> None:
    folder = tmp_path / "spill"
    folder.mkdir()
    (folder / "spill-1-1-a.tmp").write_bytes(b"")  # died while making its segment
    os.utime(folder / "spill-1-1-a.tmp", (1, 1))  # long ago (a fresh one may be in the making)
    done = folder / "spill-2-2-b.log"  # replayed to the end, not yet removed
    done.write_bytes(b"MFSPILL1" + (16).to_bytes(8, "big"))
    spill = Spill(folder, 1 << 20)
    await spill.open()
    assert spill.empty and list(folder.iterdir()) == []
    await spill.close()


class LostReplyStore(GatedStore):
    """Commits, then fails as a connection that broke after COMMIT was sent would, `lose`
    times; down meanwhile if `down_after_loss` (the reply never came because it went away)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lose = 0

    async def commit(self, plan, *, probe=None):  # type: ignore[no-untyped-def]
        batch = await super().commit(plan, probe=probe)
        if self.lose:
            self.lose -= 1
            self.down = True
            raise StoreError("connection reset after COMMIT")
        return batch


@pytest.mark.parametrize("outage_s", [0.0, 0.3])
async def test_a_commit_whose_reply_was_lost_is_not_written_twice(
        tmp_path: Path, outage_s: float) -> None:
    store = LostReplyStore(tmp_path / "a.db")
    sink = ChainedSink(store, batch_max=5, flush_interval_ms=1, retry_s=0.2,
                       spill=Spill(tmp_path / "spill", 1 << 20))
    await sink.open()
    for i in range(5):
        await sink.write(Rec(i))  # type: ignore[arg-type]
    await until(lambda: store.commits == 1)
    store.lose = 1
    for i in range(5, 10):
        await sink.write(Rec(i))  # type: ignore[arg-type]
    await until(lambda: store.down)
    await asyncio.sleep(outage_s)  # long: the batch waits in the spill, with its marker
    for i in range(10, 15):
        await sink.write(Rec(i))  # type: ignore[arg-type]
    store.down = False
    await until(lambda: sink.spill is not None and sink.spill.empty)
    await sink.close()
    assert await ids_in_order(tmp_path / "a.db") == [f"req-{i}" for i in range(15)]

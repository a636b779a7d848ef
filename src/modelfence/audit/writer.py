"""The chained sink: a bounded queue and one writer task that commits records in batches.

`write()` never touches the store itself, so appending stays off the request's path:
it canonicalises the record, puts it on a bounded queue and (in `strict` mode) waits for
the commit of the batch holding it. One background task drains the queue, links each
batch after the head read under the store's lock, and commits it in one transaction;
records that arrive while a commit runs form the next batch (group commit).

Durability modes:

* ``strict`` — `write()` returns after the batch holding the record committed (SQLite
  with `synchronous=FULL`). A crash loses nothing that was acknowledged.
* ``batched`` (default) — `write()` returns once the record is queued. The writer waits
  up to `flush_interval_ms` for a batch to fill before committing it. A crash of the
  process loses at most the records still in memory: up to `queue_max + batch_max`
  records, in practice those of the last `flush_interval_ms` plus one commit; SQLite runs
  with `synchronous=NORMAL`, so a power cut may also drop the newest commits.

A full queue makes `write()` wait (back-pressure), never drop: an audit log with silent
gaps would be worse than a slower complete phase. A store that keeps failing is retried
for `retry_s`; then that batch is dropped, counted in `lost` and logged as an error, and
strict writers get the `StoreError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Literal

import orjson

from ..errors import StoreError
from .chain import Entry, Head, entry_from_dict, link
from .checkpoint import Checkpoint, CheckpointPolicy, Signer
from .sinks import AuditSink
from .store import AuditStore, Batch, Plan

if TYPE_CHECKING:
    from .record import AuditRecord

log = logging.getLogger("modelfence.audit")
checkpoint_log = logging.getLogger("modelfence.audit.checkpoint")

_STOP: Any = object()
_Item = tuple[Entry, "asyncio.Future[None] | None"]


def _now_us() -> int:
    return time.time_ns() // 1000


class ChainedSink(AuditSink):
    def __init__(self, store: AuditStore, *, durability: Literal["strict", "batched"] = "batched",
                 batch_max: int = 512, flush_interval_ms: float = 10.0, queue_max: int = 10_000,
                 signer: Signer | None = None, policy: CheckpointPolicy | None = None,
                 retry_s: float = 5.0) -> None:
        self.store = store
        self.strict = durability == "strict"
        self._batch_max = batch_max
        self._linger_s = flush_interval_ms / 1000
        self._queue_max = queue_max
        self._signer = signer
        self._policy = policy or CheckpointPolicy()
        self._retry_s = retry_s
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._unsealed = False
        self._closing = False
        self.written = 0
        self.lost = 0

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def open(self) -> None:
        await self.store.open()
        if self._signer is None:
            log.warning("audit checkpoints are off (no audit.checkpoint_key_file): removal of "
                        "the newest records cannot be detected")
        self._queue = asyncio.Queue(self._queue_max)
        self._task = asyncio.create_task(self._run(), name="modelfence-audit-writer")

    async def write(self, record: AuditRecord) -> None:
        if self._closing or self._queue is None or self._task is None or self._task.done():
            raise StoreError("audit sink is not open", store="audit")
        entry = entry_from_dict(record.to_dict(), now=time.time())
        if not self.strict:
            await self._queue.put((entry, None))
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((entry, done))
        await done

    async def close(self) -> None:
        """Commit what is queued, sign the head, close the store."""
        if self._queue is not None and self._task is not None and not self._task.done():
            self._closing = True
            await self._queue.put(_STOP)
            await self._task
        self._queue = self._task = None
        await self.store.close()

    async def _run(self) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("the audit writer stopped; records are no longer written")
            raise

    async def _drain(self) -> None:
        assert self._queue is not None
        queue = self._queue
        stopping = False
        while not (stopping and queue.empty()):
            try:
                first = queue.get_nowait()
            except asyncio.QueueEmpty:
                first = await self._idle(queue)
                if first is None:
                    continue
            items: list[_Item] = []
            stopping = self._take(first, items, queue) or stopping
            if items and not stopping and not self.strict and len(items) < self._batch_max:
                await asyncio.sleep(self._linger_s)
                stopping = self._take(None, items, queue)
            if items:
                await self._commit(items)
        if self._unsealed and self._signer is not None:
            await self._seal()

    def _take(self, first: Any, items: list[_Item], queue: asyncio.Queue[Any]) -> bool:
        """Move queued items into `items` up to batch_max; True when the stop mark was seen."""
        stop, item = False, first
        while True:
            if item is _STOP:
                stop = True
            elif item is not None:
                items.append(item)
            if len(items) >= self._batch_max:
                return stop
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return stop

    async def _idle(self, queue: asyncio.Queue[Any]) -> Any:
        """Wait for the next item; sign the head if nothing came for a checkpoint interval."""
        if not (self._unsealed and self._signer is not None):
            return await queue.get()
        try:
            return await asyncio.wait_for(queue.get(), timeout=self._policy.interval_s)
        except TimeoutError:
            await self._seal()
            return None

    def _plan(self, entries: list[Entry], *, force: bool = False) -> Plan:
        """Link `entries` after the head; sign the new head when due (always, if `force`)."""
        signer, policy = self._signer, self._policy

        def plan(head: Head, last: Checkpoint | None) -> Batch:
            rows = link(head, entries)
            top_seq, top_hash = (rows[-1].seq, rows[-1].hash) if rows else (head.seq, head.hash)
            now = _now_us()
            if signer is None or top_seq <= (last.seq if last else 0):
                return Batch(rows)
            if force or policy.due(top_seq, last, now):
                return Batch(rows, signer.sign(top_seq, top_hash, now))
            return Batch(rows)

        return plan

    async def _seal(self) -> None:
        try:
            await self._store_commit(self._plan([], force=True))
        except Exception as exc:
            log.error("audit checkpoint failed: %s", exc)

    async def _commit(self, items: list[_Item]) -> None:
        try:
            await self._store_commit(self._plan([entry for entry, _ in items]))
        except Exception as exc:
            self.lost += len(items)
            log.error("audit records lost: %d; the store failed (retried for %.0f s): %s",
                      len(items), self._retry_s, exc,
                      exc_info=not isinstance(exc, StoreError))
            for _, done in items:
                if done is not None and not done.done():
                    done.set_exception(exc)
            return
        self.written += len(items)
        for _, done in items:
            if done is not None and not done.done():
                done.set_result(None)

    async def _store_commit(self, plan: Plan) -> None:
        """Commit, retrying a failing store with backoff for up to `retry_s`."""
        deadline = time.monotonic() + self._retry_s
        delay = 0.05
        while True:
            try:
                batch = await self.store.commit(plan)
                break
            except StoreError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("audit store failed, retrying in %.2f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        if batch.checkpoint is not None:
            self._unsealed = False
            checkpoint_log.info("%s", orjson.dumps(batch.checkpoint.to_dict()).decode())
        elif batch.rows:
            self._unsealed = True

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
gaps would be worse than a slower complete phase.

A store that fails is retried for `retry_s`; then the batch goes to the spill (spill.py),
fsync'd on local disk, and every later batch follows it there until a replay task has
committed the spill, oldest first: the chain keeps the order in which calls completed,
and an outage loses nothing. The outage is logged once when it begins and once when it
ends. Strict writers are answered once their batch is in the spill. When the spill is
nearly full (or missing, or the disk refuses it) `accepting` turns false and the gateway
refuses calls with 503 until the store takes records again; a batch with nowhere to go
is held in memory meanwhile. Only a gateway stopped while that holds drops records,
counted in `lost` and logged. A commit that fails after its rows were planned may have
landed all the same (the connection broke after COMMIT was sent): the next attempt,
direct or replayed, first looks for that batch's first row, so none is written twice.

A store that refuses a batch for good (failure.py: a value it cannot hold, a limit) is no
outage: retrying would stop every later record behind it. The writer commits that batch
one record at a time, in order, sets aside each record the store refuses in the dead
letter (deadletter.py, counted and logged once per batch) and goes on with the rest; the
chain links only what the store took, so it still verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from ..errors import StoreError
from .chain import Entry, Head, Row, entry_from_dict, link
from .checkpoint import Checkpoint, CheckpointPolicy, Signer
from .deadletter import NAME as DEAD_LETTER
from .deadletter import DeadLetter
from .failure import permanent
from .sinks import AuditSink
from .spill import Ambiguous, Spill
from .store import AuditStore, Batch, Plan

if TYPE_CHECKING:
    from .record import AuditRecord

log = logging.getLogger("modelfence.audit")
checkpoint_log = logging.getLogger("modelfence.audit.checkpoint")

_STOP: Any = object()
_Item = tuple[Entry, "asyncio.Future[None] | None"]


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class _Pending:
    """A batch on its way to the store, and what a failed attempt may have written."""

    entries: list[Entry]
    ambiguous: Ambiguous | None = None


class ChainedSink(AuditSink):
    def __init__(self, store: AuditStore, *, durability: Literal["strict", "batched"] = "batched",
                 batch_max: int = 512, flush_interval_ms: float = 10.0, queue_max: int = 10_000,
                 signer: Signer | None = None, policy: CheckpointPolicy | None = None,
                 retry_s: float = 0.1, spill: Spill | None = None,
                 close_timeout_s: float = 5.0) -> None:
        self.store = store
        self.strict = durability == "strict"
        self.spill = spill
        self._batch_max = batch_max
        self._linger_s = flush_interval_ms / 1000
        self._queue_max = queue_max
        self._signer = signer
        self._policy = policy or CheckpointPolicy()
        self._retry_s = retry_s
        self._close_timeout_s = close_timeout_s
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # the spill has records to replay
        self._stop_replay = asyncio.Event()
        self._unsealed = False
        self._closing = False
        self._held = False  # a batch has nowhere to go: calls are refused
        self._refusing_said = False  # "calls are refused" logged once per outage
        self._outage_since: float | None = None
        self.written = 0
        self.lost = 0
        self.replayed = 0
        self.dead_lettered = 0
        self._dead = (DeadLetter(spill.folder / DEAD_LETTER, max(spill.max_bytes // 10, 1 << 20))
                      if spill is not None else None)

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def accepting(self) -> bool:
        """False while a batch has nowhere to go or the spill is over 90 % full."""
        spill = self.spill
        if self._held:
            return False
        if spill is None or spill.empty or spill.room(spill.max_bytes // 10):
            return True
        # the spill's last tenth is kept for records of calls already admitted: refused from
        # here, before a batch finds no room (which may then never happen), so say it here
        self._say_refusing(f"the spill {spill.folder} is over 90% full ({spill.size:,} of "
                           f"{spill.max_bytes:,} bytes)")
        return False

    async def ready(self) -> bool:
        return self.accepting

    async def open(self) -> None:
        self._stop_replay.clear()
        if self.spill is not None:
            await self.spill.open()  # records a stopped gateway left go first
        await self.store.open()
        if self._signer is None:
            log.warning("audit checkpoints are off (no audit.checkpoint_key_file): removal of "
                        "the newest records cannot be detected")
        self._queue = asyncio.Queue(self._queue_max)
        self._task = asyncio.create_task(self._run(), name="modelfence-audit-writer")
        if self.spill is not None:
            self._replayer = asyncio.create_task(self._replay(self.spill),
                                                 name="modelfence-audit-replay")
            if not self.spill.empty:
                self._wake.set()

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
        """Commit what is queued, replay the spill while the store answers, sign the head,
        close the store; what the store did not take stays in the spill for the next start."""
        if self._queue is not None and self._task is not None and not self._task.done():
            self._closing = True
            await self._queue.put(_STOP)
            await self._task
        if self._replayer is not None:  # between two attempts, so none is cut off mid-commit
            self._stop_replay.set()
            self._wake.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._replayer, self._close_timeout_s)
            self._replayer = None
        self._queue = self._task = None
        if self.spill is not None:
            if not self.spill.empty:
                log.warning("audit: %d records wait in the spill %s; they are replayed when "
                            "the gateway starts again", self.spill.records, self.spill.folder)
            await self.spill.close()
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
        await self._flush_spill()
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

    def _plan(self, entries: list[Entry], *, force: bool = False,
              planned: list[Row] | None = None) -> Plan:
        """Link `entries` after the head; sign the new head when due (always, if `force`).
        The linked rows are put in `planned`, so a failed commit knows what it may have
        written."""
        signer, policy = self._signer, self._policy

        def plan(head: Head, last: Checkpoint | None) -> Batch:
            rows = link(head, entries)
            if planned is not None:
                planned[:] = rows
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
            await self._store_commit(_Pending([]), force=True)
        except Exception as exc:  # during an outage already logged: said once, not each time
            log.log(logging.DEBUG if self._outage_since is not None else logging.ERROR,
                    "audit checkpoint failed: %s", exc)

    def _spill_empty(self) -> bool:
        return self.spill is None or self.spill.empty

    async def _commit(self, items: list[_Item]) -> None:
        """Commit to the store while nothing older waits in the spill; else spill; else hold."""
        pending = _Pending([entry for entry, _ in items])
        delay, give_up = 0.05, None
        while True:
            if self._spill_empty():
                try:
                    await self._store_commit(pending)
                except Exception as exc:
                    if not permanent(exc):
                        self._outage_began(exc)
                    else:
                        self.written += await self._isolate(pending, exc)
                        if not pending.entries:  # else an outage came: the rest spill
                            self._settle(items, None)
                            self._outage_ended()
                            return
                else:
                    self.written += len(pending.entries)
                    self._settle(items, None)
                    self._outage_ended()
                    return
            if self.spill is not None and await self.spill.append(pending.entries,
                                                                  pending.ambiguous):
                self._settle(items, None)
                self._wake.set()
                return
            self._hold()
            if self._closing:
                give_up = give_up or time.monotonic() + self._close_timeout_s
                if time.monotonic() > give_up:
                    self.lost += len(items)
                    if self.spill is not None:
                        self.spill.metrics.lost(len(items))
                    log.error("audit records lost: %d; the gateway stopped while neither the "
                              "store nor the spill could take them", len(items))
                    self._settle(items, StoreError("audit record not written", store="audit"))
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _settle(self, items: list[_Item], exc: BaseException | None) -> None:
        if exc is None:
            self._held = False
        for _, done in items:
            if done is not None and not done.done():
                if exc is None:
                    done.set_result(None)
                else:
                    done.set_exception(exc)

    def _hold(self) -> None:
        if self._held:
            return
        self._held = True
        self._say_refusing(f"the spill {self.spill.folder} is full ({self.spill.size:,} of "
                           f"{self.spill.max_bytes:,} bytes) or cannot be written"
                           if self.spill is not None else "no spill is configured")

    def _say_refusing(self, where: str) -> None:
        """Log once per outage that calls are refused, whichever limit was reached first."""
        if self._refusing_said:
            return
        self._refusing_said = True
        log.error("audit records cannot be written: the store does not answer and %s; calls "
                  "are refused (503) until it does", where)

    def _outage_began(self, exc: BaseException) -> None:
        if self._outage_since is not None:
            log.debug("audit store still failing: %s", exc)
            return
        self._outage_since = time.monotonic()
        where = (f"spilling them to {self.spill.folder} and replaying them in order when it "
                 "answers" if self.spill is not None else "holding them in memory")
        log.error("audit store cannot take records (%s); %s", exc, where,
                  exc_info=not isinstance(exc, StoreError))

    def _outage_ended(self) -> None:
        if self._outage_since is None:
            return
        log.warning("audit store answers again after %.1f s; %d records replayed from the "
                    "spill so far", time.monotonic() - self._outage_since, self.replayed)
        self._outage_since = None
        self._refusing_said = False

    async def _replay(self, spill: Spill) -> None:
        """Commit the spill oldest first whenever it has records; retry while the store fails."""
        delay = 0.05
        current: _Pending | None = None  # kept across retries: what they may have written
        while not self._stop_replay.is_set():
            await self._wake.wait()
            if self._stop_replay.is_set():
                return
            if current is None:
                if spill.empty:
                    self._wake.clear()
                    self._outage_ended()
                    continue
                current = _Pending(*await spill.peek(self._batch_max))
            try:
                if current.entries:
                    await self._attempt(current)
            except Exception as exc:
                if not permanent(exc):
                    self._outage_began(exc)
                else:
                    before = len(current.entries)
                    self.replayed += await self._isolate(current, exc)
                    if current.entries:  # an outage came: what was handled is done
                        await spill.done(before - len(current.entries))
                    else:
                        current = None
                        await spill.done()
                        delay = 0.05
                        continue
                with contextlib.suppress(TimeoutError):  # a pause that a stop cuts short
                    await asyncio.wait_for(self._stop_replay.wait(), delay)
                delay = min(delay * 2, 2.0)
                continue
            current = None
            self.replayed += await spill.done()
            delay = 0.05

    async def _flush_spill(self) -> None:
        """At close: let the replay finish (up to `close_timeout_s`) unless the store is down."""
        if self._spill_empty() or self._replayer is None or self._outage_since is not None:
            return
        self._wake.set()
        deadline = time.monotonic() + self._close_timeout_s
        while not self._spill_empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _store_commit(self, pending: _Pending, *, force: bool = False) -> None:
        """Commit, retrying a failing store with backoff for up to `retry_s`."""
        deadline = time.monotonic() + self._retry_s
        delay = 0.05
        while True:
            try:
                await self._attempt(pending, force=force)
                return
            except StoreError as exc:
                if permanent(exc) or time.monotonic() + delay > deadline:
                    raise
                log.debug("audit store failed, retrying in %.2f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _isolate(self, pending: _Pending, exc: BaseException) -> int:
        """The store refused `pending` for good: commit its entries one at a time, in order,
        setting aside those it refuses. Stops at an outage, leaving the rest in `pending`
        (the first with what its attempt may have written). Returns the records committed."""
        pending.ambiguous = None  # refused, so none of it was written
        refused: list[Entry] = []
        committed = 0
        try:
            while pending.entries:
                one = _Pending(pending.entries[:1])
                try:
                    await self._store_commit(one)
                except Exception as problem:
                    if not permanent(problem):
                        pending.ambiguous = one.ambiguous
                        self._outage_began(problem)
                        return committed
                    refused.append(one.entries[0])
                    exc = problem
                else:
                    committed += 1
                del pending.entries[0]
            return committed
        finally:
            if refused:
                self._set_aside(refused, exc)

    def _set_aside(self, entries: list[Entry], exc: BaseException) -> None:
        """Dead-letter records the store refused for good; counted, logged once per batch."""
        self.dead_lettered += len(entries)
        if self.spill is not None:
            self.spill.metrics.dead_letter(len(entries))
        kept = self._dead is not None and self._dead.add(entries, str(exc))
        where = (f"set aside in {self._dead.path}" if kept and self._dead is not None
                 else "not kept (no spill folder, or the dead letter is full)")
        log.error("audit: the store refused %d records for good (%s); they are %s, and the "
                  "records after them are committed", len(entries), exc, where)

    async def _attempt(self, pending: _Pending, *, force: bool = False) -> None:
        """Commit `pending` exactly once: if an earlier attempt failed after planning its
        rows, the store first looks, under its write lock, whether they are there (the
        COMMIT may have landed; under the lock, that attempt has finished either way)."""
        seen = pending.ambiguous
        planned: list[Row] = []
        try:
            batch = await self.store.commit(
                self._plan(pending.entries, force=force, planned=planned),
                probe=(seen.seq, seen.hash) if seen is not None else None)
        except Exception:
            if planned:  # the probe found nothing: only this attempt may have landed
                pending.ambiguous = Ambiguous(planned[0].seq, planned[0].hash, len(planned))
            raise
        pending.ambiguous = None
        if batch.already and seen is not None:
            log.info("audit: a batch of %d records whose commit seemed to fail is in the "
                     "store; not written twice", seen.count)
            return
        self._committed(batch)

    def _committed(self, batch: Batch) -> None:
        if batch.checkpoint is not None:
            self._unsealed = False
            checkpoint_log.info("%s", orjson.dumps(batch.checkpoint.to_dict()).decode())
        elif batch.rows:
            self._unsealed = True

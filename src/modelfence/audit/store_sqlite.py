"""The default chained store: one SQLite file in WAL mode, safe for several processes.

Every call runs on a worker thread so a commit (or a disk stall) never blocks the event
loop. A batch is one `BEGIN IMMEDIATE` transaction: SQLite takes its write lock first,
then the head is read, so granian workers sharing the file extend one chain, and a
process killed mid-batch leaves the transaction uncommitted (rolled back from the WAL
on the next open) — never half a batch.

`durable=True` (the `strict` durability mode) sets `synchronous=FULL`: a commit is on
disk before it returns, even across a power cut. The default `NORMAL` survives a killed
process, but the newest commits may be lost if the machine itself goes down.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import RetentionRefused, StoreError
from ..stores.sqlite import create_private, immediate
from .chain import Head, Row
from .checkpoint import Checkpoint
from .failure import refused, sqlite_permanent
from .sql import Sql, checkpoint_from_row, checkpoint_row
from .store import AuditStore, Batch, Plan, Probe, Query, prune_refusal

T = TypeVar("T")

_SQL = Sql(mark="?", bigint="INTEGER", blob="BLOB")  # INTEGER PRIMARY KEY: seq is the rowid


class SqliteAuditStore(AuditStore):
    def __init__(self, path: Path, *, durable: bool = False, create: bool = True,
                 busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._durable = durable
        self._create = create
        self._busy_ms = busy_timeout_ms
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used by one thread at a time

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        if not self._create and not self.path.is_file():
            raise StoreError(f"no audit log at {self.path}", store="audit")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            create_private(self.path)  # the log names principals and models: owner only
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout={int(self._busy_ms)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")
            for statement in _SQL.schema:
                db.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite audit store {self.path}: cannot open: {exc}",
                store="audit") from None
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(self._locked, db.close)

    def _locked(self, fn: Callable[[], T]) -> T:
        with self._lock:
            try:
                return fn()
            except sqlite3.Error as exc:
                raise refused(StoreError(f"sqlite audit store {self.path}: {exc}", store="audit"),
                              sqlite_permanent(exc)) from None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("audit store is not open", store="audit")
        return self._db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._conn()
        return await asyncio.to_thread(self._locked, lambda: fn(db))

    async def commit(self, plan: Plan, *, probe: Probe | None = None) -> Batch:
        return await self._run(lambda db: self._commit(db, plan, probe))

    @staticmethod
    def _commit(db: sqlite3.Connection, plan: Plan, probe: Probe | None = None) -> Batch:
        with immediate(db):
            if probe is not None:
                found = db.execute(_SQL.probe, (probe[0],)).fetchone()
                if found is not None and bytes(found[0]) == probe[1]:
                    return Batch([], already=True)  # only read: its commit writes nothing
            head = db.execute(_SQL.head).fetchone()
            last = db.execute(_SQL.last_checkpoint).fetchone()
            batch = plan(Head(*head) if head else Head(),
                         checkpoint_from_row(last) if last else None)
            db.executemany(_SQL.insert_rows, batch.rows)
            if batch.checkpoint is not None:
                db.execute(_SQL.insert_checkpoint, checkpoint_row(batch.checkpoint))
        return batch

    async def select(self, query: Query) -> list[Row]:
        sql, args = query.sql("?")
        return await self._run(lambda db: list(map(Row._make, db.execute(sql, args))))

    async def checkpoints(self) -> list[Checkpoint]:
        return await self._run(
            lambda db: [checkpoint_from_row(r) for r in db.execute(_SQL.checkpoints)])

    async def newest_checkpoint(self) -> Checkpoint | None:
        row = await self._run(lambda db: db.execute(_SQL.last_checkpoint).fetchone())
        return checkpoint_from_row(row) if row else None

    async def head(self) -> Head:
        row = await self._run(lambda db: db.execute(_SQL.head).fetchone())
        return Head(*row) if row else Head()

    # Retention: new methods for sealed segments (see store.py).

    async def segments(self) -> list[bytes]:
        return await self._run(lambda db: [bytes(r[0]) for r in db.execute(_SQL.segments)])

    async def add_segment(self, first_seq: int, last_seq: int, manifest: bytes) -> None:
        await self._run(lambda db: db.execute(_SQL.insert_segment,
                                              (first_seq, last_seq, manifest)))

    async def delete_through(self, seq: int) -> int:
        return await self._run(lambda db: self._delete_through(db, seq))

    @staticmethod
    def _delete_through(db: sqlite3.Connection, seq: int) -> int:
        with immediate(db):
            head = db.execute(_SQL.head).fetchone()
            sealed = db.execute(_SQL.segment_ends, (seq,)).fetchone()
            problem = prune_refusal(seq, head[0] if head else 0, sealed is not None)
            if problem is not None:
                raise RetentionRefused(problem)
            n = db.execute(_SQL.delete_rows, (seq,)).rowcount
            db.execute(_SQL.delete_checkpoints, (seq,))
        return int(n)

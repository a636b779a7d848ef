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
from ..stores.sqlite import create_private
from .chain import COLUMNS, Head, Row
from .checkpoint import Checkpoint
from .failure import refused, sqlite_permanent
from .store import (
    CHECKPOINT_COLUMNS,
    CHECKPOINTS,
    CHECKPOINTS_SQL,
    DELETE_CHECKPOINTS_SQL,
    DELETE_ROWS_SQL,
    HEAD_SQL,
    INSERT_SEGMENT_SQL,
    LAST_CHECKPOINT_SQL,
    PROBE_SQL,
    SEGMENT_ENDS_SQL,
    SEGMENTS_SQL,
    TABLE,
    AuditStore,
    Batch,
    Plan,
    Probe,
    Query,
    checkpoint_from_row,
    checkpoint_row,
    prune_refusal,
    schema,
)

T = TypeVar("T")

_SCHEMA = schema(bigint="INTEGER", blob="BLOB")  # INTEGER PRIMARY KEY: seq is the rowid
_INSERT = f"INSERT INTO {TABLE} ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"  # noqa: S608
_INSERT_CP = (f"INSERT INTO {CHECKPOINTS} ({','.join(CHECKPOINT_COLUMNS)}) "  # noqa: S608
              f"VALUES ({','.join('?' * len(CHECKPOINT_COLUMNS))})")


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
            for statement in _SCHEMA:
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
        db.execute("BEGIN IMMEDIATE")
        try:
            if probe is not None:
                found = db.execute(PROBE_SQL.format(mark="?"), (probe[0],)).fetchone()
                if found is not None and bytes(found[0]) == probe[1]:
                    db.execute("ROLLBACK")
                    return Batch([], already=True)
            head = db.execute(HEAD_SQL).fetchone()
            last = db.execute(LAST_CHECKPOINT_SQL).fetchone()
            batch = plan(Head(*head) if head else Head(),
                         checkpoint_from_row(last) if last else None)
            db.executemany(_INSERT, batch.rows)
            if batch.checkpoint is not None:
                db.execute(_INSERT_CP, checkpoint_row(batch.checkpoint))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return batch

    async def select(self, query: Query) -> list[Row]:
        sql, args = query.sql("?")
        return await self._run(lambda db: list(map(Row._make, db.execute(sql, args))))

    async def checkpoints(self) -> list[Checkpoint]:
        return await self._run(
            lambda db: [checkpoint_from_row(r) for r in db.execute(CHECKPOINTS_SQL)])

    async def head(self) -> Head:
        row = await self._run(lambda db: db.execute(HEAD_SQL).fetchone())
        return Head(*row) if row else Head()

    # Retention: new methods for sealed segments (see store.py).

    async def segments(self) -> list[bytes]:
        return await self._run(lambda db: [bytes(r[0]) for r in db.execute(SEGMENTS_SQL)])

    async def add_segment(self, first_seq: int, last_seq: int, manifest: bytes) -> None:
        sql = INSERT_SEGMENT_SQL.format(mark="?")
        await self._run(lambda db: db.execute(sql, (first_seq, last_seq, manifest)))

    async def delete_through(self, seq: int) -> int:
        return await self._run(lambda db: self._delete_through(db, seq))

    @staticmethod
    def _delete_through(db: sqlite3.Connection, seq: int) -> int:
        db.execute("BEGIN IMMEDIATE")
        try:
            head = db.execute(HEAD_SQL).fetchone()
            sealed = db.execute(SEGMENT_ENDS_SQL.format(mark="?"), (seq,)).fetchone()
            problem = prune_refusal(seq, head[0] if head else 0, sealed is not None)
            if problem is not None:
                raise RetentionRefused(problem)
            n = db.execute(DELETE_ROWS_SQL.format(mark="?"), (seq,)).rowcount
            db.execute(DELETE_CHECKPOINTS_SQL.format(mark="?"), (seq,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return int(n)

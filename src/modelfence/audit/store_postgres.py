"""A chained store in PostgreSQL, shared by many gateway replicas.

Replicas append concurrently, yet there is one chain: each batch is a transaction that
first takes `pg_advisory_xact_lock(LOCK_KEY)`, then reads the head (under READ COMMITTED
every statement sees what committed before it, so it sees the previous holder's rows),
writes its rows with COPY and commits, which releases the lock. A replica that dies
mid-batch loses its transaction, never half of it. The lock is held for one COPY, so
replicas take turns in well under a millisecond per batch of hundreds.

Rows are written as BYTEA payloads, not JSONB, because JSONB reorders keys and the
hash covers the exact bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import RetentionRefused, StoreError
from ..redaction import hide_password
from ..stores.postgres import require_extra
from .chain import COLUMNS, Head, Row
from .checkpoint import Checkpoint
from .failure import pg_permanent, refused
from .sql import TABLE, Sql, checkpoint_from_row, checkpoint_row
from .store import AuditStore, Batch, Plan, Probe, Query, prune_refusal

T = TypeVar("T")

#: One advisory lock key for every writer of the audit table (64-bit, from its name).
LOCK_KEY = int.from_bytes(hashlib.sha256(TABLE.encode()).digest()[:8], "big", signed=True)
_LOCK = "SELECT pg_advisory_xact_lock(%s)"

_SQL = Sql(mark="%s", bigint="BIGINT", blob="BYTEA")
_COPY = f"COPY {TABLE} ({','.join(COLUMNS)}) FROM STDIN"


class PostgresAuditStore(AuditStore):
    """One connection, used by one task at a time (the writer, or a CLI reader)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        require_extra("postgresql audit store")  # built at start: a missing extra fails then
        self._url = url
        self._timeout = timeout_s
        self._conn: Any = None
        self._lock: asyncio.Lock | None = None

    def _problem(self, exc: BaseException) -> str:
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        text = hide_password(text, self._url)
        return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__

    async def open(self) -> None:
        self._lock = asyncio.Lock()

        async def create(conn: Any) -> None:
            async with conn.transaction():  # one replica creates, the others wait and see it
                await conn.execute(_LOCK, (LOCK_KEY,))
                for statement in _SQL.schema:
                    await conn.execute(statement)

        await self._use(create)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def _connect(self) -> Any:
        import psycopg

        try:
            return await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=max(1, int(self._timeout)))
        except Exception as exc:
            raise StoreError(
                f"postgresql audit store unreachable: {self._problem(exc)}",
                    store="audit") from None

    async def _use(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run `fn` on the connection, reconnecting once it broke; errors become StoreError."""
        if self._lock is None:
            raise StoreError("audit store is not open", store="audit")
        async with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await self._connect()
            try:
                async with asyncio.timeout(self._timeout):
                    return await fn(self._conn)
            except Exception as exc:
                # After a failure or a timeout mid-statement the session state is unknown:
                # drop it, so the next call starts on a fresh connection.
                conn, self._conn = self._conn, None
                with contextlib.suppress(Exception):
                    await conn.close()
                if isinstance(exc, StoreError):
                    raise
                raise refused(StoreError(f"postgresql audit store: {self._problem(exc)}",
                                         store="audit"), pg_permanent(exc)) from None

    async def commit(self, plan: Plan, *, probe: Probe | None = None) -> Batch:
        async def go(conn: Any) -> Batch:
            async with conn.transaction():
                await conn.execute(_LOCK, (LOCK_KEY,))
                if probe is not None:
                    found = await (await conn.execute(_SQL.probe, (probe[0],))).fetchone()
                    if found is not None and bytes(found[0]) == probe[1]:
                        return Batch([], already=True)
                head = await (await conn.execute(_SQL.head)).fetchone()
                last = await (await conn.execute(_SQL.last_checkpoint)).fetchone()
                batch = plan(Head(head[0], bytes(head[1])) if head else Head(),
                             checkpoint_from_row(last) if last else None)
                if batch.rows:
                    async with conn.cursor() as cur, cur.copy(_COPY) as copy:
                        for row in batch.rows:
                            await copy.write_row(row)
                if batch.checkpoint is not None:
                    await conn.execute(_SQL.insert_checkpoint, checkpoint_row(batch.checkpoint))
            return batch

        return await self._use(go)

    async def select(self, query: Query) -> list[Row]:
        sql, args = query.sql("%s")

        async def go(conn: Any) -> list[Row]:
            rows = await (await conn.execute(sql, args, binary=True)).fetchall()
            return [Row._make(r) for r in rows]  # psycopg reads BYTEA as bytes

        return await self._use(go)

    async def checkpoints(self) -> list[Checkpoint]:
        async def go(conn: Any) -> list[Checkpoint]:
            rows = await (await conn.execute(_SQL.checkpoints)).fetchall()
            return [checkpoint_from_row(r) for r in rows]

        return await self._use(go)

    async def newest_checkpoint(self) -> Checkpoint | None:
        async def go(conn: Any) -> Checkpoint | None:
            row = await (await conn.execute(_SQL.last_checkpoint)).fetchone()
            return checkpoint_from_row(row) if row else None

        return await self._use(go)

    async def head(self) -> Head:
        async def go(conn: Any) -> Head:
            row = await (await conn.execute(_SQL.head)).fetchone()
            return Head(row[0], bytes(row[1])) if row else Head()

        return await self._use(go)

    # Retention: new methods for sealed segments (see store.py).

    async def segments(self) -> list[bytes]:
        async def go(conn: Any) -> list[bytes]:
            return [bytes(r[0]) for r in await (await conn.execute(_SQL.segments)).fetchall()]

        return await self._use(go)

    async def add_segment(self, first_seq: int, last_seq: int, manifest: bytes) -> None:
        async def go(conn: Any) -> None:
            await conn.execute(_SQL.insert_segment, (first_seq, last_seq, manifest))

        await self._use(go)

    async def delete_through(self, seq: int) -> int:
        refused: list[str] = []

        async def go(conn: Any) -> int:
            async with conn.transaction():
                await conn.execute(_LOCK, (LOCK_KEY,))
                head = await (await conn.execute(_SQL.head)).fetchone()
                sealed = await (await conn.execute(_SQL.segment_ends, (seq,))).fetchone()
                problem = prune_refusal(seq, head[0] if head else 0, sealed is not None)
                if problem is not None:
                    refused.append(problem)
                    return 0
                cur = await conn.execute(_SQL.delete_rows, (seq,))
                await conn.execute(_SQL.delete_checkpoints, (seq,))
                return int(cur.rowcount)

        n = await self._use(go)
        if refused:
            raise RetentionRefused(refused[0])
        return n

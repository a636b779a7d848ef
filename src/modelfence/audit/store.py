"""Chained audit stores: the interface, the query shape and the factory by URL.

A store persists rows and checkpoints; it does not decide what they contain. Appending
goes through one hook, `commit(plan)`: under the store's write lock (SQLite's
`BEGIN IMMEDIATE`, PostgreSQL's transaction-scoped advisory lock) the store reads the
current head and newest checkpoint, asks `plan` for the rows and optional checkpoint
that follow them, writes both and commits — all or nothing. Because the head is read
under the lock, several processes (granian workers, gateway replicas) appending to one
store still build one chain, and a crash mid-batch leaves no half-written rows.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import RetentionRefused
from ..stores.base import Store
from ..stores.registry import StoreKind, postgresql, sqlite
from .chain import COLUMNS, Head, Row
from .checkpoint import Checkpoint
from .sql import TABLE

Durability = Literal["strict", "batched"]


@dataclass(frozen=True, slots=True)
class Batch:
    """What one commit writes: rows continuing the chain, and maybe a checkpoint of them."""

    rows: list[Row]
    checkpoint: Checkpoint | None = None
    already: bool = False  # the probe's row is in the store: nothing was written


#: (position, hash) of the first row an earlier, failed attempt planned (writer.py).
Probe = tuple[int, bytes]


#: Given the head and newest checkpoint read under the write lock, what to write next.
Plan = Callable[[Head, Checkpoint | None], Batch]


@dataclass(frozen=True, slots=True)
class Query:
    """Filters for tail, query and export; every field is optional, rows come by position."""

    principal: str | None = None
    tenant: str | None = None
    model: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    after_seq: int | None = None
    upto_seq: int | None = None
    action_prefix: str | None = None  # "alert:" finds every alert
    action: str | None = None  # one action exactly (indexed, unlike a prefix)
    status_class: int | None = None  # 2 for 2xx, 4 for 4xx, ...: `status / 100` is indexed
    seqs: tuple[int, ...] | None = None  # these positions only (neighbours of a window)
    # In time order (ts_us, then seq) instead of by position: a time range then reads its
    # first page straight off the time index, however far back the range lies; `before`
    # `cursor` is the keyset of that order: (ts_us, seq) of the last row already read.
    by_time: bool = False
    cursor: tuple[int, int] | None = None
    limit: int = 1000
    newest_first: bool = False

    def sql(self, mark: str) -> tuple[str, list[Any]]:
        """SELECT text and arguments; column names are constants, values are parameters."""
        conds: list[str] = []
        args: list[Any] = []
        for column, op, value in (
            ("principal", "=", self.principal), ("tenant", "=", self.tenant),
            ("model", "=", self.model), ("ts_us", ">=", self.since_us),
            ("ts_us", "<", self.until_us), ("seq", ">", self.after_seq),
            ("seq", "<=", self.upto_seq), ("action", "=", self.action),
            ("status / 100", "=", self.status_class),
        ):
            if value is not None:
                conds.append(f"{column} {op} {mark}")
                args.append(value)
        if self.action_prefix is not None:
            # prefix match without LIKE's wildcards: substr compares the text itself
            conds.append(f"substr(action, 1, {len(self.action_prefix)}) = {mark}")
            args.append(self.action_prefix)
        if self.seqs is not None:
            conds.append(f"seq IN ({','.join([mark] * len(self.seqs))})" if self.seqs
                         else "1 = 0")
            args.extend(self.seqs)
        if self.cursor is not None:
            conds.append(f"(ts_us, seq) {'<' if self.newest_first else '>'} ({mark}, {mark})")
            args.extend(self.cursor)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        order = "DESC" if self.newest_first else "ASC"
        key = f"ts_us {order}, seq {order}" if self.by_time else f"seq {order}"
        args.append(self.limit)
        return (f"SELECT {','.join(COLUMNS)} FROM {TABLE}{where} "  # noqa: S608
                f"ORDER BY {key} LIMIT {mark}"), args


class AuditStore(Store):
    """Where a chained log lives; every backend failure surfaces as `StoreError`."""

    @abstractmethod
    async def commit(self, plan: Plan, *, probe: Probe | None = None) -> Batch:
        """Write what `plan` returns after the current head, atomically, under the write lock.

        With `probe`, first look (under the same lock, so an earlier attempt still
        committing has finished) whether the row at its position has its hash: then that
        attempt landed, and nothing is planned or written (`Batch([], already=True)`)."""

    @abstractmethod
    async def select(self, query: Query) -> list[Row]: ...

    @abstractmethod
    async def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, oldest first."""

    @abstractmethod
    async def head(self) -> Head: ...

    async def newest_checkpoint(self) -> Checkpoint | None:
        """The newest stored checkpoint (the stores read only it, through their index)."""
        stored = await self.checkpoints()
        return stored[-1] if stored else None

    async def scan(self, query: Query | None = None, *, page: int = 20_000
                   ) -> AsyncIterator[list[Row]]:
        """Rows matching `query` oldest first, a page at a time (keyset, so memory stays flat)."""
        query = query or Query()
        after = query.after_seq or 0
        while True:
            rows = await self.select(replace(query, after_seq=after, limit=page,
                                             newest_first=False))
            if not rows:
                return
            yield rows
            if len(rows) < page:
                return
            after = rows[-1].seq

    # Retention (retention.py): sealed-segment manifests, and dropping what they cover.

    async def segments(self) -> list[bytes]:
        """Manifests of sealed segments (segment.py), oldest first."""
        return []

    async def add_segment(self, first_seq: int, last_seq: int, manifest: bytes) -> None:
        raise RetentionRefused(f"{type(self).__name__} cannot keep sealed segments")

    async def delete_through(self, seq: int) -> int:
        """Delete rows and checkpoints up to `seq`, where a sealed segment must end, in one
        transaction under the write lock; never the head. Returns the rows deleted."""
        raise RetentionRefused(f"{type(self).__name__} cannot prune")


def prune_refusal(seq: int, head_seq: int, sealed: bool) -> str | None:
    """Why rows up to `seq` must stay (checked under the write lock), or None."""
    if not sealed:
        return f"no sealed segment ends at record {seq}"
    if seq >= head_seq:
        return (f"record {seq} is the chain's head: the newest record stays in the store, "
                "so the next one links to it")
    return None


def audit_store_from_url(url: str, *, durability: Durability = "batched", create: bool = True
                         ) -> AuditStore:
    """sqlite:///relative/or////absolute.db or postgresql://user@host/db.

    `create=False` (readers: verify, query, export) refuses to make a new, empty SQLite log
    where a typo in the path would otherwise make every check pass on nothing.
    """
    return AUDIT_STORES.open(url, durability=durability, create=create)


def _sqlite_store(path: Path, *, durability: Durability = "batched", create: bool = True
                  ) -> AuditStore:
    from .store_sqlite import SqliteAuditStore

    return SqliteAuditStore(path, durable=durability == "strict", create=create)


def _postgres_store(url: str, **_options: Any) -> AuditStore:
    from .store_postgres import PostgresAuditStore

    return PostgresAuditStore(url)


#: The hash-chained, queryable audit log (the drivers are imported when one is opened).
AUDIT_STORES: StoreKind[AuditStore] = StoreKind(
    "audit.sink", sqlite(_sqlite_store), postgresql(_postgres_store),
    noun="chained audit store")

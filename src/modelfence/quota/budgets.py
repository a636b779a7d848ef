"""Extraction budgets: a hard cap on queries and rows per principal, model and period.

Query-based extraction needs many queries; a budget makes them scarce no matter how
slowly they are spent. Reservations are atomic in the store (check and add in one
statement), so a budget of N is never exceeded across replicas; a request that fails
afterwards gives its reservation back. Stores: SQLite (one machine, survives restarts)
and PostgreSQL (many replicas).
"""

from __future__ import annotations

import hashlib
import sqlite3
from abc import abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..stores.base import Store, answers
from ..stores.pooled import PooledPostgres
from ..stores.registry import StoreKind, postgresql, sqlite
from ..stores.sqlite import SqliteFile, immediate


@dataclass(frozen=True, slots=True)
class Reservation:
    """The outcome of one reservation attempt."""

    granted: bool
    used_queries: int
    used_rows: int


def period_bounds(period: str, now: datetime) -> tuple[str, datetime]:
    """(label, end) of the budget period holding `now`, in UTC."""
    if period == "total":
        return "total", datetime.max.replace(tzinfo=UTC)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), start + timedelta(days=1)
    if period == "week":
        start = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0,
                                                              microsecond=0)
        return start.strftime("%G-W%V"), start + timedelta(days=7)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start.strftime("%Y-%m"), end


#: ids up to this many characters appear in budget keys as they are (JWT claims are capped
#: at 256, so every id a caller can present today keeps its rows); longer ones are hashed
MAX_KEY_PART = 256


def key_part(text: str) -> str:
    """`text` as part of a budget key: as it is when short, else `sha256:` and its digest.

    PostgreSQL refuses an index row over about 2.7 KB (ProgramLimitExceeded), so a long
    principal id would fail every call of its owner; hashed, each id still has its own row.
    """
    if len(text) <= MAX_KEY_PART:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def budget_key(index: int, principal: str, model: str, period: str) -> str:
    """The store key of budget number `index` for a principal, model and period label; a
    token budget's key is this with `|tokens` appended."""
    return f"{index}|{key_part(principal)}|{key_part(model)}|{period}"


def _failed(kind: str, exc: BaseException) -> StoreError:
    return StoreError(f"{kind} budget store: {exc.__class__.__name__}", store="budget")


class BudgetStore(Store):
    """`reserve` adds to the usage only if both caps still hold, atomically."""

    @abstractmethod
    async def reserve(self, key: str, queries: int, rows: int, max_queries: int | None,
                      max_rows: int | None) -> Reservation: ...

    @abstractmethod
    async def release(self, key: str, queries: int, rows: int) -> None: ...

    @abstractmethod
    async def usage(self, key: str) -> tuple[int, int]: ...

    async def ping(self) -> bool:
        """Readiness: can the store answer a read?"""
        return await answers(self.usage(""))


_NO_CAP = 2**62
_PG_SCHEMA_LOCK = 0x6D66_6275_6467_6574  # "mfbudget": serializes schema creation

_SQLITE_SCHEMA = """CREATE TABLE IF NOT EXISTS modelfence_budgets (
    key TEXT PRIMARY KEY, queries INTEGER NOT NULL, rows INTEGER NOT NULL)"""
_RESERVE = """INSERT INTO modelfence_budgets (key, queries, rows) VALUES ({p}, 0, 0)
ON CONFLICT (key) DO NOTHING"""
_ADD = """UPDATE modelfence_budgets SET queries = queries + {p}, rows = rows + {p}
WHERE key = {p} AND queries + {p} <= {p} AND rows + {p} <= {p}
RETURNING queries, rows"""
_RELEASE = """UPDATE modelfence_budgets SET queries = MAX(queries - {p}, 0),
rows = MAX(rows - {p}, 0) WHERE key = {p}"""
_USAGE = "SELECT queries, rows FROM modelfence_budgets WHERE key = {p}"


class SqliteBudgetStore(BudgetStore):
    """One machine; `BEGIN IMMEDIATE` makes reservations atomic across its processes."""

    def __init__(self, path: Path) -> None:
        self._file = SqliteFile(path, _SQLITE_SCHEMA, what="sqlite budget store", store="budget",
                                busy_timeout_ms=5000)

    async def open(self) -> None:
        self._file.open()

    async def close(self) -> None:
        self._file.close()

    async def reserve(self, key: str, queries: int, rows: int, max_queries: int | None,
                      max_rows: int | None) -> Reservation:
        db = self._file.conn
        try:
            with immediate(db):
                db.execute(_RESERVE.format(p="?"), (key,))
                got = db.execute(_ADD.format(p="?"), (
                    queries, rows, key, queries, max_queries or _NO_CAP, rows,
                    max_rows or _NO_CAP)).fetchone()
                used = got or db.execute(_USAGE.format(p="?"), (key,)).fetchone()
        except sqlite3.Error as exc:
            raise _failed("sqlite", exc) from None
        return Reservation(got is not None, int(used[0]), int(used[1]))

    async def release(self, key: str, queries: int, rows: int) -> None:
        try:
            self._file.conn.execute(_RELEASE.format(p="?"), (queries, rows, key))
        except sqlite3.Error as exc:
            raise _failed("sqlite", exc) from None

    async def usage(self, key: str) -> tuple[int, int]:
        try:
            row = self._file.conn.execute(_USAGE.format(p="?"), (key,)).fetchone()
        except sqlite3.Error as exc:
            raise _failed("sqlite", exc) from None
        return (int(row[0]), int(row[1])) if row else (0, 0)


class PostgresBudgetStore(PooledPostgres, BudgetStore):
    """Shared by replicas: one conditional UPDATE per reservation, no lock held across calls."""

    def __init__(self, url: str, *, timeout_s: float = 3.0) -> None:
        self._pool_setup(url, store="budget", what="postgresql budget store",
                         timeout_s=timeout_s, max_size=10, schema_lock=_PG_SCHEMA_LOCK,
                         schema=(_SQLITE_SCHEMA.replace("INTEGER", "BIGINT"),),
                         unreachable=": unreachable: ")

    async def _run(self, *statements: tuple[str, tuple[Any, ...]]) -> Any:
        async def work(conn: Any) -> Any:
            row = None
            for sql, args in statements:
                cur = await conn.execute(sql, args)
                row = await cur.fetchone() if cur.description else None
            return row

        return await self._on_pool(work, not_open="budget store is not open")

    async def reserve(self, key: str, queries: int, rows: int, max_queries: int | None,
                      max_rows: int | None) -> Reservation:
        got = await self._run(
            (_RESERVE.format(p="%s"), (key,)),
            (_ADD.format(p="%s"), (queries, rows, key, queries, max_queries or _NO_CAP, rows,
                                   max_rows or _NO_CAP)))
        if got is not None:
            return Reservation(True, int(got[0]), int(got[1]))
        used = await self.usage(key)
        return Reservation(False, *used)

    async def release(self, key: str, queries: int, rows: int) -> None:
        await self._run((_RELEASE.format(p="%s").replace("MAX(", "GREATEST("),
                         (queries, rows, key)))

    async def usage(self, key: str) -> tuple[int, int]:
        row = await self._run((_USAGE.format(p="%s"), (key,)))
        return (int(row[0]), int(row[1])) if row else (0, 0)


#: Budgets: sqlite:///PATH or postgresql://USER@HOST/DB, never memory (they outlive a restart).
BUDGET_STORES: StoreKind[BudgetStore] = StoreKind(
    "quotas.budget_store", sqlite(SqliteBudgetStore), postgresql(PostgresBudgetStore),
    why="budgets must survive restarts")

budget_store_from_url = BUDGET_STORES.open

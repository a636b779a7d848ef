"""Where ε is accounted and randomised answers are remembered: memory, SQLite, PostgreSQL.

Two kinds of rows. Spend: answers given per (budget key, mechanism), added atomically in one
statement that returns the key's counts after the add, so replicas sharing PostgreSQL never
over-spend (a charge that finds itself over the budget is given back; a concurrent one sees
it and is refused too, never both let through). Repeats: opaque keyed values with an
expiry (a randomised answer per model and input; which draw each principal has been
charged for), written first-come: a value already there and not expired wins, so two
replicas drawing for the same question at once both answer with the first draw.
"""

from __future__ import annotations

import sqlite3
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..errors import StoreError
from ..stores.base import Store, answers
from ..stores.pooled import PooledPostgres
from ..stores.registry import StoreKind, memory, postgresql, sqlite
from ..stores.sqlite import SqliteFile, immediate

Counts = dict[str, int]

_SPEND = """CREATE TABLE IF NOT EXISTS modelfence_privacy_spend (
    key TEXT NOT NULL, mechanism TEXT NOT NULL, n BIGINT NOT NULL,
    PRIMARY KEY (key, mechanism))"""
_REPEATS = """CREATE TABLE IF NOT EXISTS modelfence_privacy_repeats (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, expires DOUBLE PRECISION NOT NULL)"""
_PG_SCHEMA_LOCK = 0x6D66_7072_6976_6163  # "mfprivac"
#: expired repeats are swept after this many writes
_SWEEP_EVERY = 1000


class PrivacyStore(Store):
    """Spend counts and remembered answers; every method is one round trip at most."""

    @abstractmethod
    async def charge(self, keys: Sequence[str], mechanism: str, n: int) -> list[Counts]:
        """Add `n` (negative: give back, never below 0) answers of `mechanism` to each key;
        return each key's counts by mechanism after the add."""

    @abstractmethod
    async def counts(self, keys: Sequence[str]) -> list[Counts]: ...

    @abstractmethod
    async def recall(self, keys: Sequence[bytes], now: float) -> list[bytes | None]:
        """The unexpired value of each key, None where there is none."""

    @abstractmethod
    async def remember(self, values: Mapping[bytes, bytes], expires: float, now: float, *,
                       first: bool = True) -> dict[bytes, bytes]:
        """Store each value until `expires`; with `first`, a value already there (and not
        expired) is kept. Returns the value each key holds afterwards."""

    async def ping(self) -> bool:
        return await answers(self.counts([""]))


class MemoryPrivacyStore(PrivacyStore):
    """One process only: spend is lost on restart; at most `entries` repeats (oldest go)."""

    def __init__(self, entries: int = 100_000) -> None:
        self._spend: dict[str, Counts] = {}
        self._repeats: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._entries = entries

    async def charge(self, keys: Sequence[str], mechanism: str, n: int) -> list[Counts]:
        out = []
        for key in keys:
            counts = self._spend.setdefault(key, {})
            counts[mechanism] = max(counts.get(mechanism, 0) + n, 0)
            out.append({m: c for m, c in counts.items() if c > 0})
        return out

    async def counts(self, keys: Sequence[str]) -> list[Counts]:
        return [{m: c for m, c in self._spend.get(key, {}).items() if c > 0} for key in keys]

    async def recall(self, keys: Sequence[bytes], now: float) -> list[bytes | None]:
        out: list[bytes | None] = []
        for key in keys:
            got = self._repeats.get(key)
            out.append(got[0] if got is not None and got[1] > now else None)
        return out

    async def remember(self, values: Mapping[bytes, bytes], expires: float, now: float, *,
                       first: bool = True) -> dict[bytes, bytes]:
        out = {}
        for key, value in values.items():
            got = self._repeats.get(key)
            if first and got is not None and got[1] > now:
                out[key] = got[0]
                continue
            self._repeats[key] = (value, expires)
            self._repeats.move_to_end(key)
            out[key] = value
        while len(self._repeats) > self._entries:
            self._repeats.popitem(last=False)
        return out


def _failed(exc: BaseException) -> StoreError:
    return StoreError(f"sqlite privacy store: {exc.__class__.__name__}", store="privacy")


def _rows_to_counts(keys: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> list[Counts]:
    by_key: dict[str, Counts] = {key: {} for key in keys}
    for key, mechanism, n in rows:
        if key in by_key and int(n) > 0:
            by_key[key][str(mechanism)] = int(n)
    return [by_key[key] for key in keys]


_ADD = """INSERT INTO modelfence_privacy_spend (key, mechanism, n) VALUES ({p}, {p}, {p})
ON CONFLICT (key, mechanism) DO UPDATE SET n = {max}(modelfence_privacy_spend.n + excluded.n, 0)"""


_SQLITE_COUNTS = "SELECT key, mechanism, n FROM modelfence_privacy_spend WHERE key = ?"
_SQLITE_RECALL = "SELECT value FROM modelfence_privacy_repeats WHERE key = ? AND expires > ?"
_SQLITE_PUT = """INSERT INTO modelfence_privacy_repeats (key, value, expires) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires"""
_SQLITE_FIRST = _SQLITE_PUT + " WHERE modelfence_privacy_repeats.expires <= ?"


class SqlitePrivacyStore(PrivacyStore):
    """One machine, kept across restarts; `BEGIN IMMEDIATE` makes a charge atomic across its
    processes."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self._file = SqliteFile(path, _SPEND, what="sqlite privacy store", store="privacy",
                                busy_timeout_ms=5000)
        self._writes = 0
        self._durable = durable

    async def open(self) -> None:
        db = self._file.open()
        try:
            db.execute(_REPEATS)
            if not self._durable:  # WAL without a flush per commit: safe from a process crash
                db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise _failed(exc) from None

    async def close(self) -> None:
        self._file.close()

    def _select(self, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        db = self._file.conn
        return [row for key in keys for row in db.execute(_SQLITE_COUNTS, (key,)).fetchall()]

    async def charge(self, keys: Sequence[str], mechanism: str, n: int) -> list[Counts]:
        db = self._file.conn
        try:
            with immediate(db):
                for key in keys:
                    db.execute(_ADD.format(p="?", max="MAX"), (key, mechanism, n))
                rows = self._select(keys)
        except sqlite3.Error as exc:
            raise _failed(exc) from None
        return _rows_to_counts(keys, rows)

    async def counts(self, keys: Sequence[str]) -> list[Counts]:
        try:
            return _rows_to_counts(keys, self._select(keys))
        except sqlite3.Error as exc:
            raise _failed(exc) from None

    async def recall(self, keys: Sequence[bytes], now: float) -> list[bytes | None]:
        db = self._file.conn
        try:
            rows = [db.execute(_SQLITE_RECALL, (key, now)).fetchone() for key in keys]
        except sqlite3.Error as exc:
            raise _failed(exc) from None
        return [None if row is None else bytes(row[0]) for row in rows]

    async def remember(self, values: Mapping[bytes, bytes], expires: float, now: float, *,
                       first: bool = True) -> dict[bytes, bytes]:
        sql = _SQLITE_FIRST if first else _SQLITE_PUT
        db = self._file.conn
        try:
            with immediate(db):
                for key, value in values.items():
                    db.execute(sql, (key, value, expires, now) if first else
                               (key, value, expires))
                self._writes += 1
                if self._writes % _SWEEP_EVERY == 0:
                    db.execute("DELETE FROM modelfence_privacy_repeats WHERE expires <= ?",
                               (now,))
        except sqlite3.Error as exc:
            raise _failed(exc) from None
        got = await self.recall(list(values), now)
        return {key: value for key, value in zip(values, got, strict=True) if value is not None}


_PG_CHARGE = """WITH up AS (
    INSERT INTO modelfence_privacy_spend (key, mechanism, n)
    SELECT k, %(m)s, %(n)s FROM unnest(%(keys)s::text[]) AS k
    ON CONFLICT (key, mechanism) DO UPDATE
        SET n = GREATEST(modelfence_privacy_spend.n + excluded.n, 0)
    RETURNING key, mechanism, n)
SELECT key, mechanism, n FROM up
UNION ALL
SELECT key, mechanism, n FROM modelfence_privacy_spend
WHERE key = ANY(%(keys)s) AND mechanism <> %(m)s"""
_PG_PUT = """INSERT INTO modelfence_privacy_repeats (key, value, expires)
SELECT k, v, %(e)s FROM unnest(%(keys)s::bytea[], %(values)s::bytea[]) AS t(k, v)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires"""
_PG_FIRST = _PG_PUT + " WHERE modelfence_privacy_repeats.expires <= %(now)s"
_PG_RECALL = """SELECT key, value FROM modelfence_privacy_repeats
WHERE key = ANY(%(keys)s) AND expires > %(now)s"""


class PostgresPrivacyStore(PooledPostgres, PrivacyStore):
    """Shared by replicas: a charge is one statement (add and read back), a recall one
    SELECT, a remember one upsert and one SELECT on the same connection."""

    def __init__(self, url: str, *, timeout_s: float = 3.0, durable: bool = True) -> None:
        if not durable:  # commits return before the WAL reaches the disk (this store only)
            url = _with_option(url, "-c synchronous_commit=off")
        self._pool_setup(url, store="privacy", what="postgresql privacy store",
                         timeout_s=timeout_s, max_size=10, schema_lock=_PG_SCHEMA_LOCK,
                         schema=(_SPEND, _REPEATS.replace("BLOB", "BYTEA")),
                         unreachable=": unreachable: ")
        self._writes = 0

    async def _rows(self, *statements: tuple[str, Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        async def work(conn: Any) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = []
            for sql, args in statements:
                cur = await conn.execute(sql, args)
                rows = list(await cur.fetchall()) if cur.description else []
            return rows

        return await self._on_pool(work, not_open="privacy store is not open")

    async def charge(self, keys: Sequence[str], mechanism: str, n: int) -> list[Counts]:
        rows = await self._rows((_PG_CHARGE, {"m": mechanism, "n": n, "keys": list(keys)}))
        return _rows_to_counts(keys, rows)

    async def counts(self, keys: Sequence[str]) -> list[Counts]:
        rows = await self._rows(("SELECT key, mechanism, n FROM modelfence_privacy_spend "
                                 "WHERE key = ANY(%(keys)s)", {"keys": list(keys)}))
        return _rows_to_counts(keys, rows)

    async def recall(self, keys: Sequence[bytes], now: float) -> list[bytes | None]:
        rows = await self._rows((_PG_RECALL, {"keys": list(keys), "now": now}))
        found = {bytes(k): bytes(v) for k, v in rows}
        return [found.get(key) for key in keys]

    async def remember(self, values: Mapping[bytes, bytes], expires: float, now: float, *,
                       first: bool = True) -> dict[bytes, bytes]:
        keys = list(values)
        statements: list[tuple[str, Mapping[str, Any]]] = [
            (_PG_FIRST if first else _PG_PUT, {"keys": keys, "values": list(values.values()),
                                               "e": expires, "now": now})]
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            statements.append(("DELETE FROM modelfence_privacy_repeats WHERE expires <= "
                               "%(now)s", {"now": now}))
        statements.append((_PG_RECALL, {"keys": keys, "now": now}))
        rows = await self._rows(*statements)
        return {bytes(k): bytes(v) for k, v in rows}


def _with_option(url: str, option: str) -> str:
    """`url` with a server `options` setting added (libpq's URI parameter)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    given = [v for k, v in query if k == "options"]
    rest = [(k, v) for k, v in query if k != "options"]
    return urlunsplit(parts._replace(query=urlencode(
        [*rest, ("options", " ".join([*given, option]))], quote_via=quote)))


#: privacy.store: memory:// (one process; tests), sqlite:///PATH, postgresql://
PRIVACY_STORES: StoreKind[PrivacyStore] = StoreKind(
    "privacy.store", memory(MemoryPrivacyStore), sqlite(SqlitePrivacyStore),
    postgresql(PostgresPrivacyStore))


def privacy_store_from_url(url: str, *, entries: int = 100_000,
                           durable: bool = True) -> PrivacyStore:
    if PRIVACY_STORES.scheme_of(url).names[0] == "memory":
        return MemoryPrivacyStore(entries)
    return PRIVACY_STORES.open(url, durable=durable)

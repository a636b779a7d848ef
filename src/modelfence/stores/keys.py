"""Key stores: where API key records (digests, never keys) live.

`KeyStore` holds the shared checks; each backend implements the storage hooks.
SQLite is the single-machine default; PostgreSQL is for many replicas.
"""

from __future__ import annotations

import json
import sqlite3
from abc import abstractmethod
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, StoreError
from .base import Store, answers
from .pooled import PooledPostgres
from .sqlite import SqliteFile


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    digest: str
    principal: str
    tenant: str
    groups: tuple[str, ...]
    models: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    description: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)  # grants: clearance, purpose, networks


_COLUMNS = ("key_id", "digest", "principal", "tenant", "groups", "models",
            "created_at", "expires_at", "revoked_at", "description", "attributes")


# Built once from constants above: no caller-supplied text ever enters SQL.
_COLS = ",".join(_COLUMNS)
_SELECT = f"SELECT {_COLS} FROM modelfence_keys"  # noqa: S608
_INSERT_SQLITE = f"INSERT INTO modelfence_keys ({_COLS}) VALUES ({','.join('?' * len(_COLUMNS))})"  # noqa: S608
_INSERT_PG = f"INSERT INTO modelfence_keys ({_COLS}) VALUES ({','.join(['%s'] * len(_COLUMNS))})"  # noqa: S608


def _to_row(r: KeyRecord) -> tuple[Any, ...]:
    def ts(d: datetime | None) -> str | None:
        return d.isoformat() if d else None
    return (r.key_id, r.digest, r.principal, r.tenant, json.dumps(list(r.groups)),
            json.dumps(list(r.models)), ts(r.created_at), ts(r.expires_at), ts(r.revoked_at),
            r.description, json.dumps(r.attributes))


def _from_row(row: tuple[Any, ...]) -> KeyRecord:
    def ts(v: Any) -> datetime | None:
        if v is None or isinstance(v, datetime):
            return v
        d = datetime.fromisoformat(v)
        return d if d.tzinfo else d.replace(tzinfo=UTC)
    created = ts(row[6])
    assert created is not None
    return KeyRecord(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])),
                     tuple(json.loads(row[5])), created, ts(row[7]), ts(row[8]), row[9] or "",
                     json.loads(row[10]) if row[10] else {})


class KeyStore(Store):
    """Async interface; every backend error surfaces as `StoreError` (fail closed)."""

    url_scheme: str = ""

    @abstractmethod
    async def put(self, record: KeyRecord) -> None: ...

    @abstractmethod
    async def get(self, key_id: str) -> KeyRecord | None: ...

    @abstractmethod
    async def records(self) -> list[KeyRecord]: ...

    @abstractmethod
    async def revoke(self, key_id: str, at: datetime) -> bool:
        """Mark revoked; False when no such key. Revoking twice keeps the first time."""

    async def ping(self) -> bool:
        return await answers(self.get("0" * 16))


class MemoryKeyStore(KeyStore):
    """For tests and throw-away gateways: nothing survives a restart."""

    def __init__(self) -> None:
        self._records: dict[str, KeyRecord] = {}

    async def put(self, record: KeyRecord) -> None:
        self._records[record.key_id] = record

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    async def records(self) -> list[KeyRecord]:
        return sorted(self._records.values(), key=lambda r: r.created_at)

    async def revoke(self, key_id: str, at: datetime) -> bool:
        r = self._records.get(key_id)
        if r is None:
            return False
        if r.revoked_at is None:
            self._records[key_id] = replace(r, revoked_at=at)
        return True


_SQL_CREATE = """CREATE TABLE IF NOT EXISTS modelfence_keys (
    key_id TEXT PRIMARY KEY, digest TEXT NOT NULL, principal TEXT NOT NULL,
    tenant TEXT NOT NULL, groups TEXT NOT NULL, models TEXT NOT NULL,
    created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT, description TEXT,
    attributes TEXT)"""


class SqliteKeyStore(KeyStore):
    """One file on one machine. Reads are microseconds, so they run inline on the loop."""

    def __init__(self, path: Path) -> None:
        self._file = SqliteFile(path, _SQL_CREATE, what="sqlite key store", store="keys")

    async def open(self) -> None:
        db = self._file.open()
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(modelfence_keys)")}
            if "attributes" not in columns:  # key stores made before grants existed
                db.execute("ALTER TABLE modelfence_keys ADD COLUMN attributes TEXT")
        except sqlite3.Error as exc:
            self._file.close()
            raise ConfigurationError(f"sqlite key store {self._file.path}: {exc}") from None

    async def close(self) -> None:
        self._file.close()

    async def put(self, record: KeyRecord) -> None:
        self._run(_INSERT_SQLITE, _to_row(record))

    async def get(self, key_id: str) -> KeyRecord | None:
        rows = self._run(f"{_SELECT} WHERE key_id=?", (key_id,))
        return _from_row(rows[0]) if rows else None

    async def records(self) -> list[KeyRecord]:
        rows = self._run(f"{_SELECT} ORDER BY created_at")
        return [_from_row(r) for r in rows]

    async def revoke(self, key_id: str, at: datetime) -> bool:
        self._run("UPDATE modelfence_keys SET revoked_at=? WHERE key_id=? AND revoked_at IS NULL",
                  (at.isoformat(), key_id))
        return bool(self._run("SELECT 1 FROM modelfence_keys WHERE key_id=?", (key_id,)))

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._file.conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite key store: {exc.__class__.__name__}") from None


_PG_CREATE = """CREATE TABLE IF NOT EXISTS modelfence_keys (
    key_id TEXT PRIMARY KEY, digest TEXT NOT NULL, principal TEXT NOT NULL,
    tenant TEXT NOT NULL, groups TEXT NOT NULL, models TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ,
    description TEXT, attributes TEXT)"""
_PG_SCHEMA_LOCK = 0x6D66_6B65_7973  # "mfkeys": serializes schema creation across replicas
_PG_MIGRATE = "ALTER TABLE modelfence_keys ADD COLUMN IF NOT EXISTS attributes TEXT"


class PostgresKeyStore(PooledPostgres, KeyStore):
    """Shared by many replicas; a pooled async connection per request."""

    def __init__(self, url: str, *, pool_size: int = 10, timeout_s: float = 3.0) -> None:
        self._pool_setup(url, store="keys", what="postgresql key store", timeout_s=timeout_s,
                         max_size=pool_size, schema_lock=_PG_SCHEMA_LOCK,
                         schema=(_PG_CREATE, _PG_MIGRATE))

    async def _run(self, sql: str, args: tuple[Any, ...] = (), *, fetch: bool = True
                   ) -> list[tuple[Any, ...]]:
        async def work(conn: Any) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, args)
            return list(await cur.fetchall()) if fetch else []

        return await self._on_pool(work, not_open="key store is not open")

    async def put(self, record: KeyRecord) -> None:
        await self._run(_INSERT_PG, _to_row(record), fetch=False)

    async def get(self, key_id: str) -> KeyRecord | None:
        rows = await self._run(f"{_SELECT} WHERE key_id=%s", (key_id,))
        return _from_row(rows[0]) if rows else None

    async def records(self) -> list[KeyRecord]:
        rows = await self._run(f"{_SELECT} ORDER BY created_at")
        return [_from_row(r) for r in rows]

    async def revoke(self, key_id: str, at: datetime) -> bool:
        rows = await self._run(
            "UPDATE modelfence_keys SET revoked_at=COALESCE(revoked_at, %s) WHERE key_id=%s "
            "RETURNING key_id", (at, key_id))
        return bool(rows)

"""The evidence store: every marked (and control) answer, with who received it.

A record holds the input (its float32 bytes, AES-256-GCM sealed when an evidence key is
configured) and its SHA-256, the answer given (the decoy) and the model's own answer,
the watermark key id, principal, tenant, model and time: enough to ask a suspect model
the same questions later and to show who took the answers. One record per (model,
principal, kind, input): asking again adds nothing. `marked_before` tells the guard which
of a request's marked inputs the caller already holds marked (answered truthfully then),
in one indexed query. SQLite is the single-machine default;
PostgreSQL is for many replicas. Every backend error is a `StoreError`.
"""

from __future__ import annotations

import sqlite3
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..stores.base import Store, answers
from ..stores.pooled import PooledPostgres
from ..stores.registry import StoreKind, memory, postgresql, sqlite
from ..stores.sqlite import SqliteFile

STORE = "watermark"


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    kind: str  # "watermark" (answered with the decoy) or "control" (answered truthfully)
    model: str
    principal: str
    tenant: str
    key_id: str
    input_sha256: str
    input: bytes  # float32 bytes, or nonce + AES-GCM ciphertext when `sealed_by` is set
    sealed_by: str | None  # id of the evidence key, None when stored in clear
    n_features: int
    n_classes: int
    model_index: int
    model_label: str
    decoy_index: int
    decoy_label: str
    request_id: str
    time_us: int

    @property
    def answer_label(self) -> str:
        """What the caller was told."""
        return self.decoy_label if self.kind == "watermark" else self.model_label


_COLUMNS = ("kind", "model", "principal", "tenant", "key_id", "input_sha256", "input",
            "sealed_by", "n_features", "n_classes", "model_index", "model_label",
            "decoy_index", "decoy_label", "request_id", "time_us")
_COLS = ",".join(_COLUMNS)
# Built once from constants: no caller-supplied text ever enters SQL.
_INSERT = (f"INSERT INTO modelfence_watermarks ({_COLS}) VALUES ({{marks}}) "  # noqa: S608
           "ON CONFLICT (model, principal, kind, input_sha256) DO NOTHING")
_SELECT = f"SELECT {_COLS} FROM modelfence_watermarks WHERE model = {{p}}"  # noqa: S608
_COUNTS = ("SELECT principal, tenant, kind, COUNT(*), MIN(time_us), MAX(time_us) "
           "FROM modelfence_watermarks WHERE model = {p} GROUP BY principal, tenant, kind "
           "ORDER BY principal, kind")
_HELD = ("SELECT kind, key_id, COUNT(*), MIN(time_us), MAX(time_us) "
         "FROM modelfence_watermarks WHERE model = {p} AND principal = {p} "
         "GROUP BY kind, key_id ORDER BY kind, key_id")
_MARKED = ("SELECT input_sha256 FROM modelfence_watermarks WHERE model = {p} AND "
           "principal = {p} AND kind = 'watermark' AND input_sha256 {match}")
_SQLITE_CHUNK = 500  # bound parameters per query (SQLite's limit can be 999)
_SCHEMA = """CREATE TABLE IF NOT EXISTS modelfence_watermarks (
    id {serial}, kind TEXT NOT NULL, model TEXT NOT NULL, principal TEXT NOT NULL,
    tenant TEXT NOT NULL, key_id TEXT NOT NULL, input_sha256 TEXT NOT NULL,
    input {blob} NOT NULL, sealed_by TEXT, n_features INTEGER NOT NULL,
    n_classes INTEGER NOT NULL, model_index INTEGER NOT NULL, model_label TEXT NOT NULL,
    decoy_index INTEGER NOT NULL, decoy_label TEXT NOT NULL, request_id TEXT NOT NULL,
    time_us BIGINT NOT NULL, UNIQUE (model, principal, kind, input_sha256))"""
_SQLITE_SCHEMA = _SCHEMA.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT", blob="BLOB")
_PG_SCHEMA = _SCHEMA.format(serial="BIGSERIAL PRIMARY KEY", blob="BYTEA")
_PG_SCHEMA_LOCK = 0x6D66_776D_6172_6B73  # "mfwmarks": serializes schema creation


def _to_row(r: EvidenceRecord) -> tuple[Any, ...]:
    return tuple(getattr(r, c) for c in _COLUMNS)


def _from_row(row: Sequence[Any]) -> EvidenceRecord:
    values = list(row)
    values[6] = bytes(values[6])  # memoryview (PostgreSQL) or bytes (SQLite)
    return EvidenceRecord(*values)


@dataclass(frozen=True, slots=True)
class Holding:
    """How many records one principal holds for a model, and over which time."""

    principal: str
    tenant: str
    kind: str
    count: int
    first_us: int
    last_us: int


@dataclass(frozen=True, slots=True)
class Held:
    """What one principal holds of a model under one watermark key: answers of one kind."""

    kind: str
    key_id: str
    count: int
    first_us: int
    last_us: int


def _where(principal: str | None, kind: str | None, p: str) -> tuple[str, tuple[Any, ...]]:
    sql = ""
    args: tuple[Any, ...] = ()
    if principal is not None:
        sql, args = sql + f" AND principal = {p}", (*args, principal)
    if kind is not None:
        sql, args = sql + f" AND kind = {p}", (*args, kind)
    return sql + " ORDER BY time_us, id", args


class EvidenceStore(Store):
    """Async interface; errors surface as `StoreError`."""

    @abstractmethod
    async def add(self, records: Sequence[EvidenceRecord]) -> int:
        """Store new records; return how many were new (repeats are ignored)."""

    @abstractmethod
    async def records(self, model: str, *, principal: str | None = None,
                      kind: str | None = None) -> list[EvidenceRecord]:
        """Records of `model` (optionally one principal's, one kind), oldest first."""

    @abstractmethod
    async def holdings(self, model: str) -> list[Holding]: ...

    async def held_by(self, model: str, principal: str) -> list[Held]:
        """What `principal` received of `model`, by kind and key (one indexed lookup)."""
        groups: dict[tuple[str, str], list[int]] = {}
        for r in await self.records(model, principal=principal):
            groups.setdefault((r.kind, r.key_id), []).append(r.time_us)
        return [Held(k, key, len(v), min(v), max(v)) for (k, key), v in sorted(groups.items())]

    @abstractmethod
    async def marked_before(self, model: str, principal: str,
                            digests: Sequence[str]) -> set[str]:
        """Those of `digests` that `principal` already holds a watermark record of."""

    async def ping(self) -> bool:
        return await answers(self.holdings(""))


class MemoryEvidenceStore(EvidenceStore):
    """For tests and in-process benchmarks: nothing survives the process."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str, str], EvidenceRecord] = {}

    async def add(self, records: Sequence[EvidenceRecord]) -> int:
        new = 0
        for r in records:
            key = (r.model, r.principal, r.kind, r.input_sha256)
            if key not in self._rows:
                self._rows[key] = r
                new += 1
        return new

    async def records(self, model: str, *, principal: str | None = None,
                      kind: str | None = None) -> list[EvidenceRecord]:
        return [r for r in self._rows.values() if r.model == model
                and principal in (None, r.principal) and kind in (None, r.kind)]

    async def holdings(self, model: str) -> list[Holding]:
        groups: dict[tuple[str, str, str], list[int]] = {}
        for r in self._rows.values():
            if r.model == model:
                groups.setdefault((r.principal, r.tenant, r.kind), []).append(r.time_us)
        return [Holding(p, t, k, len(v), min(v), max(v))
                for (p, t, k), v in sorted(groups.items())]

    async def marked_before(self, model: str, principal: str,
                            digests: Sequence[str]) -> set[str]:
        return {d for d in digests if (model, principal, "watermark", d) in self._rows}


class SqliteEvidenceStore(EvidenceStore):
    """One file on one machine; writes are small and run inline on the loop."""

    def __init__(self, path: Path) -> None:
        self._file = SqliteFile(path, _SQLITE_SCHEMA, what="sqlite watermark evidence store",
                                store=STORE, busy_timeout_ms=5000)

    async def open(self) -> None:
        self._file.open()

    async def close(self) -> None:
        self._file.close()

    async def add(self, records: Sequence[EvidenceRecord]) -> int:
        if not records:
            return 0
        db = self._file.conn
        try:
            before = db.total_changes
            db.executemany(_INSERT.format(marks=",".join("?" * len(_COLUMNS))),
                           [_to_row(r) for r in records])
            return db.total_changes - before
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite watermark evidence store: {exc.__class__.__name__}",
                             store=STORE) from None

    async def records(self, model: str, *, principal: str | None = None,
                      kind: str | None = None) -> list[EvidenceRecord]:
        where, args = _where(principal, kind, "?")
        return [_from_row(r) for r in self._run(_SELECT.format(p="?") + where,
                                                (model, *args))]

    async def holdings(self, model: str) -> list[Holding]:
        return [Holding(*r) for r in self._run(_COUNTS.format(p="?"), (model,))]

    async def held_by(self, model: str, principal: str) -> list[Held]:
        return [Held(*r) for r in self._run(_HELD.format(p="?"), (model, principal))]

    async def marked_before(self, model: str, principal: str,
                            digests: Sequence[str]) -> set[str]:
        unique = sorted(set(digests))
        out: set[str] = set()
        for i in range(0, len(unique), _SQLITE_CHUNK):
            part = unique[i:i + _SQLITE_CHUNK]
            sql = _MARKED.format(p="?", match=f"IN ({','.join('?' * len(part))})")
            out.update(r[0] for r in self._run(sql, (model, principal, *part)))
        return out

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            return self._file.conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite watermark evidence store: {exc.__class__.__name__}",
                             store=STORE) from None


class PostgresEvidenceStore(PooledPostgres, EvidenceStore):
    """Shared by replicas; a pooled async connection per call."""

    def __init__(self, url: str, *, timeout_s: float = 5.0,
                 lookup_timeout_s: float = 1.0) -> None:
        self._pool_setup(url, store=STORE, what="postgresql watermark evidence store",
                         timeout_s=timeout_s, max_size=4, schema_lock=_PG_SCHEMA_LOCK,
                         schema=(_PG_SCHEMA,))
        self._lookup_timeout = lookup_timeout_s  # marked_before runs before an answer

    async def add(self, records: Sequence[EvidenceRecord]) -> int:
        sql = _INSERT.format(marks=",".join(["%s"] * len(_COLUMNS))) + " RETURNING id"
        results = await self._run([(sql, _to_row(r)) for r in records])
        return sum(len(rows) for rows in results)

    async def records(self, model: str, *, principal: str | None = None,
                      kind: str | None = None) -> list[EvidenceRecord]:
        where, args = _where(principal, kind, "%s")
        (rows,) = await self._run([(_SELECT.format(p="%s") + where, (model, *args))])
        return [_from_row(r) for r in rows]

    async def holdings(self, model: str) -> list[Holding]:
        (rows,) = await self._run([(_COUNTS.format(p="%s"), (model,))])
        return [Holding(*r) for r in rows]

    async def held_by(self, model: str, principal: str) -> list[Held]:
        (rows,) = await self._run([(_HELD.format(p="%s"), (model, principal))])
        return [Held(*r) for r in rows]

    async def marked_before(self, model: str, principal: str,
                            digests: Sequence[str]) -> set[str]:
        if not digests:
            return set()
        sql = _MARKED.format(p="%s", match="= ANY(%s)")
        (rows,) = await self._run([(sql, (model, principal, sorted(set(digests))))],
                                  timeout_s=self._lookup_timeout)
        return {r[0] for r in rows}

    async def _run(self, statements: list[tuple[str, tuple[Any, ...]]], *,
                   timeout_s: float | None = None) -> list[list[tuple[Any, ...]]]:
        """Run statements on one pooled connection; the rows each one returned."""
        if not statements:
            return []

        async def work(conn: Any) -> list[list[tuple[Any, ...]]]:
            out = []
            for sql, args in statements:
                cur = await conn.execute(sql, args)
                out.append(list(await cur.fetchall()) if cur.description else [])
            return out

        return await self._on_pool(work, not_open="watermark evidence store is not open",
                                   timeout_s=timeout_s)


#: Evidence: sqlite:///relative or sqlite:////absolute, postgresql://USER@HOST/DB, memory://.
EVIDENCE_STORES: StoreKind[EvidenceStore] = StoreKind(
    "watermark.evidence_store", sqlite(SqliteEvidenceStore),
    postgresql(PostgresEvidenceStore), memory(MemoryEvidenceStore))

evidence_store_from_url = EVIDENCE_STORES.open

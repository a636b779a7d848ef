"""The audit tables, and every statement the SQLite and PostgreSQL stores run on them.

The two backends differ only in a parameter mark (`?`, `%s`) and two type names, so each
statement is written once here, in those terms, instead of once per store. Statements are
built from the constants below, never from caller text. Payloads are stored as bytes, never
as JSON(B) values: the hash covers the exact bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .chain import COLUMNS
from .checkpoint import Checkpoint

TABLE = "modelfence_audit"
CHECKPOINTS = "modelfence_audit_checkpoints"
SEGMENTS = "modelfence_audit_segments"  # signed manifests of sealed segments (segment.py)
CHECKPOINT_COLUMNS = ("seq", "ts_us", "hash", "key_id", "signature")


class Sql:
    """Every statement a chained store runs, in one backend's parameter mark and type names
    (SQLite `?`, INTEGER, BLOB; PostgreSQL `%s`, BIGINT, BYTEA)."""

    def __init__(self, *, mark: str, bigint: str, blob: str) -> None:
        self.schema = (
            f"""CREATE TABLE IF NOT EXISTS {TABLE} (
                seq {bigint} PRIMARY KEY, ts_us {bigint} NOT NULL, request_id TEXT,
                principal TEXT, tenant TEXT, model TEXT, action TEXT, status INTEGER,
                payload {blob} NOT NULL, prev {blob} NOT NULL, hash {blob} NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_principal ON {TABLE} (principal, seq)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_model ON {TABLE} (model, seq)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE} (ts_us)",
            # the console's audit search: newest first by seq within each filter
            f"CREATE INDEX IF NOT EXISTS {TABLE}_tenant ON {TABLE} (tenant, seq)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_action ON {TABLE} (action, seq)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_status ON {TABLE} ((status / 100), seq)",
            f"""CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (
                seq {bigint} PRIMARY KEY, ts_us {bigint} NOT NULL, hash {blob} NOT NULL,
                key_id TEXT NOT NULL, signature {blob} NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS {SEGMENTS} (
                last_seq {bigint} PRIMARY KEY, first_seq {bigint} NOT NULL,
                manifest {blob} NOT NULL)""",
        )
        self.head = f"SELECT seq, hash FROM {TABLE} ORDER BY seq DESC LIMIT 1"  # noqa: S608
        self.checkpoints = (f"SELECT {','.join(CHECKPOINT_COLUMNS)} "  # noqa: S608
                            f"FROM {CHECKPOINTS} ORDER BY seq")
        self.last_checkpoint = f"{self.checkpoints} DESC LIMIT 1"
        self.probe = f"SELECT hash FROM {TABLE} WHERE seq = {mark}"  # noqa: S608
        self.insert_rows = _insert(TABLE, COLUMNS, mark)
        self.insert_checkpoint = _insert(CHECKPOINTS, CHECKPOINT_COLUMNS, mark)
        # Retention (retention.py): sealed segments, and dropping the rows they cover.
        self.segments = f"SELECT manifest FROM {SEGMENTS} ORDER BY last_seq"  # noqa: S608
        self.segment_ends = f"SELECT 1 FROM {SEGMENTS} WHERE last_seq = {mark}"  # noqa: S608
        self.insert_segment = _insert(SEGMENTS, ("first_seq", "last_seq", "manifest"), mark)
        self.delete_rows = f"DELETE FROM {TABLE} WHERE seq <= {mark}"  # noqa: S608
        self.delete_checkpoints = f"DELETE FROM {CHECKPOINTS} WHERE seq <= {mark}"  # noqa: S608


def _insert(table: str, columns: Sequence[str], mark: str) -> str:
    return (f"INSERT INTO {table} ({','.join(columns)}) "  # noqa: S608
            f"VALUES ({','.join([mark] * len(columns))})")


def checkpoint_from_row(r: Sequence[Any]) -> Checkpoint:
    """A checkpoint from a row in CHECKPOINT_COLUMNS order."""
    return Checkpoint(seq=r[0], hash=bytes(r[2]), ts_us=r[1], key_id=r[3],
                      signature=bytes(r[4]))


def checkpoint_row(cp: Checkpoint) -> tuple[Any, ...]:
    """A checkpoint as a row in CHECKPOINT_COLUMNS order."""
    return (cp.seq, cp.ts_us, cp.hash, cp.key_id, cp.signature)

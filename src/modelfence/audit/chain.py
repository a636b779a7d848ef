"""The hash chain: how a record becomes a row, and what each row's hash covers.

A row is the record's canonical JSON (orjson, sorted keys) plus a few columns copied
out of it so that stores can index them (time, request id, principal, tenant, model,
action, status). The hash covers the columns *and* the payload, so editing an indexed
column to hide a record from `audit query` breaks the chain just like editing the
payload; it also covers the sequence number, so renumbering rows breaks it too::

    head  = canonical JSON of [1, seq, ts_us, request_id, principal, tenant, model, action, status]
    hash  = sha256(prev_hash ‖ head ‖ "\\n" ‖ payload)         (prev_hash of row 1: 32 zero bytes)

`head` never contains a raw newline (JSON escapes it), so the split is unambiguous.
Every row stores its own `prev`, which lets a verifier check rows independently and
say *how* a broken link broke (see verify.py), not only *where*.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

VERSION = 1
GENESIS = bytes(32)


class Entry(NamedTuple):
    """A record ready to be linked: indexed columns and canonical payload, no position yet.

    A row is an entry's columns between its position and its hashes, in this order, so
    linking and hashing pass an entry on with `*entry` instead of naming each column."""

    ts_us: int
    request_id: str | None
    principal: str | None
    tenant: str | None
    model: str | None
    action: str | None
    status: int | None
    payload: bytes


class Row(NamedTuple):
    """One stored, linked record; the column order every store uses: the position, the
    entry's columns (`Entry`, `row[1:9]`), then the previous row's hash and this row's."""

    seq: int
    ts_us: int
    request_id: str | None
    principal: str | None
    tenant: str | None
    model: str | None
    action: str | None
    status: int | None
    payload: bytes
    prev: bytes
    hash: bytes


COLUMNS = Row._fields


@dataclass(frozen=True, slots=True)
class Head:
    """The newest row of a chain: what the next row links to."""

    seq: int = 0
    hash: bytes = GENESIS


def _text(value: Any) -> str | None:
    return value if value is None or type(value) is str else str(value)


def _status(value: Any) -> int | None:
    if type(value) is int:
        return value
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def time_to_us(value: Any, default: float) -> int:
    """Microseconds since the epoch from an ISO-8601 string (naive means UTC) or a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * 1_000_000)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            return int(dt.timestamp() * 1_000_000)
    return int(default * 1_000_000)


def us_to_iso(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1_000_000, UTC).isoformat()


def entry_from_dict(record: Mapping[str, Any], *, now: float) -> Entry:
    """Canonicalise a record's dict; `now` stands in for a missing or unreadable time."""
    return Entry(
        ts_us=time_to_us(record.get("time"), now),
        request_id=_text(record.get("request_id")),
        principal=_text(record.get("principal")),
        tenant=_text(record.get("tenant")),
        model=_text(record.get("model")),
        action=_text(record.get("action")),
        status=_status(record.get("status")),
        payload=orjson.dumps(record, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS),
    )


def row_hash(prev: bytes, seq: int, entry: Sequence[Any]) -> bytes:
    """`entry`: an `Entry`, or a row's slice `row[1:9]` (its entry's columns, in order)."""
    head = orjson.dumps([VERSION, seq, *entry[:-1]])
    return hashlib.sha256(b"".join((prev, head, b"\n", entry[-1]))).digest()


def hash_of(row: Row, *, seq: int | None = None, prev: bytes | None = None) -> bytes:
    """The hash `row` should carry; `seq`/`prev` override its stored ones (for diagnosis)."""
    return row_hash(row.prev if prev is None else prev, row.seq if seq is None else seq,
                    row[1:9])


def link(head: Head, entries: Sequence[Entry]) -> list[Row]:
    """Give entries consecutive positions after `head`, each hashing the one before."""
    rows: list[Row] = []
    seq, prev = head.seq, head.hash
    for e in entries:
        seq += 1
        h = row_hash(prev, seq, e)
        rows.append(Row(seq, *e, prev, h))
        prev = h
    return rows


def row_view(row: Row) -> dict[str, Any]:
    """A row as JSON for tail, query and export: position, hashes and the record itself."""
    return {"seq": row.seq, "hash": row.hash.hex(), "prev_hash": row.prev.hex(),
            "record": orjson.Fragment(row.payload)}

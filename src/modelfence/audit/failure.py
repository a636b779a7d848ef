"""Which store errors are outages (retry, spill, replay) and which are permanent refusals.

A record the store refuses (a value it cannot hold, a limit it exceeds) is refused again on
every retry: treated as an outage it would block every later record behind it for ever. So
the writer tells the two apart and sets a refused record aside (the dead letter, writer.py).
Anything not known to be permanent is an outage: retrying costs time, never records.
"""

from __future__ import annotations

import sqlite3

from ..errors import StoreError

#: PostgreSQL SQLSTATE classes that name the statement, not the server: data exceptions,
#: integrity violations, program limits, syntax or access rule violations.
_PERMANENT_CLASSES = ("22", "23", "42", "54")
#: Outages all the same: too many connections, shutdown, cannot connect now; and a revoked
#: privilege or a dropped table, which refuse every record alike until an operator acts.
_OUTAGE_STATES = ("53300", "57P01", "57P02", "57P03", "42501", "42P01")


def pg_permanent(exc: BaseException) -> bool:
    """True for a psycopg error whose SQLSTATE says this statement will always be refused,
    or a value psycopg itself refuses to send (a NUL in text, text it cannot encode).

    Anything else without a SQLSTATE (a broken connection, a timeout) is an outage."""
    state = getattr(exc, "sqlstate", None)
    if state is None:
        return isinstance(exc, UnicodeError) or _client_refused(exc)
    if not isinstance(state, str) or len(state) != 5 or state in _OUTAGE_STATES:
        return False
    return state[:2] in _PERMANENT_CLASSES


def _client_refused(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - PostgreSQL support not installed
        return False
    return isinstance(exc, psycopg.DataError | psycopg.IntegrityError)


def sqlite_permanent(exc: BaseException) -> bool:
    """True for SQLite errors that refuse the data (constraints, values), not the file
    (locked, I/O, full disk: OperationalError and the rest are outages)."""
    return isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError)


def permanent(exc: BaseException) -> bool:
    """Whether the store marked `exc` as a permanent refusal (see `refused`)."""
    return isinstance(exc, StoreError) and getattr(exc, "permanent", False) is True


def refused(exc: StoreError, is_permanent: bool) -> StoreError:
    """Mark a store error permanent (or not) for the writer; returns it for `raise`."""
    exc.permanent = is_permanent  # type: ignore[attr-defined]
    return exc

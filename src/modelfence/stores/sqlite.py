"""One SQLite store file, opened and closed the same way by every store that uses one."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigurationError, StoreError


def create_private(path: Path) -> None:
    """Create a new store file readable by its owner only; never open and close an existing one.

    Closing any descriptor of a file drops every POSIX lock this process holds on it, the
    locks SQLite's other connections to that file rely on: an outside reader would then
    take itself for the last user and delete the WAL they still write to (keys and audit
    sharing one `state.db`). O_EXCL opens only a file that did not exist, which nobody holds.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


@contextlib.contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on an autocommit connection, its write lock taken at the start
    (`BEGIN IMMEDIATE`, so a read-then-write block never deadlocks with another process):
    committed when the block ends, rolled back when it raises, cancellation included."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class SqliteFile:
    """An autocommit WAL connection usable from the event loop thread, with a schema applied.

    `what` names the store in errors; `store` is the label of its StoreError (metrics).
    """

    def __init__(self, path: Path, schema: str, *, what: str, store: str,
                 busy_timeout_ms: int = 2000) -> None:
        self.path = path
        self._schema = schema
        self._what = what
        self._store = store
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._db: sqlite3.Connection | None = None

    def open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            create_private(self.path)  # key digests, usage, evidence: the owner's only
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            db.execute(self._schema)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigurationError(f"{self._what} {self.path}: {exc}") from None
        self._db = db
        return db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self._what} is not open", store=self._store)
        return self._db

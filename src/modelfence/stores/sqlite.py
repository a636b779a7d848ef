"""Opening a SQLite store file the same way everywhere: WAL, a busy timeout, one clear error."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import ConfigurationError


def open_sqlite(path: Path, schema: str, *, what: str, busy_timeout_ms: int = 2000
                ) -> sqlite3.Connection:
    """An autocommit connection usable from the event loop thread, with `schema` applied."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        db.execute(schema)
    except (sqlite3.Error, OSError) as exc:
        raise ConfigurationError(f"{what} {path}: {exc}") from None
    return db

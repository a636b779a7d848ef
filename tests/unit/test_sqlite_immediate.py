"""The write transaction the SQLite stores share: all of a block, or none of it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from modelfence.stores.sqlite import immediate


def _db(tmp_path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    db.execute("CREATE TABLE t (n INTEGER)")
    return db


def test_a_block_that_ends_is_committed(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with immediate(db):
        db.execute("INSERT INTO t VALUES (1)")
        assert db.in_transaction
    assert not db.in_transaction
    other = sqlite3.connect(tmp_path / "t.db")
    assert other.execute("SELECT n FROM t").fetchall() == [(1,)]


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_a_block_that_raises_is_rolled_back_and_the_error_passes(
        tmp_path: Path, error: BaseException) -> None:
    db = _db(tmp_path)
    with pytest.raises(type(error)), immediate(db):
        db.execute("INSERT INTO t VALUES (1)")
        raise error
    assert not db.in_transaction
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_the_write_lock_is_taken_at_the_start(tmp_path: Path) -> None:
    db = _db(tmp_path)
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None, timeout=0)
    with immediate(db), pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again once the block ended
    other.execute("ROLLBACK")

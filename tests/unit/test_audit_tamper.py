"""Each kind of tampering with a SQLite audit log is caught, at the first bad record.

The attacker here has the database file and SQL, but not the checkpoint key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from modelfence.audit.chain import Head, entry_from_dict, link
from modelfence.audit.checkpoint import Checkpoint, Signer
from modelfence.audit.store_sqlite import SqliteAuditStore
from modelfence.audit.verify import Report, verify_store

from .test_audit_chain import Rec, rows_of, write_log

N = 40  # records; checkpoints at the first, then every 10th, and at close


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
async def log(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "audit.db"
    await write_log(path, N, signer=Signer(key), every=10)
    return path


async def verify(path: Path, public: Ed25519PublicKey | None,
                 anchors: list[Checkpoint] | None = None) -> Report:
    store = SqliteAuditStore(path, create=False)
    await store.open()
    try:
        return await verify_store(store, public_key=public, anchors=anchors or [], page=7)
    finally:
        await store.close()


@contextmanager
def sql(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def shift(db: sqlite3.Connection, from_seq: int, by: int) -> None:
    """Renumber rows from `from_seq` on, as an attacker closing or opening a gap would."""
    db.execute("UPDATE modelfence_audit SET seq = -seq WHERE seq >= ?", (from_seq,))
    db.execute("UPDATE modelfence_audit SET seq = -seq + ? WHERE seq < 0", (by,))


def damage(report: Report) -> tuple[int, str]:
    assert report.damage is not None, report
    return report.damage.seq, report.damage.kind


async def test_untouched_log_verifies(log: Path, key: Ed25519PrivateKey) -> None:
    report = await verify(log, key.public_key())
    assert report.ok, report.damage
    assert (report.records, report.last_seq, report.last_checkpoint) == (N, N, N)
    assert report.checkpoints >= N // 10 and report.signed
    assert (await verify(log, None)).ok


@pytest.mark.parametrize("edit", [
    "UPDATE modelfence_audit SET principal = 'mallory' WHERE seq = 17",
    "UPDATE modelfence_audit SET status = 403 WHERE seq = 17",
    "UPDATE modelfence_audit SET payload = CAST(replace(CAST(payload AS TEXT), "
    "'\"reason\":\"ok\"', '\"reason\":\"no\"') AS BLOB) WHERE seq = 17",
])
async def test_modified_field(log: Path, key: Ed25519PrivateKey, edit: str) -> None:
    with sql(log) as db:
        db.execute(edit)
    report = await verify(log, key.public_key())
    assert damage(report) == (17, "modified")
    assert report.records == 16
    assert "content no longer matches its hash" in report.damage.detail  # type: ignore[union-attr]


async def test_modified_and_rehashed_is_caught_by_the_checkpoint(
        log: Path, key: Ed25519PrivateKey) -> None:
    rows = rows_of(log)
    forged = entry_from_dict({**orjson.loads(rows[16].payload), "principal": "mallory"}, now=0)
    rest = [entry_from_dict(orjson.loads(r.payload), now=0) for r in rows[17:]]
    with sql(log) as db:  # re-hash record 17 and every record after it
        db.execute("DELETE FROM modelfence_audit WHERE seq >= 17")
        db.executemany("INSERT INTO modelfence_audit VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       link(Head(16, rows[15].hash), [forged, *rest]))
    with sql(log) as db:
        marks = [s for (s,) in db.execute("SELECT seq FROM modelfence_audit_checkpoints")]
    before = max(s for s in marks if s < 17)  # the newest checkpoint that still matches
    after = min(s for s in marks if s >= 17)
    report = await verify(log, key.public_key())
    assert damage(report) == (before + 1, "modified")
    assert (f"records {before + 1}-{after} were changed and re-hashed"
            in report.damage.detail)  # type: ignore[union-attr]


@pytest.mark.parametrize("renumber", [False, True])
async def test_deleted_middle_record(log: Path, key: Ed25519PrivateKey, renumber: bool) -> None:
    with sql(log) as db:
        db.execute("DELETE FROM modelfence_audit WHERE seq = 23")
        if renumber:
            shift(db, 24, -1)
    assert damage(await verify(log, key.public_key())) == (23, "deleted")


@pytest.mark.parametrize("well_linked", [True, False])
async def test_inserted_forged_record(log: Path, key: Ed25519PrivateKey,
                                      well_linked: bool) -> None:
    rows = rows_of(log)
    forged = link(Head(14, rows[13].hash), [entry_from_dict(Rec(99).to_dict(), now=0)])[0]
    if not well_linked:
        forged = forged._replace(prev=b"\x01" * 32)
    with sql(log) as db:
        shift(db, 15, +1)
        db.execute("INSERT INTO modelfence_audit VALUES (?,?,?,?,?,?,?,?,?,?,?)", forged)
    report = await verify(log, key.public_key())
    assert damage(report) == (15, "inserted")
    assert report.records == (15 if well_linked else 14)


async def test_swapped_records(log: Path, key: Ed25519PrivateKey) -> None:
    with sql(log) as db:
        db.execute("UPDATE modelfence_audit SET seq = -1 WHERE seq = 31")
        db.execute("UPDATE modelfence_audit SET seq = 31 WHERE seq = 32")
        db.execute("UPDATE modelfence_audit SET seq = 32 WHERE seq = -1")
    assert damage(await verify(log, key.public_key())) == (31, "reordered")


async def test_newest_records_deleted_after_a_checkpoint(log: Path,
                                                         key: Ed25519PrivateKey) -> None:
    with sql(log) as db:
        db.execute("DELETE FROM modelfence_audit WHERE seq > 36")
    report = await verify(log, key.public_key())
    assert damage(report) == (37, "truncated")
    assert report.records == 36
    assert "records 37-40 were removed" in report.damage.detail  # type: ignore[union-attr]


async def test_truncation_with_its_checkpoints_needs_an_anchor(
        log: Path, key: Ed25519PrivateKey) -> None:
    store = SqliteAuditStore(log)
    await store.open()
    shipped = await store.checkpoints()  # e.g. the modelfence.audit.checkpoint log lines
    await store.close()
    with sql(log) as db:
        db.execute("DELETE FROM modelfence_audit WHERE seq > 25")
        db.execute("DELETE FROM modelfence_audit_checkpoints WHERE seq > 25")
    assert (await verify(log, key.public_key())).ok  # a shorter chain is still a chain
    report = await verify(log, key.public_key(), anchors=shipped)
    assert damage(report) == (26, "truncated")


async def test_forged_or_foreign_checkpoints(log: Path, key: Ed25519PrivateKey) -> None:
    rows = rows_of(log)
    thief = Signer(Ed25519PrivateKey.generate())
    with sql(log) as db:  # the head re-signed by someone else's key
        cp = thief.sign(N, rows[-1].hash, 1)
        db.execute("UPDATE modelfence_audit_checkpoints SET key_id=?, signature=? WHERE seq=?",
                   (cp.key_id, cp.signature, N))
    assert damage(await verify(log, key.public_key())) == (N, "bad_checkpoint")
    assert (await verify(log, thief.public)).damage.kind == "bad_checkpoint"  # type: ignore[union-attr]
    with sql(log) as db:  # a checkpoint past the end, signed by nobody
        db.execute("INSERT INTO modelfence_audit_checkpoints VALUES (?,?,?,?,?)",
                   (N + 5, 1, b"\0" * 32, "0" * 16, b"\0" * 64))
        db.execute("DELETE FROM modelfence_audit_checkpoints WHERE seq = ?", (N,))
    assert damage(await verify(log, key.public_key())) == (N + 5, "bad_checkpoint")


async def test_empty_log_verifies(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "empty.db")
    await store.open()
    await store.close()
    report = await verify(tmp_path / "empty.db", None)
    assert report.ok and report.records == 0

"""Retention keeps the chain verifiable: sealed, signed segments; pruning only what they prove.

The attacker here has the database, the archive folder and SQL, but not the checkpoint key.
"""

from __future__ import annotations

import gzip
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelfence.audit.chain import Head, entry_from_dict, link
from modelfence.audit.checkpoint import Signer
from modelfence.audit.retention import prune, seal, verify_archive
from modelfence.audit.segment import Manifest, manifests_in
from modelfence.audit.store import AuditStore
from modelfence.audit.store_sqlite import SqliteAuditStore
from modelfence.audit.verify import Report, verify_store
from modelfence.errors import RetentionRefused

from .test_audit_chain import rows_of, write_log

T = TypeVar("T")
N = 40  # records; checkpoints every 10; sealed 15 to a segment: 1-15, 16-30, 31-40


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture
async def log(tmp_path: Path, signer: Signer) -> Path:
    path = tmp_path / "audit.db"
    await write_log(path, N, signer=signer, every=10)
    return path


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[AuditStore]:
    store = SqliteAuditStore(path, create=False)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def on(path: Path, fn: Callable[[AuditStore], Awaitable[T]]) -> T:
    async with opened(path) as store:
        return await fn(store)


def sql(path: Path, *statements: str | tuple[str, tuple[object, ...]]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for s in statements:
            db.execute(*((s,) if isinstance(s, str) else s))
    finally:
        db.close()


async def sealed_and_pruned(log: Path, archive: Path, signer: Signer, *,
                            through: int = 30) -> None:
    done = await on(log, lambda s: seal(s, signer, archive, through=N, segment_records=15))
    assert [(m.first_seq, m.last_seq) for m in done.segments] == [(1, 15), (16, 30), (31, 40)]
    pruned = await on(log, lambda s: prune(s, signer.public, archive, through=through))
    assert pruned.rows == through


async def live(log: Path, signer: Signer) -> Report:
    return await on(log, lambda s: verify_store(s, public_key=signer.public, page=7))


async def archived(log: Path, archive: Path, signer: Signer) -> Report:
    return await on(log, lambda s: verify_archive(s, archive, public_key=signer.public, page=7))


def damage(report: Report) -> tuple[int, str]:
    assert report.damage is not None, report
    return report.damage.seq, report.damage.kind


async def test_seal_prune_and_verify_from_the_signed_segment(
        log: Path, tmp_path: Path, signer: Signer) -> None:
    archive = tmp_path / "archive"
    await sealed_and_pruned(log, archive, signer)
    assert [r.seq for r in rows_of(log)] == list(range(31, N + 1))
    with sqlite3.connect(log) as db:  # the pruned records' checkpoints went with them
        assert min(s for (s,) in db.execute("SELECT seq FROM modelfence_audit_checkpoints")) > 30

    report = await live(log, signer)
    assert report.ok, report.damage
    assert (report.first_seq, report.last_seq, report.records) == (31, N, 10)
    assert report.pruned_through == 30 and any("pruned" in n for n in report.notes)
    whole = await archived(log, archive, signer)
    assert whole.ok, whole.damage
    assert (whole.first_seq, whole.last_seq, whole.records) == (1, N, N)
    assert whole.checkpoints >= 3  # every segment's manifest and the live checkpoints

    # archive lines are JSON a SIEM can read, holding the exact record bytes
    first = manifests_in(archive)[0][1]
    assert isinstance(first, Manifest)
    with gzip.open(archive / first.file) as f:
        line = orjson.loads(f.readline())
    assert line["seq"] == 1 and line["record"]["request_id"] == "req-0"

    # sealing again seals only what is new, and a second prune finds nothing left to do
    await write_log(log, 5, signer=signer, start=N)
    whole_only = await on(log, lambda s: seal(s, signer, archive, segment_records=15))
    assert not whole_only.segments  # 5 new records: less than one whole segment
    more = await on(log, lambda s: seal(s, signer, archive, through=99, segment_records=15))
    assert [(m.first_seq, m.last_seq) for m in more.segments] == [(41, 45)]
    assert (await on(log, lambda s: prune(s, signer.public, archive, through=30))).rows == 0
    assert (await archived(log, archive, signer)).ok


async def test_the_head_stays_and_only_sealed_records_go(
        log: Path, tmp_path: Path, signer: Signer) -> None:
    archive = tmp_path / "archive"
    await on(log, lambda s: seal(s, signer, archive, through=N, segment_records=15))
    done = await on(log, lambda s: prune(s, signer.public, archive, through=N))
    assert [m.last_seq for m in done.segments] == [15, 30]
    assert done.kept is not None and "head" in done.kept
    assert rows_of(log)[0].seq == 31
    with pytest.raises(RetentionRefused, match="no sealed segment ends at record 35"):
        await on(log, lambda s: s.delete_through(35))
    with pytest.raises(RetentionRefused, match="chain's head"):
        await on(log, lambda s: s.delete_through(N))


async def test_prune_by_age(log: Path, tmp_path: Path, signer: Signer) -> None:
    archive = tmp_path / "archive"
    await on(log, lambda s: seal(s, signer, archive, through=N, segment_records=15))
    # Rec times are 2025-01-01T00:00:SS: segment 1-15 ends at second 14, 16-30 at second 29
    cutoff = 1735689620 * 1_000_000  # 2025-01-01T00:00:20Z
    done = await on(log, lambda s: prune(s, signer.public, archive, older_than_us=cutoff))
    assert [m.last_seq for m in done.segments] == [15]


async def test_seal_refuses_a_damaged_chain(log: Path, tmp_path: Path, signer: Signer) -> None:
    sql(log, "UPDATE modelfence_audit SET principal = 'nobody' WHERE seq = 12")
    with pytest.raises(RetentionRefused, match="record 12: modified"):
        await on(log, lambda s: seal(s, signer, tmp_path / "archive", through=N,
                                     segment_records=15))
    assert not list((tmp_path / "archive").glob("*"))  # no partial or half-signed files


async def test_seal_needs_no_key_holder_to_verify_but_refuses_foreign_segments(
        log: Path, tmp_path: Path, signer: Signer) -> None:
    archive = tmp_path / "archive"
    await on(log, lambda s: seal(s, signer, archive, through=N, segment_records=15))
    thief = Signer(Ed25519PrivateKey.generate())
    with pytest.raises(RetentionRefused, match="do not verify"):
        await on(log, lambda s: seal(s, thief, archive))
    with pytest.raises(RetentionRefused, match="do not verify"):
        await on(log, lambda s: prune(s, thief.public, archive, through=30))


async def test_an_interrupted_seal_is_adopted(log: Path, tmp_path: Path, signer: Signer) -> None:
    """Files in place but the store never recorded them (a crash): sealing again adopts them."""
    archive = tmp_path / "archive"
    first = await on(log, lambda s: seal(s, signer, archive, through=N, segment_records=15))
    sql(log, "DELETE FROM modelfence_audit_segments")
    again = await on(log, lambda s: seal(s, signer, archive, through=N, segment_records=15))
    assert again.segments == first.segments
    (archive / first.segments[0].file).write_bytes(b"other")  # not the same bytes: refused
    sql(log, "DELETE FROM modelfence_audit_segments")
    manifest = archive / (first.segments[0].file.removesuffix(".jsonl.gz") + ".manifest.json")
    manifest.write_bytes(manifest.read_bytes().replace(b'"records": 15', b'"records": 16'))
    with pytest.raises(RetentionRefused, match="holds a different segment 1-15"):
        await on(log, lambda s: seal(s, signer, archive, through=N, segment_records=15))


def _rewrite_archive(archive: Path, m: Manifest, old: bytes, new: bytes) -> None:
    path = archive / m.file
    with gzip.open(path) as f:
        text = f.read()
    assert old in text
    path.write_bytes(gzip.compress(text.replace(old, new, 1), mtime=0))


async def test_tampered_archive_is_caught_and_never_pruned(
        log: Path, tmp_path: Path, signer: Signer) -> None:
    archive = tmp_path / "archive"
    done = await on(log, lambda s: seal(s, signer, archive, through=N, segment_records=15))
    m = done.segments[0]
    _rewrite_archive(archive, m, b'"principal":"user3"', b'"principal":"nobody"')
    report = await archived(log, archive, signer)
    assert damage(report) == (1, "bad_archive")
    assert "not the file its manifest signed" in report.damage.detail  # type: ignore[union-attr]
    with pytest.raises(RetentionRefused, match="not the file its manifest signed"):
        await on(log, lambda s: prune(s, signer.public, archive, through=30))
    assert rows_of(log)[0].seq == 1  # nothing was deleted

    # the attacker also fixes the manifest's size and sha256: its signature no longer holds
    path = archive / m.file
    forged = orjson.loads((archive / _manifest_name(m)).read_bytes())
    forged.update(sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                  size=path.stat().st_size)
    (archive / _manifest_name(m)).write_bytes(orjson.dumps(forged))
    report = await archived(log, archive, signer)
    assert damage(report) == (1, "bad_segment")
    with pytest.raises(RetentionRefused, match="differs from the manifest the store keeps"):
        await on(log, lambda s: prune(s, signer.public, archive, through=30))


def _manifest_name(m: Manifest) -> str:
    return m.file.removesuffix(".jsonl.gz") + ".manifest.json"


async def test_archive_after_pruning_tampered_or_missing(
        log: Path, tmp_path: Path, signer: Signer) -> None:
    archive = tmp_path / "archive"
    await sealed_and_pruned(log, archive, signer)
    second = [m for _, m in manifests_in(archive) if isinstance(m, Manifest)][1]
    _rewrite_archive(archive, second, b'"status":200', b'"status":403')
    assert damage(await archived(log, archive, signer)) == (16, "bad_archive")
    (archive / second.file).unlink()
    (archive / _manifest_name(second)).unlink()
    report = await archived(log, archive, signer)  # a hole between the archive and the store
    assert damage(report) == (16, "deleted")
    assert (await live(log, signer)).ok  # the store alone still starts from its signed anchor


async def test_tampered_manifest_in_the_store(log: Path, tmp_path: Path, signer: Signer) -> None:
    archive = tmp_path / "archive"
    await sealed_and_pruned(log, archive, signer)
    with sqlite3.connect(log) as db:
        blob = db.execute("SELECT manifest FROM modelfence_audit_segments WHERE last_seq = 30"
                          ).fetchone()[0]
        doc = orjson.loads(blob)
        doc["last_hash"] = "00" * 32
        db.execute("UPDATE modelfence_audit_segments SET manifest = ? WHERE last_seq = 30",
                   (orjson.dumps(doc),))
    assert damage(await live(log, signer)) == (16, "bad_segment")
    assert damage(await archived(log, archive, signer)) == (16, "bad_segment")
    # without the key, the forged hash still breaks the join with the next segment
    report = await on(log, verify_store)
    assert damage(report) == (31, "bad_segment")
    sql(log, "DELETE FROM modelfence_audit_segments WHERE last_seq > 30")
    report = await on(log, verify_store)  # ... and record 31's link to it
    assert damage(report) == (31, "modified")


async def test_segment_manifests_removed_from_the_store(
        log: Path, tmp_path: Path, signer: Signer) -> None:
    await sealed_and_pruned(log, tmp_path / "archive", signer)
    sql(log, "DELETE FROM modelfence_audit_segments WHERE last_seq = 30")
    report = await live(log, signer)
    assert damage(report) == (31, "bad_segment")
    assert "31-40 does not continue sealed segment 1-15" in report.damage.detail  # type: ignore[union-attr]
    sql(log, "DELETE FROM modelfence_audit_segments WHERE last_seq = 40")
    report = await live(log, signer)
    assert damage(report) == (16, "deleted")
    assert "records 16-30 are missing" in report.damage.detail  # type: ignore[union-attr]
    sql(log, "DELETE FROM modelfence_audit_segments")
    report = await live(log, signer)
    assert damage(report) == (1, "deleted")
    assert "records 1-30 are missing" in report.damage.detail  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["payload", "rehashed", "relinked", "deleted"])
async def test_first_live_record_after_pruning(log: Path, tmp_path: Path, signer: Signer,
                                               how: str) -> None:
    await sealed_and_pruned(log, tmp_path / "archive", signer)
    rows = rows_of(log)
    if how == "payload":
        sql(log, "UPDATE modelfence_audit SET status = 500 WHERE seq = 31")
    elif how in ("rehashed", "relinked"):  # rewritten and re-hashed, on its old or a new link
        forged_entry = entry_from_dict({**orjson.loads(rows[0].payload), "status": 500}, now=0)
        prev = rows[0].prev if how == "rehashed" else b"\x07" * 32
        forged = link(Head(30, prev), [forged_entry])[0]
        sql(log, "DELETE FROM modelfence_audit WHERE seq = 31",
            ("INSERT INTO modelfence_audit VALUES (?,?,?,?,?,?,?,?,?,?,?)", tuple(forged)))
    else:
        sql(log, "DELETE FROM modelfence_audit WHERE seq = 31")
    report = await live(log, signer)
    expected = {"payload": (31, "modified"), "rehashed": (31, "modified"),
                "relinked": (31, "modified"), "deleted": (31, "deleted")}[how]
    assert damage(report) == expected
    assert damage(await archived(log, tmp_path / "archive", signer))[0] == 31


async def test_checkpoint_records_survive_pruning_as_anchors(
        log: Path, tmp_path: Path, signer: Signer) -> None:
    """Shipped checkpoint lines for pruned records are skipped by the store's walk and
    checked against the archive."""
    shipped = await on(log, lambda s: s.checkpoints())
    archive = tmp_path / "archive"
    await sealed_and_pruned(log, archive, signer)
    assert (await on(log, lambda s: verify_store(s, public_key=signer.public,
                                                  anchors=shipped))).ok
    report = await on(log, lambda s: verify_archive(s, archive, public_key=signer.public,
                                                     anchors=shipped))
    assert report.ok and report.checkpoints >= len(shipped)


async def test_records_written_after_sealing_extend_the_chain(
        tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "audit.db"
    await write_log(path, 20, signer=signer, every=10)
    archive = tmp_path / "archive"
    await on(path, lambda s: seal(s, signer, archive, through=20))
    await write_log(path, 3, signer=signer, start=20)
    done = await on(path, lambda s: prune(s, signer.public, archive, through=20))
    assert done.rows == 20
    await write_log(path, 3, signer=signer, start=23)  # the writer continues after the head
    report = await live(path, signer)
    assert report.ok and (report.first_seq, report.last_seq) == (21, 26)
    assert rows_of(path)[0].request_id == "req-20"


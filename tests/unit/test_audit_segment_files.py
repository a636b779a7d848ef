"""Sealed segments hold full records: owner-only files in an owner-only folder, and the
folder is synced so the renamed archive survives a power cut (review finding 7)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelfence.audit.checkpoint import Signer
from modelfence.audit.retention import seal
from modelfence.audit.store_sqlite import SqliteAuditStore

from .test_audit_chain import write_log


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: files 0644, folders 0755
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("existing", [False, True])
async def test_archives_and_manifests_are_owner_only_and_the_folder_synced(
        tmp_path: Path, loose_umask: None, existing: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    await write_log(tmp_path / "audit.db", 20, signer=signer, every=10)
    archive = tmp_path / "archive"
    if existing:
        archive.mkdir(mode=0o755)
    synced_dirs: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_dirs.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = SqliteAuditStore(tmp_path / "audit.db", create=False)
    await store.open()
    try:
        done = await seal(store, signer, archive, through=20, segment_records=10)
    finally:
        await store.close()
    assert len(done.segments) == 2
    assert stat.S_IMODE(archive.stat().st_mode) == 0o700
    files = list(archive.iterdir())
    assert len(files) == 4  # two archives, two manifests
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {
        f.name: 0o600 for f in files}
    assert synced_dirs.count(archive.stat().st_ino) >= 2  # once per segment put in place

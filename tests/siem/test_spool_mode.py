"""Who may read a spool: alerts name principals, tenants and what they were suspected of,
so the spool's folder and segments are the gateway user's alone, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfence.siem.spool import Spool


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the common default: files 0644, folders 0755
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_spool_folder_and_segments_are_private(tmp_path: Path, open_umask: None) -> None:
    folder = tmp_path / "siem-spool" / "soc"
    s = Spool(folder, 10_000, fsync=False)
    s.open()
    s.append([b'{"principal":"mallory"}'])
    assert s.path is not None
    assert _mode(s.path) & 0o077 == 0, oct(_mode(s.path))
    assert _mode(folder) & 0o077 == 0, oct(_mode(folder))
    s.append([b"x" * 6000, b"y" * 6000])  # compacted into a fresh segment
    assert _mode(s.path) & 0o077 == 0, oct(_mode(s.path))
    s.close()

"""The lock that tells a living process's spill or spool segment from an abandoned one."""

from __future__ import annotations

from pathlib import Path

from modelfence.kernel.files import fsync_dir, try_lock


def test_a_file_locked_by_one_open_description_is_refused_to_another(tmp_path: Path) -> None:
    path = tmp_path / "segment.log"
    path.write_bytes(b"")
    owner = path.open("r+b")
    other = path.open("r+b")
    assert try_lock(owner)
    assert not try_lock(other)  # held: a living process's segment
    owner.close()  # the process ended: its lock went with it
    assert try_lock(other)
    other.close()


def test_a_folder_can_be_synced(tmp_path: Path) -> None:
    (tmp_path / "new").write_bytes(b"x")
    fsync_dir(tmp_path)

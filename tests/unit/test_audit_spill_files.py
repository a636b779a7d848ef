"""The audit spill holds whole records while the store is away: its files are the owner's
alone, whatever the process's umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from modelfence.audit.chain import Entry
from modelfence.audit.spill import Spill


async def test_spill_files_and_folder_are_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "audit-spill"
    old = os.umask(0o022)  # a common default that would leave files readable by all
    try:
        spill = Spill(folder, 1 << 20)
        await spill.open()
        try:
            entry = Entry(1, "r1", "alice", "acme", "digits", "infer", 200, b'{"x":1}')
            assert await spill.append([entry])
            files = [p for p in folder.iterdir() if p.is_file()]
            assert files, "nothing spilled"
            for path in files:
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        finally:
            await spill.close()
    finally:
        os.umask(old)

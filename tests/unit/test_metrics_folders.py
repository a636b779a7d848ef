"""A killed server's metrics folder is removed by the next server that starts workers; a live
server's, another user's and anything not named like one are kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from modelfence.gateway.workers import METRICS_PREFIX, remove_orphaned_metrics


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_folders_of_servers_that_are_gone_are_removed(tmp_path: Path) -> None:
    gone = tmp_path / f"{METRICS_PREFIX}{dead_pid()}-abc"
    live = tmp_path / f"{METRICS_PREFIX}{os.getpid()}-def"
    old_style = tmp_path / f"{METRICS_PREFIX}xyz123"  # no pid in the name: not ours to judge
    other = tmp_path / "something-else-1-x"
    for folder in (gone, live, old_style, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"\0" * 16)
    remove_orphaned_metrics(tmp_path)
    assert not gone.exists()
    assert live.exists() and old_style.exists() and other.exists()

"""Local files that must outlive a crash and belong to one living process at a time: the
audit spill, the SIEM spool, sealed archives and encrypted model files."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import BinaryIO


def try_lock(file: BinaryIO) -> bool:
    """Take an exclusive `flock` on `file` without waiting; False when another open file
    description holds it (a living process owns the file). Held until `file` is closed."""
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable: the folder's entry must reach disk too."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

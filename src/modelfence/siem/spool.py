"""A destination's alerts on local disk until its collector takes them.

Each process appends to a segment file of its own (`spool-<uuid>.log` in the destination's
folder) and holds an exclusive `flock` on it while it lives. A segment whose lock can be
taken belongs to no running process (a gateway stopped or killed before its collector came
back): the next process to open the folder adopts its alerts, oldest first, ahead of its
own, then removes it. A new segment is locked under a temporary name before it is renamed
into place, so no other process can adopt it in between; a segment found unlinked once its
lock is taken (`st_nlink == 0`) was replaced or adopted already and is skipped.

A segment is a 16-byte header (magic, then the offset of the first alert not yet
delivered) and one JSON document per line. Delivering advances the offset (rewritten and,
with `fsync`, synced), so a crash between a send and that write sends the batch again:
delivery is at least once. The spool is bounded: an alert that would take the waiting ones
past `max_bytes` drops the oldest first (counted by `on_drop`). When everything waiting has
been delivered the segment is cut back to its header; when delivered bytes exceed the bound,
the waiting alerts are copied to a fresh segment that replaces it. A torn last line (a
crash mid-append) is ignored when a segment is adopted.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..kernel.files import fsync_dir, try_lock

log = logging.getLogger("modelfence.siem")

MAGIC = b"MFSIEM01"
HEADER = 16
PATTERN = "spool-*.log"
TMP_STALE_S = 60.0
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600  # alerts name principals: no other user reads them


def _header(offset: int) -> bytes:
    return MAGIC + offset.to_bytes(8, "big")


def read_segment(f: BinaryIO) -> list[bytes]:
    """The alerts a segment still holds (none if it is not a spool segment)."""
    f.seek(0)
    head = f.read(HEADER)
    if len(head) < HEADER or head[:8] != MAGIC:
        return []
    f.seek(int.from_bytes(head[8:], "big"))
    lines = f.read().split(b"\n")
    return [line for line in lines[:-1] if line]  # the last piece is torn or empty


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


class Spool:
    def __init__(self, folder: Path, max_bytes: int, *, fsync: bool = True,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._fsync = fsync
        self._on_drop = on_drop or (lambda n: None)
        self._pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self._offset = HEADER
        self._file: BinaryIO | None = None
        self.path: Path | None = None

    def __len__(self) -> int:
        return len(self._pending)

    # opening -----------------------------------------------------------------------------

    def open(self) -> None:
        self.folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        self._remove_stale_tmp()
        self._file, self.path = self._new_segment([])
        adopted: list[tuple[Path, BinaryIO]] = []
        for path in sorted(self.folder.glob(PATTERN), key=_mtime):
            if path == self.path:
                continue
            try:
                f: BinaryIO = path.open("r+b")
            except FileNotFoundError:  # another process adopted it meanwhile
                continue
            if not try_lock(f) or os.fstat(f.fileno()).st_nlink == 0:
                f.close()
                continue
            records = read_segment(f)
            if records:
                log.info("siem spool %s: adopting %d alerts of a stopped process",
                         self.folder.name, len(records))
            self.append(records)
            adopted.append((path, f))
        for path, f in adopted:  # only once their alerts are safe in this segment
            path.unlink()
            f.close()

    def _remove_stale_tmp(self) -> None:
        for tmp in self.folder.glob("*.tmp"):
            try:
                if time.time() - tmp.stat().st_mtime > TMP_STALE_S:
                    tmp.unlink()
            except FileNotFoundError:
                pass

    def _new_segment(self, records: list[bytes]) -> tuple[BinaryIO, Path]:
        """A locked segment holding `records`, renamed into place (see the module's doc)."""
        name = self.path or self.folder / f"spool-{uuid.uuid4().hex}.log"
        tmp = self.folder / f"{name.name}.{uuid.uuid4().hex[:8]}.tmp"
        # the gateway user's alone (alerts name principals), whatever the umask
        f = os.fdopen(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_FILE), "w+b")
        try_lock(f)  # a fresh file: nobody else has it
        f.write(_header(HEADER) + b"".join(r + b"\n" for r in records))
        self._sync(f)
        os.replace(tmp, name)
        if self._fsync:
            fsync_dir(self.folder)
        return f, name

    # writing -----------------------------------------------------------------------------

    def append(self, records: list[bytes]) -> None:
        f = self._file
        assert f is not None, "open the spool first"
        kept = []
        dropped = 0
        for r in records:
            size = len(r) + 1
            if size > self.max_bytes:
                dropped += 1
                continue
            while self.pending_bytes + size > self.max_bytes:
                self._advance(1)
                dropped += 1
            self._pending.append(r)
            self.pending_bytes += size
            kept.append(r)
        if kept:
            f.seek(0, os.SEEK_END)
            f.write(b"".join(r + b"\n" for r in kept))
        if dropped:
            self._on_drop(dropped)
            self._write_offset()
        if self._offset - HEADER > self.max_bytes:
            self._compact()
        else:
            self._sync(f)

    def peek(self, n: int) -> list[bytes]:
        return [self._pending[i] for i in range(min(n, len(self._pending)))]

    def ack(self, n: int) -> None:
        """The first `n` waiting alerts were delivered."""
        self._advance(n)
        if not self._pending:
            assert self._file is not None
            self._file.truncate(HEADER)
            self._offset = HEADER
        elif self._offset - HEADER > self.max_bytes:
            self._compact()
            return
        self._write_offset()

    def _advance(self, n: int) -> None:
        for _ in range(min(n, len(self._pending))):
            size = len(self._pending.popleft()) + 1
            self._offset += size
            self.pending_bytes -= size

    def _write_offset(self) -> None:
        f = self._file
        assert f is not None
        f.seek(0)
        f.write(_header(self._offset))
        self._sync(f)

    def _compact(self) -> None:
        old = self._file
        self._file, self.path = self._new_segment(list(self._pending))
        self._offset = HEADER
        if old is not None:
            old.close()

    def _sync(self, f: BinaryIO) -> None:
        f.flush()
        if self._fsync:
            os.fsync(f.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

"""The spill: audit records the store could not take, on local disk until it answers again.

When a commit fails, the writer appends the batch here (fsync'd) instead of dropping it,
and replays the spill oldest first once the store answers, before any newer record, so
the chain keeps the order the calls completed in. Records are spilled unlinked: their
position and hash are given when they are replayed, under the store's write lock.

Each writer process appends to a segment file of its own in `folder`, holding an
exclusive `flock` on it while it lives. A segment whose lock can be taken belongs to no
running process (a gateway that was stopped or killed): the next writer to open adopts
it and replays it before its own records. Adopting never races with creating: a segment
is locked under a temporary name and only then renamed to `spill-*.log`.

A segment is a 16-byte header (magic, then the offset up to which it was replayed) and
one JSON array per record per line. A batch whose commit failed after its rows were
planned may have committed all the same (the connection broke after COMMIT was sent): it
is preceded by a marker line, a JSON object naming the position and hash its first row
would have had, and the replay first looks there (`Ambiguous`). The offset is rewritten
and fsync'd after each replayed batch, so a crash between a commit and that write
replays at most that batch twice, never skips one. A torn last line (a crash
mid-append) is cut off at open.

Several processes share the folder, so: a fully replayed adopted segment gets its final
offset written before it is unlinked, and a segment whose lock is taken after it was
unlinked (`st_nlink == 0`) is skipped, so a process that opened it just before is not
fooled into replaying it again; a new segment whose lock cannot be taken is abandoned for
another name; and a `.tmp` left by a writer that died making its segment is removed only
once it is older than `TMP_STALE_S`, never the one a living writer is making right now.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from ..kernel.files import fsync_dir, try_lock
from .chain import Entry

log = logging.getLogger("modelfence.audit")

MAGIC = b"MFSPILL1"
HEADER = 16
PATTERN = "spill-*.log"
TMP_STALE_S = 60.0  # a writer renames its new segment within microseconds


def _noop(n: int) -> None:
    return None


def _noop2(a: int, b: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class SpillMetrics:
    """Where the spill reports what it took and gave back (the gateway's Prometheus metrics)."""

    spilled: Callable[[int], None] = _noop
    replayed: Callable[[int], None] = _noop
    lost: Callable[[int], None] = _noop
    dead_letter: Callable[[int], None] = _noop  # refused by the store for good (writer.py)
    pending: Callable[[int, int], None] = _noop2  # records, bytes


@dataclass(frozen=True, slots=True)
class Ambiguous:
    """A commit failed after planning `count` rows from position `seq`, the first hashing to
    `hash`: if that row is in the store, the batch is there already."""

    seq: int
    hash: bytes
    count: int


def _marker(a: Ambiguous) -> bytes:
    return orjson.dumps({"committed_if": [a.seq, a.hash.hex(), a.count]}) + b"\n"


def _is_marker(line: bytes) -> bool:
    return line.startswith(b"{")


def _count_records(data: bytes) -> int:
    return sum(1 for line in data.split(b"\n") if line and not _is_marker(line))


def _line(e: Entry) -> bytes:
    return orjson.dumps([*e[:-1], e.payload.decode()]) + b"\n"


def _entry(line: bytes) -> Entry:
    ts, rid, principal, tenant, model, action, status, payload = orjson.loads(line)
    return Entry(ts, rid, principal, tenant, model, action, status, payload.encode())


@dataclass(eq=False)
class _Segment:
    path: Path
    file: BinaryIO  # holds the flock; appended at the end, read from `offset`
    offset: int = HEADER  # replayed up to here
    size: int = HEADER
    records: int = 0  # not yet replayed
    adopted: bool = False
    # (size, kind) of the lines read, not yet done: kind 0 a marker, 1 a record given out,
    # 2 a damaged record skipped
    lines: list[tuple[int, int]] = field(default_factory=list)
    read: int = 0  # records among them

    def mark(self, offset: int) -> None:
        os.pwrite(self.file.fileno(), offset.to_bytes(8, "big"), len(MAGIC))
        os.fdatasync(self.file.fileno())


def _read_segment(path: Path, file: BinaryIO) -> tuple[int, int, int]:
    """(replayed offset, valid size, pending records) of an adopted segment; cuts a torn tail."""
    data = file.read()
    if len(data) < HEADER or data[:len(MAGIC)] != MAGIC:
        return HEADER, HEADER, 0
    offset = min(int.from_bytes(data[len(MAGIC):HEADER], "big"), len(data))
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("audit spill %s: a torn last record (the writer died mid-append) was cut "
                    "off; it had not been acknowledged", path.name)
        os.ftruncate(file.fileno(), max(end, HEADER))
    size = max(end, HEADER)
    return offset, size, _count_records(data[offset:size])


class Spill:
    """Segments oldest first: adopted ones, then this process's own (made on first use)."""

    def __init__(self, folder: Path, max_bytes: int, metrics: SpillMetrics | None = None) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.metrics = metrics or SpillMetrics()
        self._segments: list[_Segment] = []
        self._own: _Segment | None = None
        self._lock = asyncio.Lock()
        self._failing = False

    @property
    def records(self) -> int:
        return sum(s.records for s in self._segments)

    @property
    def size(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def empty(self) -> bool:
        return not any(s.records for s in self._segments)

    def room(self, needed: int = 0) -> bool:
        return self.size + needed <= self.max_bytes

    async def open(self) -> None:
        """Adopt the segments no running process holds; they are replayed first."""
        async with self._lock:
            await asyncio.to_thread(self._adopt)
        self._report()
        if self.records:
            log.warning("audit spill: %d records left by a stopped gateway in %s; replaying "
                        "them before new records", self.records, self.folder)

    async def close(self) -> None:
        """Close the segments; an empty own one is removed, others wait for the next start."""
        async with self._lock:
            for s in self._segments:
                if s is self._own and not s.records:
                    s.path.unlink(missing_ok=True)
                s.file.close()
            self._segments.clear()
            self._own = None

    def _adopt(self) -> None:
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob(PATTERN)):
            try:
                file = path.open("r+b")
            except OSError as exc:
                log.error("audit spill %s cannot be read: %s", path, exc.strerror)
                continue
            if not try_lock(file) or os.fstat(file.fileno()).st_nlink == 0:
                file.close()  # a running writer's own segment, or one replayed and removed
                continue
            offset, size, records = _read_segment(path, file)
            if not records:  # replayed to the end before its writer stopped
                path.unlink(missing_ok=True)
                file.close()
                continue
            self._segments.append(_Segment(path, file, offset, size, records, adopted=True))
        for path in self.folder.glob("spill-*.tmp"):  # a writer died making its segment
            try:
                with path.open("rb") as tmp:
                    st = os.fstat(tmp.fileno())
                    if time.time() - st.st_mtime < TMP_STALE_S:
                        continue  # maybe being made right now, not yet locked
                    if try_lock(tmp) and os.stat(path).st_ino == st.st_ino:
                        path.unlink(missing_ok=True)
            except OSError:  # renamed by its (living) writer meanwhile
                continue

    def _create(self) -> _Segment:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for _ in range(3):
            name = f"spill-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp = self.folder / f"{name}.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # owner only
            file = os.fdopen(fd, "r+b")
            if try_lock(file):
                break
            file.close()  # another process holds it (a cleaner): leave it, take a new name
        else:
            raise OSError("a new spill segment could not be locked")
        file.write(MAGIC + HEADER.to_bytes(8, "big"))
        file.flush()
        os.fsync(fd)
        path = tmp.with_suffix(".log")
        os.rename(tmp, path)
        fsync_dir(self.folder)
        return _Segment(path, file)

    async def append(self, entries: list[Entry], ambiguous: Ambiguous | None = None) -> bool:
        """Write `entries` durably after everything spilled; False when there is no room
        (the size limit, or the disk refused: logged once per writer problem)."""
        data = (_marker(ambiguous) if ambiguous else b"") + b"".join(map(_line, entries))
        async with self._lock:
            if not self.room(len(data)):
                return False
            try:
                await asyncio.to_thread(self._append, data)
            except OSError as exc:
                if not self._failing:
                    log.error("audit spill %s cannot be written: %s", self.folder,
                              exc.strerror or exc)
                self._failing = True
                return False
            self._failing = False
            own = self._own
            assert own is not None
            own.size += len(data)
            own.records += len(entries)
        self.metrics.spilled(len(entries))
        self._report()
        return True

    def _append(self, data: bytes) -> None:
        if self._own is None:
            self._own = self._create()
            self._segments.append(self._own)
        fd = self._own.file.fileno()
        os.pwrite(fd, data, self._own.size)
        os.fdatasync(fd)

    async def peek(self, limit: int) -> tuple[list[Entry], Ambiguous | None]:
        """Up to `limit` of the oldest records not yet replayed (from one segment); a batch
        that may have committed comes alone, with what shows whether it did."""
        async with self._lock:
            seg = next((s for s in self._segments if s.records), None)
            if seg is None:
                return [], None
            return await asyncio.to_thread(self._read, seg, limit)

    def _read(self, seg: _Segment, limit: int) -> tuple[list[Entry], Ambiguous | None]:
        out: list[Entry] = []
        ambiguous = None
        seg.lines, seg.read = [], 0
        with seg.path.open("rb") as f:  # its own description: the writer's flock stays
            f.seek(seg.offset)
            pos = seg.offset
            while seg.read < limit and pos < seg.size:
                line = f.readline(seg.size - pos)
                if not line:
                    break
                if _is_marker(line):
                    if seg.lines:  # a marked batch starts a read of its own
                        break
                    ambiguous = self._ambiguous(seg, line)
                    if ambiguous is not None:
                        limit = ambiguous.count
                    seg.lines.append((len(line), 0))
                else:
                    seg.read += 1
                    try:
                        out.append(_entry(line))
                    except (ValueError, TypeError) as exc:  # damaged on disk: say so, go on
                        log.error("audit spill %s: a damaged record was skipped: %s",
                                  seg.path.name, exc)
                        self.metrics.lost(1)
                        seg.lines.append((len(line), 2))
                    else:
                        seg.lines.append((len(line), 1))
                pos += len(line)
        if not seg.read:  # the count and the file disagree: nothing more to give
            log.error("audit spill %s: %d records were counted but none could be read",
                      seg.path.name, seg.records)
            self.metrics.lost(seg.records)
            seg.records = 0
        return out, ambiguous

    def _ambiguous(self, seg: _Segment, line: bytes) -> Ambiguous | None:
        try:
            seq, hash_hex, count = orjson.loads(line)["committed_if"]
            return Ambiguous(int(seq), bytes.fromhex(hash_hex), int(count))
        except (ValueError, TypeError, KeyError) as exc:
            log.error("audit spill %s: a damaged batch marker was skipped: %s",
                      seg.path.name, exc)
            return None

    async def done(self, entries: int | None = None) -> int:
        """The records the last `peek` returned are in the store (or, with `entries`, its
        first `entries` records are settled): move past them."""
        async with self._lock:
            seg = next((s for s in self._segments if s.records), None)
            if seg is None or not seg.lines or entries == 0:
                return 0
            take = len(seg.lines)
            if entries is not None:  # through the line giving the `entries`-th record
                given = 0
                for i, (_, kind) in enumerate(seg.lines):
                    given += kind == 1
                    if given == entries:
                        take = i + 1
                        break
            lines, rest = seg.lines[:take], seg.lines[take:]
            n = sum(1 for _, kind in lines if kind)
            offset = seg.offset + sum(size for size, _ in lines)
            remaining = seg.records - n
            # the file first, then the counts: `empty` turns true only once it is on disk
            await asyncio.to_thread(self._advance, seg, offset, remaining)
            seg.lines, seg.read = rest, seg.read - n
            if remaining:
                seg.offset, seg.records = offset, remaining
            elif seg.adopted:  # replayed to the end: gone, and its lock with it
                seg.records = 0
                self._segments.remove(seg)
            else:  # our own: empty again, ready for the next outage
                seg.offset = seg.size = HEADER
                seg.records = 0
            self.metrics.replayed(n)
        self._report()
        return n

    @staticmethod
    def _advance(seg: _Segment, offset: int, remaining: int) -> None:
        if remaining:
            seg.mark(offset)
        elif seg.adopted:  # the end first: whoever opened it before the unlink sees it done
            seg.mark(offset)
            seg.path.unlink(missing_ok=True)
            seg.file.close()
        else:
            os.ftruncate(seg.file.fileno(), HEADER)
            seg.mark(HEADER)

    def _report(self) -> None:
        self.metrics.pending(self.records, self.size if self.records else 0)


def pending_in(folder: Path) -> int:
    """Records waiting in every segment under `folder` (for `audit verify`); reads only."""
    total = 0
    if not folder.is_dir():
        return 0
    for path in folder.glob(PATTERN):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if len(data) >= HEADER and data[:len(MAGIC)] == MAGIC:
            offset = min(int.from_bytes(data[len(MAGIC):HEADER], "big"), len(data))
            end = data.rfind(b"\n") + 1
            total += _count_records(data[offset:end]) if end > offset else 0
    return total

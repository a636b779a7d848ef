"""Verify a chained log: every row, every link, every checkpoint; name the first damage.

The fast path checks, row by row, that positions are consecutive, that each row links
to the hash of the one before and that its own hash matches its content. The first row
that fails is handed to `diagnose`, which looks at its neighbours to tell the kinds of
damage apart (a row that only *looks* modified is often a moved or renumbered one):

* modified  — content no longer matches its hash, or a row was edited and re-hashed
* deleted   — a gap in positions, or rows renumbered to close one
* inserted  — a row the chain skips: its successor links past it
* reordered — a row links to a row that comes after it
* truncated — a checkpoint covers rows the log no longer has
* bad_checkpoint — a checkpoint whose signature or key does not verify
* bad_segment — a sealed segment's manifest does not verify, or segments do not join
* bad_archive — a sealed segment's archive file is missing or not the file it signed

Without a public key, checkpoints still catch truncation and re-hashing, but anyone
could have written them; with it, only the holder of the private key.

After retention pruned records 1..b, the store's walk starts from the hash that the
signed manifest of the sealed segment ending at b gives for record b; every other
sealed segment still in the store's range acts as a checkpoint (segment.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .chain import Head, Row, hash_of, row_hash, us_to_iso
from .checkpoint import Checkpoint
from .segment import Manifest
from .store import AuditStore, Query

_SEARCH = 16  # how far a renumbered row's original position is searched
_ORIGIN = Head()  # the chain before record 1 (frozen)


@dataclass(frozen=True, slots=True)
class Damage:
    seq: int
    kind: str
    detail: str


class Anchor(Protocol):
    """A signed statement "record `seq` hashed to `hash`": a checkpoint or a segment manifest."""

    @property
    def seq(self) -> int: ...
    @property
    def hash(self) -> bytes: ...
    @property
    def ts_us(self) -> int: ...
    def problem(self, public: Ed25519PublicKey | None) -> str | None: ...


def _what(a: Anchor) -> tuple[str, str]:
    """How a damage report names an anchor, and the kind of damage a bad one is."""
    if isinstance(a, Manifest):
        return f"sealed {a.name()}", "bad_segment"
    return f"checkpoint at record {a.seq}", "bad_checkpoint"


@dataclass(slots=True)
class Report:
    records: int = 0
    first_seq: int = 1
    last_seq: int = 0
    checkpoints: int = 0
    last_checkpoint: int = 0
    signed: bool = False
    seconds: float = 0.0
    damage: Damage | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.damage is None

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def pruned_through(self) -> int:
        """Records before `first_seq` were pruned; the walk started from a sealed segment."""
        return self.first_seq - 1

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "pruned_through": self.pruned_through,
                "checkpoints": self.checkpoints, "last_checkpoint": self.last_checkpoint,
                "unsealed": self.last_seq - self.last_checkpoint if self.ok else None,
                "signatures_checked": self.signed, "seconds": round(self.seconds, 3),
                "records_per_s": round(self.rate),
                "damage": None if self.damage is None else {
                    "seq": self.damage.seq, "kind": self.damage.kind,
                    "detail": self.damage.detail},
                "notes": self.notes}


def diagnose(row: Row, good: Row | None, following: list[Row], start: Head = _ORIGIN
             ) -> Damage:
    """Why `row` breaks the chain after the last good row `good` (or after `start`, the
    genesis or a sealed segment's end), given the rows after it."""
    want_seq = good.seq + 1 if good else start.seq + 1
    want_prev = good.hash if good else start.hash
    if row.seq > want_seq:
        gone = (f"record {want_seq} is" if row.seq == want_seq + 1
                else f"records {want_seq}-{row.seq - 1} are")
        return Damage(want_seq, "deleted",
                      f"{gone} missing; the log jumps from {want_seq - 1} to {row.seq}")
    own_ok = hash_of(row) == row.hash
    link_ok = row.prev == want_prev
    later = {r.hash: r.seq for r in following}
    if not link_ok and row.prev in later:
        return Damage(row.seq, "reordered", f"record {row.seq} links to record "
                      f"{later[row.prev]}, which comes after it: records were swapped or moved")
    if not link_ok and good is not None and row.prev == good.prev:
        return Damage(good.seq, "inserted", f"record {row.seq} links to record {good.seq - 1}, "
                      f"so record {good.seq} is not part of the chain")
    if not link_ok and following and following[0].prev == want_prev:
        return Damage(row.seq, "inserted", f"record {following[0].seq} links to record "
                      f"{want_seq - 1}, so record {row.seq} is not part of the chain")
    if not own_ok:
        if link_ok:
            return Damage(row.seq, "modified",
                          f"record {row.seq}'s content no longer matches its hash")
        for d in range(1, _SEARCH + 1):
            if hash_of(row, seq=row.seq + d) == row.hash:
                return Damage(row.seq, "deleted", f"record {row.seq} was written as "
                              f"{row.seq + d}: {d} record(s) before it were deleted and the "
                              "rest renumbered")
            if row.seq - d >= 1 and hash_of(row, seq=row.seq - d) == row.hash:
                return Damage(row.seq - d, "inserted", f"record {row.seq} was written as "
                              f"{row.seq - d}: {d} record(s) were inserted before it")
        return Damage(row.seq, "modified",
                      f"record {row.seq} matches neither its hash nor its predecessor")
    if good is None and start.seq:
        return Damage(row.seq, "modified", f"record {row.seq} does not link to the signed "
                      f"hash of record {start.seq}: it was changed and re-hashed, or the "
                      "records before it were replaced")
    if good is None:
        return Damage(row.seq, "deleted", f"record {row.seq} does not start the chain: the "
                      "records before it were removed")
    return Damage(good.seq, "modified", f"record {row.seq} links to a different hash than "
                  f"record {good.seq} has: record {good.seq} was changed and re-hashed")


class Checkpoints:
    """Checkpoints, sealed segments and outside anchors after `start`, checked as the walk
    reaches their position (those before `start` cover pruned records: see retention.py)."""

    def __init__(self, items: Iterable[Anchor], public: Ed25519PublicKey | None,
                 start: Head = _ORIGIN) -> None:
        self.public = public
        self.by_seq: dict[int, list[Anchor]] = {}
        for cp in items:
            same = self.by_seq.setdefault(cp.seq, [])
            if cp not in same:
                same.append(cp)
        self.positions = sorted(p for p in self.by_seq if p > start.seq)
        self.good = start.seq  # newest position whose checkpoints matched the chain
        self.checked = 0

    def check(self, row: Row) -> Damage | None:
        for cp in self.by_seq[row.seq]:
            problem = cp.problem(self.public)
            if problem is not None:
                what, kind = _what(cp)
                return Damage(row.seq, kind, f"{what}: {problem}")
            if cp.hash != row.hash:
                return Damage(self.good + 1, "modified", f"the chain up to record {row.seq} no "
                              f"longer matches the {_what(cp)[0]} signed at "
                              f"{us_to_iso(cp.ts_us)}: "
                              f"records {self.good + 1}-{row.seq} were changed and re-hashed")
            self.checked += 1
        self.good = row.seq
        return None

    def beyond(self, last_seq: int) -> Damage | None:
        """A checkpoint past the end: the newest records were removed."""
        for seq in self.positions:
            if seq <= last_seq:
                continue
            for cp in self.by_seq[seq]:
                if cp.problem(self.public) is None:
                    return Damage(last_seq + 1, "truncated", f"the log ends at record "
                                  f"{last_seq} but the {_what(cp)[0]} signed at "
                                  f"{us_to_iso(cp.ts_us)} covers {seq}: records "
                                  f"{last_seq + 1}-{seq} were removed")
            first = self.by_seq[seq][0]
            what, kind = _what(first)
            return Damage(seq, kind, f"{what} is past the end of the log and "
                          f"{first.problem(self.public)}")
        return None


class Walk:
    """Checks rows in order after `start`: positions consecutive, links, hashes, anchors."""

    def __init__(self, cps: Checkpoints, start: Head = _ORIGIN) -> None:
        self.cps = cps
        self.start = start
        self.seq, self.prev = start.seq, start.hash
        self.good: Row | None = None
        self._next_cp = iter([*cps.positions, 0])
        self._cp_at = next(self._next_cp)

    def feed(self, rows: list[Row]) -> tuple[Row, Damage | None] | None:
        """None when every row is good; else the first bad row, with its damage when an
        anchor already names it (None: the caller diagnoses it with the rows after it)."""
        seq, prev, cp_at = self.seq, self.prev, self._cp_at
        try:
            for row in rows:
                s, rprev, h = row[0], row[9], row[10]
                if s != seq + 1 or rprev != prev or row_hash(rprev, s, row[1:9]) != h:
                    return row, None
                seq, prev = s, h
                self.good = row
                if s == cp_at:
                    damage = self.cps.check(row)
                    if damage is not None:
                        return row, damage
                    cp_at = self._cp_at = next(self._next_cp)
            return None
        finally:
            self.seq, self.prev = seq, prev

    def diagnose(self, row: Row, following: list[Row]) -> Damage:
        good = self.good
        if good is not None and self.cps.good == good.seq:  # a signature vouches for it
            return diagnose(row, None, following, Head(good.seq, good.hash))
        return diagnose(row, good, following, self.start)

    def report(self, report: Report, started: float) -> Report:
        report.first_seq = self.start.seq + 1
        report.last_seq = self.seq
        report.records = self.seq - self.start.seq
        report.checkpoints = self.cps.checked
        report.last_checkpoint = self.cps.good
        report.seconds = time.perf_counter() - started
        return report


def parse_segments(blobs: Iterable[bytes], public: Ed25519PublicKey | None
                   ) -> tuple[list[Manifest], Damage | None]:
    """The store's sealed-segment manifests, and the first that does not verify or join."""
    out: list[Manifest] = []
    for blob in blobs:
        try:
            m = Manifest.from_json(blob)
        except ValueError as exc:
            return out, Damage(0, "bad_segment", f"a sealed segment's manifest: {exc}")
        problem = m.problem(public)
        if problem is not None:
            return out, Damage(m.first_seq, "bad_segment", f"sealed {m.name()}: {problem}")
        if not out and m.first_seq != 1:
            return out, Damage(1, "bad_segment", f"the oldest sealed segment is {m.name()}: "
                               "the manifests of the segments before it were removed")
        if out and (m.first_seq != out[-1].last_seq + 1 or m.prev_hash != out[-1].last_hash):
            return out, Damage(m.first_seq, "bad_segment", f"sealed {m.name()} does not "
                               f"continue sealed {out[-1].name()}")
        out.append(m)
    return out, None


def start_of(segments: list[Manifest], first_live: int | None) -> Head:
    """Where the store's walk starts: after the newest segment that ends before its first row."""
    if not first_live or first_live <= 1:
        return Head()
    before = [m for m in segments if m.last_seq < first_live]
    return Head(before[-1].last_seq, before[-1].last_hash) if before else Head()


async def verify_store(store: AuditStore, *, public_key: Ed25519PublicKey | None = None,
                       anchors: Iterable[Checkpoint] = (),
                       progress: Callable[[int, int], None] | None = None,
                       page: int = 20_000) -> Report:
    """Walk the whole log once; `progress(seq, head_seq)` is called after every page."""
    started = time.perf_counter()
    report = Report(signed=public_key is not None)
    segments, bad = parse_segments(await store.segments(), public_key)
    stored = await store.checkpoints()
    head = await store.head()  # read after the checkpoints: every checkpoint is ≤ head
    first = await store.select(Query(limit=1))
    start = start_of(segments, first[0].seq if first else None)
    walk = Walk(Checkpoints([*stored, *anchors, *segments], public_key, start), start)
    if public_key is None and (walk.cps.positions or start.seq):
        report.notes.append("no public key given: checkpoint and sealed segment signatures "
                            "were not checked")
    if start.seq:
        report.notes.append(f"records 1-{start.seq} were pruned after sealing; the walk "
                            f"starts from the signed hash of record {start.seq} (check the "
                            "archive with --archive DIR)")
    if bad is not None:
        report.damage = bad
        return walk.report(report, started)
    return await walk_store(store, walk, Query(upto_seq=head.seq), head, report, started,
                            progress, page)


async def walk_store(store: AuditStore, walk: Walk, query: Query, head: Head, report: Report,
                     started: float, progress: Callable[[int, int], None] | None,
                     page: int) -> Report:
    """Feed the store's records in `query` to `walk`, page by page (`progress(seq,
    head.seq)` after each); the report, with the first damage found, else what the
    checkpoints say lies beyond the walk's end."""
    async for rows in store.scan(query, page=page):
        found = walk.feed(rows)
        if found is not None:
            row, damage = found
            report.damage = damage or walk.diagnose(
                row, await store.select(Query(after_seq=row.seq, limit=4)))
            return walk.report(report, started)
        if progress is not None:
            progress(walk.seq, head.seq)
    report.damage = walk.cps.beyond(walk.seq)
    return walk.report(report, started)

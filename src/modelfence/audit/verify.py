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

Without a public key, checkpoints still catch truncation and re-hashing, but anyone
could have written them; with it, only the holder of the private key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .chain import GENESIS, Row, hash_of, row_hash, us_to_iso
from .checkpoint import Checkpoint
from .store import AuditStore, Query

_SEARCH = 16  # how far a renumbered row's original position is searched


@dataclass(frozen=True, slots=True)
class Damage:
    seq: int
    kind: str
    detail: str


@dataclass(slots=True)
class Report:
    records: int = 0
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

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "last_seq": self.last_seq,
                "checkpoints": self.checkpoints, "last_checkpoint": self.last_checkpoint,
                "unsealed": self.last_seq - self.last_checkpoint if self.ok else None,
                "signatures_checked": self.signed, "seconds": round(self.seconds, 3),
                "records_per_s": round(self.rate),
                "damage": None if self.damage is None else {
                    "seq": self.damage.seq, "kind": self.damage.kind,
                    "detail": self.damage.detail},
                "notes": self.notes}


def diagnose(row: Row, good: Row | None, following: list[Row]) -> Damage:
    """Why `row` breaks the chain after the last good row `good`, given the rows after it."""
    want_seq = good.seq + 1 if good else 1
    want_prev = good.hash if good else GENESIS
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
    if good is None:
        return Damage(row.seq, "deleted", f"record {row.seq} does not start the chain: the "
                      "records before it were removed")
    return Damage(good.seq, "modified", f"record {row.seq} links to a different hash than "
                  f"record {good.seq} has: record {good.seq} was changed and re-hashed")


class _Checkpoints:
    """Stored checkpoints and outside anchors, checked as the walk reaches their position."""

    def __init__(self, items: Iterable[Checkpoint], public: Ed25519PublicKey | None) -> None:
        self.public = public
        self.by_seq: dict[int, list[Checkpoint]] = {}
        for cp in items:
            same = self.by_seq.setdefault(cp.seq, [])
            if cp not in same:
                same.append(cp)
        self.positions = sorted(self.by_seq)
        self.good = 0  # newest position whose checkpoints matched the chain
        self.checked = 0

    def check(self, row: Row) -> Damage | None:
        for cp in self.by_seq[row.seq]:
            problem = cp.problem(self.public)
            if problem is not None:
                return Damage(row.seq, "bad_checkpoint",
                              f"checkpoint at record {row.seq}: {problem}")
            if cp.hash != row.hash:
                return Damage(self.good + 1, "modified", f"the chain up to record {row.seq} no "
                              f"longer matches the checkpoint signed at {us_to_iso(cp.ts_us)}: "
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
                                  f"{last_seq} but the checkpoint signed at "
                                  f"{us_to_iso(cp.ts_us)} covers {seq}: records "
                                  f"{last_seq + 1}-{seq} were removed")
            return Damage(seq, "bad_checkpoint", f"checkpoint at record {seq} is past the end "
                          f"of the log and {self.by_seq[seq][0].problem(self.public)}")
        return None


async def verify_store(store: AuditStore, *, public_key: Ed25519PublicKey | None = None,
                       anchors: Iterable[Checkpoint] = (),
                       progress: Callable[[int, int], None] | None = None,
                       page: int = 20_000) -> Report:
    """Walk the whole log once; `progress(seq, head_seq)` is called after every page."""
    started = time.perf_counter()
    cps = _Checkpoints([*await store.checkpoints(), *anchors], public_key)
    head = await store.head()  # read after the checkpoints: every checkpoint is ≤ head
    report = Report(signed=public_key is not None)
    if public_key is None and cps.positions:
        report.notes.append("no public key given: checkpoint signatures were not checked")
    next_cp = iter([*cps.positions, 0])
    cp_at = next(next_cp)
    seq, prev, good = 0, GENESIS, None
    async for rows in store.scan(Query(upto_seq=head.seq), page=page):
        for row in rows:
            s, ts, rid, pr, te, mo, ac, st, payload, rprev, h = row
            if s != seq + 1 or rprev != prev or row_hash(
                    rprev, s, ts, rid, pr, te, mo, ac, st, payload) != h:
                following = await store.select(Query(after_seq=s, limit=4))
                report.damage = diagnose(row, good, following)
                return _done(report, seq, cps, started)
            seq, prev, good = s, h, row
            if s == cp_at:
                report.damage = cps.check(row)
                if report.damage is not None:
                    return _done(report, seq, cps, started)
                cp_at = next(next_cp)
        if progress is not None:
            progress(seq, head.seq)
    report.damage = cps.beyond(seq)
    return _done(report, seq, cps, started)


def _done(report: Report, seq: int, cps: _Checkpoints, started: float) -> Report:
    report.records = report.last_seq = seq
    report.checkpoints = cps.checked
    report.last_checkpoint = cps.good
    report.seconds = time.perf_counter() - started
    return report

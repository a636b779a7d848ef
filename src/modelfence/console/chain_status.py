"""What the audit page says about the hash chain, cheaply, on every view.

Walking a million records takes seconds, so a page view never does; it checks instead:

* the window: each displayed record's content matches its hash, its `prev` is the hash of
  the record before it, and the record after it links to it (one query for the neighbours);
* the head: the newest signed checkpoint's signature (with the configured public key), that
  the record it names still has the hash it signed, and every record after it up to the
  head, link by link (at most `HEAD_WALK` records: with the default `checkpoint_every` of
  1000 the gap is small);
* the last full verification: the newest `console:audit-verify` record in the log itself
  (so every replica and a restart see it), which an admin starts from the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..audit.chain import Row, hash_of, us_to_iso
from ..audit.store import AuditStore, Query

HEAD_WALK = 5000  # records after the newest checkpoint walked on each view, at most


@dataclass(frozen=True, slots=True)
class WindowCheck:
    """The displayed records: how many were checked and which broke (by position)."""

    checked: int
    broken: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return not self.broken


@dataclass(frozen=True, slots=True)
class HeadCheck:
    """The chain's newest records against its newest signed checkpoint."""

    head_seq: int
    checkpoint_seq: int  # 0: no checkpoint in the store
    checkpoint_time: str | None
    signature: str  # "verified", "not checked (no public key configured)", or the problem
    walked: int  # records after the checkpoint checked link by link
    problem: str | None  # None: every check passed

    @property
    def ok(self) -> bool:
        return self.problem is None


async def check_window(store: AuditStore, rows: list[Row]) -> WindowCheck:
    """Each row's own hash, and its links to the records on either side of it."""
    if not rows:
        return WindowCheck(0, ())
    by_seq = {r.seq: r for r in rows}
    wanted = {s for r in rows for s in (r.seq - 1, r.seq + 1) if s >= 1 and s not in by_seq}
    if wanted:
        near = await store.select(Query(seqs=tuple(sorted(wanted)), limit=len(wanted)))
        by_seq.update({r.seq: r for r in near})
    oldest = await store.select(Query(limit=1))  # retention may have pruned before it
    first = oldest[0].seq if oldest else 1
    broken = [r.seq for r in rows if not _linked(r, by_seq, first)]
    return WindowCheck(len(rows), tuple(sorted(broken)))


def _linked(row: Row, by_seq: dict[int, Row], first: int) -> bool:
    if hash_of(row) != row.hash:
        return False
    before = by_seq.get(row.seq - 1)
    if row.seq > first and (before is None or before.hash != row.prev):
        return False  # a missing predecessor after the oldest record is a gap
    after = by_seq.get(row.seq + 1)
    return after is None or after.prev == row.hash  # no successor: this is the head


async def check_head(store: AuditStore, public: Ed25519PublicKey | None) -> HeadCheck:
    """The newest checkpoint, and the records after it walked up to the head."""
    head = await store.head()
    cp = await store.newest_checkpoint()
    if cp is None:
        rows = await store.select(Query(newest_first=True, limit=HEAD_WALK))
        rows.reverse()
        return HeadCheck(head.seq, 0, None, "no checkpoint in the store", len(rows),
                         _walk(rows))
    problem = None
    if public is None:
        signature = "not checked (no public key configured)"
    else:
        signature = cp.problem(public) or "verified"
        if signature != "verified":
            problem = f"the checkpoint at record {cp.seq}: {signature}"
    rows = await store.select(Query(after_seq=cp.seq - 1, upto_seq=cp.seq + HEAD_WALK,
                                    limit=HEAD_WALK + 1))
    if not rows or rows[0].seq != cp.seq or rows[0].hash != cp.hash:
        problem = problem or (f"record {cp.seq} no longer has the hash its checkpoint signed: "
                              "run a full verification")
    problem = problem or _walk(rows)
    return HeadCheck(head.seq, cp.seq, us_to_iso(cp.ts_us)[:19], signature, max(len(rows) - 1, 0),
                     problem)


def _walk(rows: list[Row]) -> str | None:
    """Why consecutive `rows` do not form a chain, or None."""
    if rows and hash_of(rows[0]) != rows[0].hash:
        return f"record {rows[0].seq}'s content no longer matches its hash"
    for before, row in pairwise(rows):
        if row.seq != before.seq + 1:
            return f"records {before.seq + 1}-{row.seq - 1} are missing"
        if row.prev != before.hash or hash_of(row) != row.hash:
            return f"record {row.seq} does not continue the chain: run a full verification"
    return None

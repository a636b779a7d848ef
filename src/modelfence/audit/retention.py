"""Retention that keeps the chain verifiable: seal old records into signed segments, prune them.

* `seal` verifies the records after the newest sealed segment (links, hashes, stored
  checkpoints), writes them to compressed archives of at most `segment_records` each with
  a manifest signed by the checkpoint key (segment.py), and records each manifest in the
  store. It refuses to seal a chain that does not verify: sealing would launder damage.
* `prune` deletes from the store only whole sealed segments whose archive verifies (the
  file is the one the manifest signed, its records chain from `prev_hash` to `last_hash`,
  and the store's record at `last_seq` has that hash), oldest first, one transaction per
  segment, and never the chain's head. A crash between segments leaves the store starting
  at a segment boundary, which `audit verify` accepts.
* `verify_archive` walks the archived segments in a folder and then the live store after
  them, as one chain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import RetentionRefused
from .chain import Head, Row
from .checkpoint import Checkpoint, Signer
from .segment import Manifest, SegmentWriter, manifest_path, manifests_in, read_segment
from .store import AuditStore, Query
from .verify import Checkpoints, Damage, Report, Walk, parse_segments, start_of, walk_store

Progress = Callable[[int, int], None]  # (records done, records in all)


@dataclass(slots=True)
class Sealed:
    segments: list[Manifest] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def records(self) -> int:
        return sum(m.records for m in self.segments)

    @property
    def bytes(self) -> int:
        return sum(m.size for m in self.segments)


@dataclass(slots=True)
class Pruned:
    segments: list[Manifest] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0
    kept: str | None = None  # why pruning stopped before what was asked


def _now_us() -> int:
    return time.time_ns() // 1000


def _refuse(what: str, d: Damage) -> RetentionRefused:
    return RetentionRefused(f"{what}: record {d.seq}: {d.kind} — {d.detail}")


async def seal(store: AuditStore, signer: Signer, folder: Path, *, through: int | None = None,
               segment_records: int = 100_000, page: int = 20_000,
               progress: Progress | None = None) -> Sealed:
    """Seal the records after the newest sealed segment up to `through`, the last segment
    possibly short; without `through`, only whole segments of `segment_records` (so that a
    seal run from cron does not cut a small segment each time)."""
    started = time.perf_counter()
    segments, bad = parse_segments(await store.segments(), signer.public)
    if bad is not None:
        raise _refuse("refusing to seal: the store's sealed segments do not verify", bad)
    stored = await store.checkpoints()
    head = await store.head()
    start = Head(segments[-1].last_seq, segments[-1].last_hash) if segments else Head()
    target = head.seq if through is None else min(through, head.seq)
    if through is None:
        target = start.seq + (target - start.seq) // segment_records * segment_records
    out = Sealed()
    if target <= start.seq:
        return out
    walk = Walk(Checkpoints([*stored, *segments], signer.public, start), start)
    writer: SegmentWriter | None = None
    try:
        async for rows in store.scan(Query(after_seq=start.seq, upto_seq=target), page=page):
            found = walk.feed(rows)
            if found is not None:
                row, damage = found
                raise _refuse("refusing to seal a damaged chain", damage or walk.diagnose(
                    row, await store.select(Query(after_seq=row.seq, limit=4))))
            i = 0
            while i < len(rows):
                if writer is None:
                    writer = SegmentWriter(folder, rows[i].seq, rows[i].prev)
                take = rows[i:i + segment_records - writer.count]
                writer.add(take)
                i += len(take)
                if writer.count >= segment_records:
                    out.segments.append(await _register(store, writer, signer))
                    writer = None
            if progress is not None:
                progress(walk.seq - start.seq, target - start.seq)
        if walk.seq != target:
            raise RetentionRefused(f"refusing to seal: records {walk.seq + 1}-{target} are "
                                   "missing from the store")
        if writer is not None:
            out.segments.append(await _register(store, writer, signer))
            writer = None
    finally:
        if writer is not None:
            writer.abandon()
    out.seconds = time.perf_counter() - started
    return out


async def _register(store: AuditStore, writer: SegmentWriter, signer: Signer) -> Manifest:
    """Archive and manifest in place first, then the store's copy: a crash in between
    leaves files the next seal adopts, never a store that names a missing archive."""
    m = writer.finish(signer, _now_us())
    await store.add_segment(m.first_seq, m.last_seq, m.to_json())
    return m


async def prune(store: AuditStore, public: Ed25519PublicKey, folder: Path, *,
                through: int | None = None, older_than_us: int | None = None,
                progress: Progress | None = None) -> Pruned:
    """Delete sealed segments ending at or before `through` and/or whose newest record is
    older than `older_than_us`, oldest first, each only once its archive verifies."""
    started = time.perf_counter()
    segments, bad = parse_segments(await store.segments(), public)
    if bad is not None:
        raise _refuse("refusing to prune: the store's sealed segments do not verify", bad)
    head = await store.head()
    first = await store.select(Query(limit=1))
    live_from = first[0].seq if first else head.seq + 1
    wanted: list[Manifest] = []
    out = Pruned()
    for m in segments:
        if m.last_seq < live_from:
            continue  # pruned before
        if ((through is not None and m.last_seq > through)
                or (older_than_us is not None and m.last_time_us >= older_than_us)):
            break
        if m.last_seq >= head.seq:
            out.kept = (f"sealed {m.name()} ends at the chain's head, which stays in the "
                        "store until a newer record links to it")
            break
        wanted.append(m)
    total = sum(m.last_seq - max(m.first_seq, live_from) + 1 for m in wanted)
    for m in wanted:
        await _check_archive(store, folder, m, public)
        out.rows += await store.delete_through(m.last_seq)
        out.segments.append(m)
        if progress is not None:
            progress(out.rows, total)
    out.seconds = time.perf_counter() - started
    return out


async def _check_archive(store: AuditStore, folder: Path, m: Manifest,
                         public: Ed25519PublicKey) -> None:
    """RetentionRefused unless the archive proves exactly the store's records of `m`."""
    path = manifest_path(folder, m)
    try:
        on_disk = Manifest.from_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RetentionRefused(f"refusing to prune {m.name()}: {path}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    if on_disk != m:
        raise RetentionRefused(f"refusing to prune {m.name()}: {path} differs from the "
                               "manifest the store keeps")
    try:
        walk, damage = _walk_segment(folder, m, public, following=False)
    except ValueError as exc:
        raise RetentionRefused(f"refusing to prune: {exc}") from None
    if damage is not None:
        raise _refuse(f"refusing to prune {m.name()}: its archive does not verify", damage)
    if walk.seq != m.last_seq:
        raise RetentionRefused(f"refusing to prune {m.name()}: its archive ends at record "
                               f"{walk.seq}")
    live = await store.select(Query(after_seq=m.last_seq - 1, limit=1))
    if not live or live[0].seq != m.last_seq or live[0].hash != m.last_hash:
        raise RetentionRefused(f"refusing to prune {m.name()}: the store's record "
                               f"{m.last_seq} does not have the hash the archive ends with")


async def verify_archive(store: AuditStore, folder: Path, *,
                         public_key: Ed25519PublicKey | None = None,
                         anchors: Iterable[Checkpoint] = (),
                         progress: Progress | None = None, page: int = 20_000) -> Report:
    """The archived segments in `folder` whose records were pruned, then the live records
    after them, as one chain; archived segments still live are checked on their own and
    act as checkpoints of the live records."""
    started = time.perf_counter()
    report = Report(signed=public_key is not None)
    archived: list[Manifest] = []
    for path, m in manifests_in(folder):
        if isinstance(m, str):
            report.damage = Damage(0, "bad_segment", f"{path}: {m}")
            return report
        archived.append(m)
    archived.sort(key=lambda m: m.first_seq)
    kept, bad = parse_segments(await store.segments(), public_key)
    if bad is None:
        bad = _disagreement(archived, kept)
    stored = await store.checkpoints()
    head = await store.head()
    first = await store.select(Query(limit=1))
    live_from = first[0].seq if first else head.seq + 1
    pruned = [m for m in archived if m.last_seq < live_from]
    start = (Head(pruned[0].first_seq - 1, pruned[0].prev_hash) if pruned
             else start_of(kept, live_from))
    walk = Walk(Checkpoints([*stored, *anchors, *kept, *archived], public_key, start), start)
    if not archived:
        report.notes.append(f"{folder} holds no sealed segments")
    elif start.seq:
        report.notes.append(f"the walk starts at record {start.seq + 1}, from the hash "
                            f"a sealed segment signed for record {start.seq}")
    if public_key is None:
        report.notes.append("no public key given: manifest and checkpoint signatures were "
                            "not checked")
    report.damage = bad or _check_live_segments(folder, archived[len(pruned):], public_key)
    if report.damage is not None:
        return walk.report(report, started)
    for m in pruned:
        problem = m.problem(public_key)
        if problem is not None:
            report.damage = Damage(m.first_seq, "bad_segment", f"sealed {m.name()}: {problem}")
            return walk.report(report, started)
        try:
            for rows in read_segment(folder, m, page):
                found = walk.feed(rows)
                if found is not None:
                    report.damage = found[1] or walk.diagnose(found[0], _after(rows, found[0]))
                    return walk.report(report, started)
        except ValueError as exc:
            report.damage = Damage(m.first_seq, "bad_archive", str(exc))
            return walk.report(report, started)
        if progress is not None:
            progress(walk.seq, head.seq)
    return await walk_store(store, walk, Query(after_seq=walk.seq, upto_seq=head.seq), head,
                            report, started, progress, page)


def _check_live_segments(folder: Path, segments: list[Manifest],
                         public: Ed25519PublicKey | None) -> Damage | None:
    """Archives of records the store still holds: each must be whole on its own (the live
    walk then compares the store's records with their signed last hash)."""
    for m in segments:
        problem = m.problem(public)
        if problem is not None:
            return Damage(m.first_seq, "bad_segment", f"sealed {m.name()}: {problem}")
        try:
            walk, damage = _walk_segment(folder, m, public, following=True)
        except ValueError as exc:
            return Damage(m.first_seq, "bad_archive", str(exc))
        if damage is not None:
            return damage
        if walk.seq != m.last_seq:
            return Damage(walk.seq + 1, "bad_archive", f"sealed {m.name()}: its archive ends "
                          f"at record {walk.seq}")
    return None


def _walk_segment(folder: Path, m: Manifest, public: Ed25519PublicKey | None, *,
                  following: bool) -> tuple[Walk, Damage | None]:
    """Walk one sealed segment's archive on its own, from the hash it continues and against
    its own manifest; the walk, and the first damage (diagnosed with the rows after the bad
    one when `following`). An unreadable archive raises ValueError."""
    start = Head(m.first_seq - 1, m.prev_hash)
    walk = Walk(Checkpoints([m], public, start), start)
    for rows in read_segment(folder, m):
        found = walk.feed(rows)
        if found is not None:
            row, damage = found
            return walk, damage or walk.diagnose(row, _after(rows, row) if following else [])
    return walk, None


def _after(rows: list[Row], row: Row) -> list[Row]:
    i = rows.index(row)
    return rows[i + 1:i + 5]


def _disagreement(archived: list[Manifest], kept: list[Manifest]) -> Damage | None:
    """A manifest in the folder that is not the one the store keeps for the same records."""
    by_range = {(m.first_seq, m.last_seq): m for m in kept}
    for m in archived:
        mine = by_range.get((m.first_seq, m.last_seq))
        if mine is not None and mine != m:
            return Damage(m.first_seq, "bad_segment", f"the archive's manifest of {m.name()} "
                          "differs from the one the store keeps")
    return None

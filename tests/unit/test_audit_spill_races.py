"""Processes sharing a spill folder (review finding 6): no segment replayed twice, none
deleted while another process is making it.

The two "processes" are two `Spill`s on separate open file descriptions: `flock` locks
conflict between those exactly as between processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelfence.audit import spill as spill_mod
from modelfence.audit.chain import entry_from_dict
from modelfence.audit.spill import Spill
from modelfence.kernel.files import try_lock

from .test_audit_chain import Rec


async def a_left_segment(folder: Path, n: int) -> None:
    """A stopped gateway's segment holding `n` records."""
    left = Spill(folder, 1 << 20)
    await left.open()
    assert await left.append([entry_from_dict(Rec(i).to_dict(), now=0) for i in range(n)])
    left._own = None  # it stops without removing its segment
    for s in left._segments:
        s.file.close()


async def test_a_segment_replayed_and_removed_meanwhile_is_not_adopted_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "spill"
    await a_left_segment(folder, 3)
    first = Spill(folder, 1 << 20)
    await first.open()  # adopts it
    entries, _ = await first.peek(10)
    assert len(entries) == 3
    real_lock = try_lock

    def lock_after_the_replay(file):  # type: ignore[no-untyped-def]
        # the second process opened the segment; before it locks, the first finishes it
        if first.records:
            seg = first._segments[0]
            Spill._advance(seg, seg.size, 0)
            seg.records = 0
        return real_lock(file)

    monkeypatch.setattr(spill_mod, "try_lock", lock_after_the_replay)
    second = Spill(folder, 1 << 20)
    await second.open()
    assert second.empty and second.records == 0  # not replayed a second time
    await second.close()


async def test_a_fully_replayed_segment_says_so_before_it_is_removed(tmp_path: Path) -> None:
    folder = tmp_path / "spill"
    await a_left_segment(folder, 2)
    first = Spill(folder, 1 << 20)
    await first.open()
    path = first._segments[0].path
    early = path.open("rb")  # another process opened it before the unlink
    await first.peek(10)
    await first.done()
    assert not path.exists()
    data = early.read()
    early.close()
    assert int.from_bytes(data[8:16], "big") == len(data)  # its offset: replayed to the end
    await first.close()


async def test_a_segment_being_made_is_not_removed_by_another_process(tmp_path: Path) -> None:
    folder = tmp_path / "spill"
    folder.mkdir()
    fresh = folder / "spill-9-9-a.tmp"  # created, not yet locked by its living writer
    fresh.write_bytes(b"")
    stale = folder / "spill-1-1-b.tmp"  # its writer died long ago
    stale.write_bytes(b"")
    os.utime(stale, (1, 1))
    other = Spill(folder, 1 << 20)
    await other.open()
    assert fresh.exists() and not stale.exists()
    await other.close()


async def test_a_new_segment_whose_lock_is_taken_is_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    real_lock = try_lock

    def busy_once(file):  # type: ignore[no-untyped-def]
        calls.append(True)
        return False if len(calls) == 1 else real_lock(file)  # a cleaner held the first

    monkeypatch.setattr(spill_mod, "try_lock", busy_once)
    spill = Spill(tmp_path / "spill", 1 << 20)
    await spill.open()
    assert await spill.append([entry_from_dict(Rec(0).to_dict(), now=0)])
    assert len(calls) == 2  # the first name was abandoned, a second one locked
    logs = list((tmp_path / "spill").glob("spill-*.log"))
    assert len(logs) == 1 and spill._own is not None and logs[0] == spill._own.path
    await spill.close()

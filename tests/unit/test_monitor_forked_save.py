"""A monitor's save in a forked child (`monitor/forked.py`): the state when it began, while
requests keep changing it; a failing child reported and the next save retried; no child left
running or unreaped; the in-process copy where no child can be made."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from modelfence.errors import StoreError
from modelfence.monitor import Monitor, forked
from modelfence.monitor.replication import LocalLog

from .test_monitor_memory import T0, assert_same_snapshot, fresh_rows, populated, summary

pytestmark = pytest.mark.skipif(not forked.available(), reason="saves fork on Linux only")


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The pids of the children the saves fork."""
    pids: list[int] = []
    real = os.fork

    def fork() -> int:
        pid = real()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    yield pids


def gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether `pid` has exited and been reaped (a zombie keeps its /proc entry)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.02)
    return False


async def save_while_changing(monitor: Monitor) -> tuple[bytes, int]:
    """A save, with requests changing callers (known and new) until it is done."""
    x, p = fresh_rows(400, 11)
    task = asyncio.ensure_future(monitor.snapshot_async(callers=1))
    await asyncio.sleep(0)  # the save begins (a task runs at the loop's next turn)
    changes = 0
    while not task.done():
        who = ("one", "many", "forty", f"new-{changes}")[changes % 4]
        i = changes % len(x)
        monitor.observe(who, x[i:i + 1], p[i:i + 1], tenant="org", now=T0 + 900 + changes)
        changes += 1
        await asyncio.sleep(0)
    return task.result(), changes


async def test_a_forked_save_is_the_state_when_it_began(forks: list[int]) -> None:
    monitor = populated()
    before = monitor.snapshot()
    during, changes = await save_while_changing(monitor)
    assert len(forks) == 1 and gone(forks[0])
    assert changes > 0 and monitor.risk("new-3").queries >= 1  # the state did change...
    assert_same_snapshot(during, before)  # ...after the save began
    assert monitor.snapshot() != before and not monitor._captures


async def test_without_a_child_the_save_copies_in_process(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def no_fork() -> int:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(os, "fork", no_fork)
    monitor = populated()
    before = monitor.snapshot()
    with caplog.at_level(logging.WARNING, "modelfence.monitor"):
        during, changes = await save_while_changing(monitor)
    assert changes > 1  # copied a caller per turn of the loop
    assert_same_snapshot(during, before)
    assert "cannot fork (Cannot allocate memory); saving in this process" in caplog.text


def failing_when(flag: Path) -> Callable[[Monitor, BinaryIO], None]:
    real = Monitor._encode_to

    def encode_to(self: Monitor, out: BinaryIO) -> None:
        if flag.exists():  # read in the child: the test's memory is not its
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, out)

    return encode_to


async def test_a_failing_child_is_reported_and_the_next_save_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        forks: list[int]) -> None:
    flag = tmp_path / "fail"
    flag.touch()
    monkeypatch.setattr(Monitor, "_encode_to", failing_when(flag))
    monitor = populated()
    want = monitor.snapshot()
    with pytest.raises(StoreError, match=r"saving process failed \(OSError: .*No space left"):
        await monitor.snapshot_async()
    assert gone(forks[0])

    def restore(_model: str, data: bytes) -> None:
        raise AssertionError("nothing to restore")

    async def snapshot(_model: str) -> bytes:
        return await monitor.snapshot_async()

    folder = tmp_path / "state"
    saved = folder / "m.monitor-state"
    log = LocalLog(["m"], "r", lambda obs, mine: None, snapshot, restore, interval_s=0.01,
                   state_dir=folder)
    with caplog.at_level(logging.WARNING, "modelfence.monitor"):
        task = asyncio.ensure_future(log._every(0.01, log._save))
        try:
            while "monitor snapshot failed: StoreError" not in caplog.text:
                await asyncio.sleep(0.01)
            assert not saved.exists()
            flag.unlink()  # the disk has room again: the next periodic save succeeds
            deadline = time.monotonic() + 30
            while not saved.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert "saving process failed (OSError: [Errno 28] No space left on device)" in caplog.text
    assert_same_snapshot(saved.read_bytes(), want)
    assert len(forks) >= 3 and all(gone(pid) for pid in forks)


async def test_a_cancelled_save_kills_and_reaps_its_child(
        monkeypatch: pytest.MonkeyPatch, forks: list[int]) -> None:
    def stuck(self: Monitor, out: BinaryIO) -> None:
        time.sleep(60)

    monkeypatch.setattr(Monitor, "_encode_to", stuck)
    task = asyncio.ensure_future(Monitor(summary()).snapshot_async())
    while not forks:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone(forks[0], within_s=5.0)  # killed, not left to write a stale state later

"""The monitor's periodic save keeps its distance: never sooner than ten times its last run,
so a big book's save cannot run back to back."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

from modelfence.monitor.replication import SAVE_SPACING, ObservationLog


async def test_a_slow_save_waits_ten_times_its_length_before_the_next() -> None:
    starts: list[float] = []

    async def save() -> None:
        starts.append(time.monotonic())
        await asyncio.sleep(0.05)  # a save of 50 ms

    task = asyncio.ensure_future(ObservationLog._every(0.01, save))
    try:
        await asyncio.sleep(1.2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) >= 2  # it ran again
    assert all(gap >= 0.05 + SAVE_SPACING * 0.05 * 0.95 for gap in gaps), gaps


async def test_a_quick_save_keeps_the_configured_interval() -> None:
    starts: list[float] = []

    async def save() -> None:
        starts.append(time.monotonic())

    task = asyncio.ensure_future(ObservationLog._every(0.05, save))
    try:
        await asyncio.sleep(0.4)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(starts) >= 5  # every 50 ms, not slowed by a spacing it does not need

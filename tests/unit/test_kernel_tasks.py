"""Stopping background tasks: all cancelled, all ended before `cancel` returns."""

from __future__ import annotations

import asyncio

from modelfence.kernel.tasks import cancel


async def test_every_task_is_cancelled_and_has_ended_on_return() -> None:
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            ended.append(name)

    a = asyncio.create_task(forever("a"))
    b = asyncio.create_task(forever("b"))
    await asyncio.sleep(0)
    await cancel(a, None, b)  # None: a task that was never started
    assert sorted(ended) == ["a", "b"]
    assert a.cancelled() and b.cancelled()


async def test_a_task_already_done_is_fine_and_nothing_reaches_the_caller() -> None:
    async def quick() -> None:
        return None

    done = asyncio.create_task(quick())
    await done
    await cancel(done)
    await cancel()
    assert done.done() and not done.cancelled()

"""Stopping the background tasks features run (key refresh, alert delivery, probes)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel each task (None: not started) and wait until all have ended, so nothing they
    hold is closed under them; their cancellation does not reach the caller."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task

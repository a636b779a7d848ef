"""A store's readiness check, bounded: one that hangs or raises says no (gateway/readiness.py
runs each store's and model's check this way, at once, so readiness answers within a
Kubernetes probe's default 1 s timeout even while a store hangs)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

StoreCheck = Callable[[], Awaitable[bool]]


async def answers(check: StoreCheck, timeout_s: float) -> bool:
    """Whether `check` says yes within `timeout_s`: one that raises or hangs says no."""
    try:
        async with asyncio.timeout(timeout_s):
            return bool(await check())
    except Exception:  # a check that cannot answer is a store that is not ready
        return False

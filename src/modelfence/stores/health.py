"""Readiness of the stores: every check at once, each bounded, so that readiness answers
within a Kubernetes probe's default 1 s timeout even while a store hangs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

StoreCheck = Callable[[], Awaitable[bool]]

#: the longest one store check may take; past it the store counts as not ready
CHECK_TIMEOUT_S = 0.5


async def answers(check: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    """Whether `check` says yes within `timeout_s`: one that raises or hangs says no."""
    try:
        async with asyncio.timeout(timeout_s):
            return bool(await check())
    except Exception:  # a check that cannot answer is a store that is not ready
        return False


async def stores_not_ready(checks: Sequence[tuple[str, StoreCheck]], *,
                           timeout_s: float = CHECK_TIMEOUT_S) -> list[str]:
    """Names of the stores whose check failed, raised or took longer than `timeout_s`."""
    results = await asyncio.gather(*(answers(check, timeout_s) for _, check in checks))
    return [name for (name, _), ok in zip(checks, results, strict=True) if not ok]

"""The one lifecycle every store shares: opened when the gateway starts, closed when it stops."""

from __future__ import annotations

from abc import ABC
from collections.abc import Awaitable

from ..errors import StoreError


class Store(ABC):  # noqa: B024 (a base for interfaces; it has no abstract method of its own)
    """Base of the key, budget, audit and watermark evidence store interfaces: `open` and
    `close` do nothing unless a backend has a connection or a file to manage."""

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def answers(read: Awaitable[object]) -> bool:
    """Readiness: whether `read` (a cheap read of a store) completes; a `StoreError` means
    the store cannot answer."""
    try:
        await read
    except StoreError:
        return False
    return True

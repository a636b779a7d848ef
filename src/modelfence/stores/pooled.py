"""The shared half of every PostgreSQL-backed store (keys, budgets, watermark evidence): its
pool opened with the schema, its breaker, its close, and one guarded call on a pooled
connection. Each store keeps only its SQL and the way it names itself in errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..errors import StoreError
from .breaker import Breaker
from .postgres import open_pool, pool_breaker

T = TypeVar("T")


class PooledPostgres:
    """Mixed into a store class ahead of its interface: `open` and `close` for the pool, and
    `_on_pool` for a call. Errors name the store as `what` ("postgresql key store") and
    carry `store` (which 503 a client sees)."""

    _pool: Any
    _breaker: Breaker
    _timeout: float

    def _pool_setup(self, url: str, *, store: str, what: str, timeout_s: float, max_size: int,
                    schema_lock: int, schema: Sequence[str], unreachable: str = " unreachable: "
                    ) -> None:
        """`unreachable` joins `what` and the error's class in the message of a failed open."""
        self._url = url
        self._timeout = timeout_s
        self._pool = None
        self._store, self._what, self._unreachable = store, what, unreachable
        self._max_size, self._schema_lock, self._schema = max_size, schema_lock, tuple(schema)
        self._breaker = pool_breaker(store, what, lambda: self._pool)

    async def open(self) -> None:
        try:
            pool = await open_pool(self._url, max_size=self._max_size, timeout_s=self._timeout,
                                   schema_lock=self._schema_lock, schema=self._schema)
        except Exception as exc:
            raise StoreError(f"{self._what}{self._unreachable}{exc.__class__.__name__}",
                             store=self._store) from None
        self._pool = pool

    async def close(self) -> None:
        await self._breaker.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _on_pool(self, work: Callable[[Any], Awaitable[T]], *, not_open: str,
                       timeout_s: float | None = None) -> T:
        """`work(connection)` on a pooled connection, through the breaker. An error that is
        not an outage (a constraint, bad data) fails this call only, as a `StoreError`."""
        if self._pool is None:
            raise StoreError(not_open, store=self._store)
        pool = self._pool

        async def run() -> T:
            async with pool.connection() as conn:
                return await work(conn)

        try:
            return await self._breaker.run(run, timeout_s=timeout_s or self._timeout)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{self._what}: {exc.__class__.__name__}",
                             store=self._store) from None

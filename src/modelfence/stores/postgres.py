"""Opening a PostgreSQL store: one pool, its schema created once however many replicas start.

Every PostgreSQL-backed store (keys, budgets, watermark evidence) opens the same way, so the
same two lessons live here once: `reconnect_timeout` gives up a reconnect loop early (the
pool's backoff doubles without bound, so after a long outage it would wait as long again;
giving up lets the next request start a fresh attempt at once), and schema creation runs
under a transaction-scoped advisory lock (replicas starting together would race on CREATE
TABLE and fail with UniqueViolation).

psycopg comes with the `postgres` extra: each store checks for it when it is built, at
start (`require_extra`), so a postgresql:// URL on a base install is one line naming the
extra, not an ImportError when the store opens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import StoreError
from ..extras import require
from .breaker import Breaker
from .outages import postgres_outage

#: What a PostgreSQL store imports (the `postgres` extra).
MODULES = ("psycopg", "psycopg_pool")


def require_extra(what: str) -> None:
    """Raise ConfigurationError naming the `postgres` extra unless psycopg and its pool are
    installed; `what` ("postgresql key store") names the store. Imports nothing."""
    require("postgres", what, *MODULES)


async def open_pool(url: str, *, max_size: int, timeout_s: float, schema_lock: int,
                    schema: Sequence[str]) -> Any:
    """An open `AsyncConnectionPool` with `schema` applied; raises what psycopg raised."""
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(url, min_size=1, max_size=max_size, open=False,
                               timeout=timeout_s, reconnect_timeout=timeout_s,
                               kwargs={"autocommit": True})
    try:
        await pool.open(wait=True, timeout=timeout_s)
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema_lock,))
            for statement in schema:
                await conn.execute(statement)
    except BaseException:
        await pool.close()
        raise
    return pool


def pool_breaker(store: str, what: str, pool: Callable[[], Any]) -> Breaker:
    """The breaker of a store on a psycopg pool: only a lost connection opens it (a refused
    statement fails its own call), and its probe asks the pool for `SELECT 1`, so the
    breaker closes only once the pool itself can serve again.

    Every pooled store makes its breaker when it is built, so its extra is checked here."""
    require_extra(what)

    async def probe() -> None:
        current = pool()
        if current is None:
            raise StoreError(f"{what} is not open", store=store)
        async with current.connection() as conn:
            await conn.execute("SELECT 1")

    return Breaker(store, what, probe, outage=postgres_outage)

"""A circuit breaker per store: an outage costs each request microseconds and the log two lines.

Without it every request that needs a store that is down waits for its own timeout (3 s for
a pooled PostgreSQL connection), throughput collapses to what the timeouts let through, and
each refusal writes an ERROR line. With it:

- the first failure that looks like an outage (connection refused or reset, a timeout) opens
  the breaker, and the calls already waiting on the store are cut at once (their deadlines are
  moved to now), so no request waits for a timeout that a failure has already answered;
- while it is open, calls are refused before they touch the store (`StoreError` with
  `reported=True`: the outage is logged here once, so callers count refusals and stay quiet);
- a background probe (the first at once, then every `probe_every_s`) closes it as soon as the
  store answers, so recovery needs no request to volunteer for a timeout;
- one line when the outage starts (ERROR, or WARNING where the caller carries on without the
  store) and one INFO line when it ends, with how long it lasted and how many calls it refused.

Errors that are not outages (a constraint violation, bad SQL) pass through and open nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import StoreError

log = logging.getLogger("modelfence.stores")

T = TypeVar("T")

Probe = Callable[[], Awaitable[object]]


class Breaker:
    """Closed while `what` answers; open from its first outage-like failure until `probe` passes.

    `outage` names the exception types that mean the store cannot answer; `consequence` ends
    the outage's log line (what requests get meanwhile).
    """

    def __init__(self, store: str, what: str, probe: Probe, *,
                 outage: tuple[type[BaseException], ...] = (OSError, TimeoutError),
                 consequence: str = "requests that need it are refused",
                 level: int = logging.ERROR, probe_every_s: float = 0.25,
                 probe_timeout_s: float = 1.0) -> None:
        self.store = store
        self.what = what
        self._probe = probe
        self._outage: tuple[type[BaseException], ...] = (*outage, TimeoutError)
        self._consequence = consequence
        self._level = level
        self._every = probe_every_s
        self._probe_timeout = probe_timeout_s
        self._down_since: float | None = None
        self._refused = 0
        self._inflight: set[asyncio.Timeout] = set()
        self._prober: asyncio.Task[None] | None = None
        self.outages = 0

    @property
    def is_open(self) -> bool:
        return self._down_since is not None

    async def run(self, op: Callable[[], Awaitable[T]], *, timeout_s: float) -> T:
        """`op()` within `timeout_s`; `StoreError` at once while the store is down."""
        self.check()
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                self._inflight.add(deadline)
                try:
                    return await op()
                finally:
                    self._inflight.discard(deadline)
        except self._outage as exc:
            self.failed(exc)
            raise StoreError(f"{self.what} unavailable: {exc.__class__.__name__}",
                             store=self.store, reported=True) from None

    def check(self) -> None:
        """Raise at once (counted, not logged) while the breaker is open."""
        if self._down_since is not None:
            self._refused += 1
            raise StoreError(f"{self.what} unavailable for "
                             f"{time.monotonic() - self._down_since:.1f} s",
                             store=self.store, reported=True)

    def failed(self, exc: BaseException) -> None:
        """Open the breaker (once per outage), cut the waiting calls, start the probe."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self._refused = 0
        self.outages += 1
        log.log(self._level, "%s failed (%s); %s until it answers again", self.what,
                exc.__class__.__name__, self._consequence)
        now = asyncio.get_running_loop().time()
        for deadline in list(self._inflight):
            when = deadline.when()
            if when is None or when > now:
                deadline.reschedule(now)
        self._prober = asyncio.get_running_loop().create_task(self._until_it_answers())

    async def close(self) -> None:
        """Stop the probe (the store is closing)."""
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober

    async def _until_it_answers(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._probe_timeout):
                    await self._probe()
            except Exception:  # the probe failed: the outage goes on
                await asyncio.sleep(self._every)
                continue
            break
        assert self._down_since is not None
        took = time.monotonic() - self._down_since
        self._down_since = None
        self._prober = None
        log.info("%s answers again after %.1f s; %d calls were refused meanwhile without "
                 "waiting (counted in modelfence_store_errors_total)", self.what, took,
                 self._refused)

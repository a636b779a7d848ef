"""A circuit breaker per store: an outage costs each request microseconds and the log two lines.

Without it every request that needs a store that is down waits for its own timeout (3 s for
a pooled PostgreSQL connection), throughput collapses to what the timeouts let through, and
each refusal writes an ERROR line. With it:

- the first failure that `outage` calls an outage (connection refused or reset, SQLSTATE
  class 08: stores/outages.py) opens the breaker, and the calls already waiting on the
  store are cut at once (their deadlines are moved to now), so no request waits for a
  timeout that a failure has already answered;
- a call that runs out of time is not an outage by itself (a slow query, a lock held
  elsewhere): it starts one probe, and only if that probe fails too does the breaker open.
  Calls that keep timing out while the probe answers fail one by one, each in its own
  time, and the breaker does not flap between open and closed on them;
- any other error (a value the store refuses, a deadlock, a cancelled statement) fails
  only the call that hit it: `StoreError` for that call, logged as a WARNING at most once
  a minute per error class (with how many there were), counted by whoever catches it;
- while it is open, calls are refused before they touch the store (`StoreError` with
  `reported=True`: the outage is logged here once, so callers count refusals and stay quiet);
- a background probe (the first at once, then every `probe_every_s`) closes it as soon as the
  store answers, so recovery needs no request to volunteer for a timeout;
- one line when the outage starts (ERROR, or WARNING where the caller carries on without the
  store) and one INFO line when it ends, with how long it lasted and how many calls it refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import StoreError
from ..kernel.tasks import cancel

log = logging.getLogger("modelfence.stores")

T = TypeVar("T")

Probe = Callable[[], Awaitable[object]]
Classifier = Callable[[BaseException], bool]

#: at most one WARNING per error class in this many seconds for calls that failed alone
WARN_EVERY_S = 60.0


def os_outage(exc: BaseException) -> bool:
    """The default: a socket-level failure (refused, reset, unreachable) is an outage."""
    return isinstance(exc, OSError) and not isinstance(exc, TimeoutError)


class Breaker:
    """Closed while `what` answers; open from its first outage until `probe` passes.

    `outage` says which exceptions mean the store cannot answer (stores/outages.py);
    `consequence` ends the outage's log line (what requests get meanwhile).
    """

    def __init__(self, store: str, what: str, probe: Probe, *,
                 outage: Classifier = os_outage,
                 consequence: str = "requests that need it are refused",
                 level: int = logging.ERROR, probe_every_s: float = 0.25,
                 probe_timeout_s: float = 1.0) -> None:
        self.store = store
        self.what = what
        self._probe = probe
        self._outage = outage
        self._consequence = consequence
        self._level = level
        self._every = probe_every_s
        self._probe_timeout = probe_timeout_s
        self._down_since: float | None = None
        self._refused = 0
        self._inflight: set[asyncio.Timeout] = set()
        self._prober: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None  # the probe after a timeout
        self._timeouts = 0  # calls that timed out in a row
        self._warned: dict[str, tuple[float, int]] = {}  # class -> (last line, since then)
        self.outages = 0
        self.call_errors = 0  # calls that failed alone (not outages, not refusals)

    @property
    def is_open(self) -> bool:
        return self._down_since is not None

    async def run(self, op: Callable[[], Awaitable[T]], *, timeout_s: float) -> T:
        """`op()` within `timeout_s`; `StoreError` at once while the store is down, and
        `StoreError` (reported) for a call that failed alone."""
        self.check()
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                self._inflight.add(deadline)
                try:
                    result = await op()
                finally:
                    self._inflight.discard(deadline)
        except TimeoutError as exc:
            if self._down_since is not None:  # cut by an outage another call found
                raise self._unavailable(exc) from None
            self._timed_out(exc, timeout_s)
            raise StoreError(f"{self.what} did not answer within {timeout_s:g} s",
                             store=self.store, reported=True) from None
        except Exception as exc:
            if self._down_since is not None or self._outage(exc):
                self.failed(exc)
                raise self._unavailable(exc) from None
            self._timeouts = 0  # the store answered, with an error for this call
            self._call_failed(exc)
            raise StoreError(f"{self.what} refused a call: {exc.__class__.__name__}",
                             store=self.store, reported=True) from None
        self._timeouts = 0
        return result

    def _unavailable(self, exc: BaseException) -> StoreError:
        return StoreError(f"{self.what} unavailable: {exc.__class__.__name__}",
                          store=self.store, reported=True)

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

    def _call_failed(self, exc: BaseException, detail: str = "") -> None:
        """One call failed and the store is not down: a WARNING a minute per error class."""
        self.call_errors += 1
        name = exc.__class__.__name__
        now = time.monotonic()
        last, since = self._warned.get(name, (float("-inf"), 0))
        if now - last < WARN_EVERY_S:
            self._warned[name] = (last, since + 1)
            return
        self._warned[name] = (now, 0)
        more = f"; {since} more since the last such line" if since else ""
        log.warning("%s failed a call (%s%s); that call is refused, the store stays in use "
                    "(one such line a minute per error class, each one counted%s)",
                    self.what, name, detail, more)

    def _timed_out(self, exc: TimeoutError, timeout_s: float) -> None:
        """A slow call fails alone; a probe decides whether the store is down."""
        self._timeouts += 1
        self._call_failed(exc, f" after {timeout_s:g} s, {self._timeouts} in a row")
        if self._checker is None:
            self._checker = asyncio.get_running_loop().create_task(self._check_after_timeout())

    async def _check_after_timeout(self) -> None:
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._probe()
        except Exception as exc:  # the store does not answer a probe either: an outage
            if self._down_since is None:
                self.failed(exc)
        finally:
            self._checker = None

    async def close(self) -> None:
        """Stop the probes (the store is closing)."""
        await cancel(self._prober, self._checker)
        self._prober = self._checker = None

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
        self._timeouts = 0
        log.info("%s answers again after %.1f s; %d calls were refused meanwhile without "
                 "waiting (counted in modelfence_store_errors_total)", self.what, took,
                 self._refused)

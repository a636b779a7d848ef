"""Rate limits per principal, tenant and model, shrinking as the caller's risk rises.

Rates are parsed by the `limits` library. `redis://` (shared by replicas) is its Redis
storage and strategies; `memory://` (one process) is `local.LocalWindows`, the same windows
without `limits`' per-hit lock, expiry task and worker-thread hop. A risky caller pays more
per request (the `risk_curve` cost), so its allowed rate shrinks without a separate
counter. When the storage cannot answer, requests are denied (503) unless `fail_open` is
set — for rate limits only, never for budgets; `memory://` always answers.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import QuotaSettings
from ..errors import ConfigurationError, RateLimited, StoreError
from ..kernel.call import Call
from ..kernel.chain import Guard
from ..stores.breaker import Breaker
from ..stores.outages import redis_outage
from .local import LocalWindows

log = logging.getLogger("modelfence.quota")

_TIMEOUT_S = 1.0  # the longest a rate limit check waits for Redis (its socket timeout)


def risk_cost(risk: float, curve: list[tuple[float, float]]) -> int:
    """The cost of one request at `risk`, linearly interpolated on the curve, rounded up."""
    risk = min(max(risk, 0.0), 1.0)
    if risk <= curve[0][0]:
        return math.ceil(curve[0][1])
    for (r0, c0), (r1, c1) in itertools.pairwise(curve):
        if r0 <= risk <= r1:
            share = 0.0 if r1 == r0 else (risk - r0) / (r1 - r0)
            return math.ceil(c0 + share * (c1 - c0) - 1e-9)
    return math.ceil(curve[-1][1])


@dataclass(frozen=True, slots=True)
class _Item:
    """One rate of a rule, with what each check needs worked out once."""

    limit: Any  # limits.RateLimitItem
    amount: int
    expiry: int
    # the parts of `limits`' key after the caller's identity: one window per caller and
    # rate, shared by rules with the same scope and rate, as `limits` keys them
    key: tuple[int, int, str]


@dataclass(frozen=True, slots=True)
class _Rule:
    scope: str
    items: tuple[_Item, ...]
    models: frozenset[str]
    text: str


def _item(limit: Any) -> _Item:
    return _Item(limit, int(limit.amount), int(limit.get_expiry()),
                 (int(limit.amount), int(limit.multiples), str(limit.GRANULARITY.name)))


class RateLimitGuard(Guard[Call]):
    name: ClassVar[str] = "rate_limit"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "decision"})

    def __init__(self, settings: QuotaSettings,
                 on_fail_open: Callable[[], None] | None = None) -> None:
        from limits import parse_many
        from limits.aio import strategies

        self._settings = settings
        self._pool: Any = None
        self._rules = [_Rule(r.scope, tuple(_item(i) for i in parse_many(r.rate)),
                             frozenset(r.models), r.rate) for r in settings.limits]
        self._on_fail_open = on_fail_open
        # memory:// is this process's own windows: nothing to wait for, nothing to break
        self._local: LocalWindows | None = None
        self._storage: Any = None
        self._limiter: Any = None
        self._breaker: Breaker | None = None
        if settings.storage.startswith("memory://"):
            self._local = LocalWindows(settings.strategy)
            return
        self._storage = self._make_storage(settings.storage, settings.strategy)
        limiter: dict[str, type[Any]] = {
                   "moving-window": strategies.MovingWindowRateLimiter,
                   "fixed-window": strategies.FixedWindowRateLimiter,
                   "sliding-window-counter": strategies.SlidingWindowCounterRateLimiter}
        self._limiter = limiter[settings.strategy](self._storage)
        self._breaker = self._make_breaker(settings)

    def _make_storage(self, url: str, strategy: str) -> Any:
        from limits.aio.storage import RedisStorage

        if url.startswith(("redis://", "rediss://")):
            import redis.asyncio

            # Our own pool, so that `close` can release its connections.
            self._pool = redis.asyncio.ConnectionPool.from_url(
                url, socket_timeout=1.0, socket_connect_timeout=1.0)
            prefix = f"modelfence-{strategy}"  # strategies must not share keys (WRONGTYPE)
            return RedisStorage(f"async+{url}", implementation="redispy", key_prefix=prefix,
                                wrap_exceptions=True, connection_pool=self._pool)
        raise ConfigurationError(f"quotas.storage: unknown scheme {url.split('://')[0]!r}; "
                                 "use memory:// or redis://HOST:PORT/DB")

    def _make_breaker(self, settings: QuotaSettings) -> Breaker:
        """Refuse (or let through, with `fail_open`) at once while the storage is down."""
        async def probe() -> None:
            if not await self._storage.check():
                raise ConnectionError("rate limit storage did not answer")

        return Breaker(
            "ratelimit", "rate limit storage", probe,
            outage=redis_outage,
            consequence=("allowing requests (fail_open)" if settings.fail_open else
                         "requests with rate limits are refused"),
            level=logging.WARNING if settings.fail_open else logging.ERROR)

    async def close(self) -> None:
        if self._breaker is not None:
            await self._breaker.close()
        if self._pool is not None:
            await self._pool.disconnect()

    @property
    def active(self) -> bool:
        return bool(self._rules)

    async def check_storage(self) -> bool:
        if self._breaker is None:
            return True  # memory://: this process's own windows
        if self._breaker.is_open:
            return False
        try:
            return bool(await self._storage.check())
        except Exception:
            return False

    async def on_request(self, call: Call) -> None:
        assert call.principal is not None and call.model is not None
        cost = risk_cost(call.risk, self._settings.risk_curve)
        local = self._local
        for rule in self._rules:
            if rule.models and call.model.name not in rule.models:
                continue
            ident = _identity(rule, call)
            for item in rule.items:
                if local is not None:
                    granted = local.hit((ident, item.key), item.amount, item.expiry, cost)
                else:
                    granted = await self._hit(item, ident, cost)
                if not granted:
                    raise await self._refusal(rule, item, ident, cost)

    async def _hit(self, item: _Item, ident: tuple[str, str], cost: int) -> bool:
        assert self._breaker is not None
        try:
            return bool(await self._breaker.run(
                lambda: self._limiter.hit(item.limit, *ident, cost=cost),
                timeout_s=_TIMEOUT_S))
        except StoreError as exc:  # an outage: its breaker logged it once
            return self._storage_failed(exc)
        except Exception as exc:  # anything else: this call only
            return self._storage_failed(StoreError(
                f"rate limit storage: {exc.__class__.__name__}", store="ratelimit"))

    def _storage_failed(self, exc: StoreError) -> bool:
        if not self._settings.fail_open:
            raise exc
        if self._on_fail_open is not None:
            self._on_fail_open()
        if not exc.reported:
            log.warning("rate limit storage failed (%s); allowing requests (fail_open)", exc)
        return True

    async def _refusal(self, rule: _Rule, item: _Item, ident: tuple[str, str],
                       cost: int) -> RateLimited:
        try:
            if self._local is not None:
                stats = self._local.stats((ident, item.key), item.amount, item.expiry)
            else:
                stats = await self._limiter.get_window_stats(item.limit, *ident)
            reset_s = max(1, math.ceil(stats.reset_time - time.time()))
            remaining = stats.remaining
        except Exception:
            reset_s, remaining = item.expiry, 0
        # the same words whatever the cost: "slowed down for your risk" would tell a thief it
        # was flagged (the audit record carries the caller's risk for operators)
        err = RateLimited(f"rate limit {rule.text} per {rule.scope} reached; "
                          f"retry in {reset_s} s", retry_after_s=reset_s)
        err.extra_headers = {
            "RateLimit-Limit": str(item.amount), "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(reset_s),
            "RateLimit-Policy": f"{item.amount};w={item.expiry}"}
        return err


def _identity(rule: _Rule, call: Call) -> tuple[str, str]:
    assert call.principal is not None and call.model is not None
    if rule.scope == "principal":
        return "principal", call.principal.id
    if rule.scope == "tenant":
        return "tenant", call.principal.tenant
    return "model", call.model.name

"""A cap on the requests one principal, and one tenant, may have in flight at once.

Rate limits count requests over time; they do not stop one caller from holding many
requests open at the same moment (slow bodies, slow upstream answers) and so taking the
connections and worker time every other caller needs. This guard runs right after
identity: beyond `server.max_inflight_per_principal` (or `..._per_tenant`) open requests a
new one is answered 429 with Retry-After before its body is read, and the slot is given
back in the complete phase, which runs for every call, answered, denied or abandoned.

Counts live in this worker process: with `workers: N` a caller may hold up to N times the
cap in the whole server (each worker still protects its own callers).
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar, TypeVar

from ..errors import RateLimited
from ..kernel.call import Call
from ..kernel.chain import Guard

RETRY_AFTER_S = 1
K = TypeVar("K")


class InflightGuard(Guard[Call]):
    """429 beyond the in-flight cap of the caller's principal or tenant; 0 turns a cap off."""

    name: ClassVar[str] = "inflight"
    requires: ClassVar[frozenset[str]] = frozenset({"principal"})

    def __init__(self, *, per_principal: int, per_tenant: int) -> None:
        self._per_principal = per_principal
        self._per_tenant = per_tenant
        self._principals: Counter[tuple[str, str]] = Counter()
        self._tenants: Counter[str] = Counter()
        self._held: dict[str, tuple[tuple[str, str], str]] = {}  # request id → what it holds

    @property
    def active(self) -> bool:
        return self._per_principal > 0 or self._per_tenant > 0

    def in_flight(self, tenant: str, principal: str | None = None) -> int:
        """Requests now held by the principal (or, without one, by the whole tenant)."""
        if principal is None:
            return self._tenants[tenant]
        return self._principals[(tenant, principal)]

    async def on_request(self, call: Call) -> None:
        assert call.principal is not None
        who = (call.principal.tenant, call.principal.id)
        tenant = call.principal.tenant
        if 0 < self._per_principal <= self._principals[who]:
            raise self._refuse(f"principal {who[1]!r}", self._per_principal)
        if 0 < self._per_tenant <= self._tenants[tenant]:
            raise self._refuse(f"tenant {tenant!r}", self._per_tenant)
        self._principals[who] += 1
        self._tenants[tenant] += 1
        self._held[call.request_id] = (who, tenant)

    async def on_complete(self, call: Call) -> None:
        held = self._held.pop(call.request_id, None)
        if held is None:
            return  # refused here or before: it held nothing
        who, tenant = held
        _release(self._principals, who)
        _release(self._tenants, tenant)

    @staticmethod
    def _refuse(whom: str, cap: int) -> RateLimited:
        err = RateLimited(f"too many requests in flight for {whom}: the limit is {cap} at once "
                          f"(per worker); retry when earlier requests have finished",
                          retry_after_s=RETRY_AFTER_S, reason="inflight_limit")
        # this request's body is not read: close the connection rather than wait for it
        err.extra_headers["Connection"] = "close"
        return err


def _release(counts: Counter[K], key: K) -> None:
    counts[key] -= 1
    if counts[key] <= 0:  # an idle caller leaves no entry behind
        del counts[key]

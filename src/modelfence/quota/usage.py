"""Per-principal, per-model query counts: a policy input (`context.queries`).

The count is what the caller had answered by that model: the rows of each OIP inference,
one per `/v1` request (chat, completion, embeddings). With a budget store (`quotas.budgets`
set) it lives there, shared by workers and replicas and kept across restarts; without one
it is this process's own count, which restarts at zero and which each worker and replica
keeps apart, so start-up warns when a policy reads it then.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from ..errors import StoreError
from ..kernel.call import Call
from ..kernel.chain import Guard
from .budgets import BudgetStore, key_part

log = logging.getLogger("modelfence.quota")

#: the actions that count: answered inferences, on either protocol
COUNTED = frozenset({"infer", "chat", "completion", "embed"})


class UsageGuard(Guard[Call]):
    """Counts a request when it arrives and gives it back if it is not answered.

    Counting on arrival (one atomic add that returns the count) keeps the policy exact
    under concurrency and across replicas: a caller cannot run past `context.queries < N`
    by sending requests in parallel or to several replicas, nor by sending the next one
    before the last one's count was written. The rows of an inference are known only after
    the body is read, so arrival counts one and completion adds the rest.
    """

    name: ClassVar[str] = "usage"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model"})
    provides: ClassVar[frozenset[str]] = frozenset({"queries"})

    def __init__(self, store: BudgetStore | None = None) -> None:
        self._store = store
        self._counts: Counter[str] = Counter()
        self._held: dict[str, str] = {}  # request id -> key, for calls counted on arrival

    @property
    def shared(self) -> bool:
        return self._store is not None

    async def on_request(self, call: Call) -> None:
        assert call.principal is not None and call.model is not None
        key = _key(call)
        if call.action not in COUNTED:
            call.queries = await self._rows(key)
            return
        # a store that cannot answer denies the call (503): the policy needs the count
        call.queries = await self._add(key, 1, 1) - 1
        self._held[call.request_id] = key

    async def on_complete(self, call: Call) -> None:
        key = self._held.pop(call.request_id, None)
        if key is None:
            return
        try:
            if call.status != 200:
                await self._add(key, -1, -1)
            elif call.rows > 1:
                await self._add(key, 0, call.rows - 1)
        except StoreError as exc:  # an outage is logged once by its breaker
            log.log(logging.DEBUG if exc.reported else logging.WARNING,
                    "query count of %s not settled: %s", key.split("|")[1], exc)

    async def _rows(self, key: str) -> int:
        if self._store is None:
            return self._counts[key]
        return (await self._store.usage(key))[1]

    async def _add(self, key: str, queries: int, rows: int) -> int:
        """Add (or, negative, give back) and return the rows counted now."""
        if self._store is None:
            self._counts[key] = max(self._counts[key] + rows, 0)
            return self._counts[key]
        if rows < 0:
            await self._store.release(key, -queries, -rows)
            return 0
        return (await self._store.reserve(key, queries, rows, None, None)).used_rows

    def warn_if_policy_reads(self, policy_files: Iterable[Path], workers: int) -> None:
        """Say at start-up that `context.queries` is this process's count, where it is."""
        if self._store is not None:
            return
        if any("context.queries" in _text(f) for f in policy_files):
            log.warning("policy reads context.queries but no quotas.budgets are set: it is "
                        "this process's count (it restarts at zero%s); set quotas.budgets "
                        "to count in the budget store",
                        f", and each of the {workers} workers keeps its own" if workers > 1
                        else ", and each replica keeps its own")


def _key(call: Call) -> str:
    """The count's row in the budget store (budget rows start with their index, never 'q');
    bounded whatever the principal's id (`key_part`)."""
    assert call.principal is not None and call.model is not None
    return f"queries|{key_part(call.principal.id)}|{key_part(call.model.name)}"


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""  # the policy engine reports unreadable files itself

"""Cedar decisions kept for the requests they stand for: one cache per loaded policy set.

A decision is a function of the action, the principal and model entities (their JSON, so
any change of a key's or token's attributes, groups or grants is a new entry) and the
context attributes the policies read (`reads.ContextReads`): exact values, or for
attributes only compared with literals, which side of each literal they lie on. Two
requests with the same key get the same verdict from Cedar, so the cache never changes
an answer; it only skips re-evaluating one (~150 µs a decision, bench/guard_cpu.py).

The cache belongs to one policy set: a reload makes a new, empty one, so no decision
outlives the policies it came from. Revocation is not the cache's business: a revoked or
expired key is refused by identity before policy runs. Errors are never kept (each such
request is evaluated, and refused, again). Size is bounded; the oldest entries go first.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from .reads import ContextReads, bucket
from .request import CONTEXT_VALUES, Facts

if TYPE_CHECKING:
    from ..kernel.call import Caller
    from .engine import Verdict

DEFAULT_SIZE = 10_000

_Part = tuple[Callable[["Caller", Facts], Hashable], tuple[int, ...] | None]


class DecisionCache:
    """Verdicts by (action, entities JSON, context key), for one policy set."""

    def __init__(self, reads: ContextReads) -> None:
        self.reads = reads
        parts: list[_Part] = [(CONTEXT_VALUES[n], None) for n in sorted(reads.exact)]
        parts += [(CONTEXT_VALUES[n], t) for n, t in reads.thresholds]
        self._parts = tuple(parts)
        self._entries: dict[Hashable, Verdict] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, action: str, entities: str, principal: Caller, facts: Facts) -> Hashable:
        """What the decision depends on; `facts.now` must be set (one clock for both)."""
        values: list[Hashable] = [action, entities]
        for value, thresholds in self._parts:
            v = value(principal, facts)
            values.append(v if thresholds is None else bucket(v, thresholds))  # type: ignore[arg-type]
        return tuple(values)

    def get(self, key: Hashable) -> Verdict | None:
        return self._entries.get(key)

    def put(self, key: Hashable, verdict: Verdict, size: int) -> None:
        entries = self._entries
        while len(entries) >= size > 0:
            del entries[next(iter(entries))]  # the oldest first (dicts keep insertion order)
        if size > 0:
            entries[key] = verdict

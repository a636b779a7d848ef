"""What a policy set reads from the request context, so one decision can stand for many.

A Cedar decision depends on the principal and model entities, the action, and only the
context attributes some policy reads. Of those, an attribute that policies only compare
with literals (`context.risk.greaterThan(decimal("0.8"))`, `context.hour < 7`) matters
only by which side of each literal it lies on; any other use (`context.purpose`,
`context.queries + 5 > x`, two attributes compared) makes its exact value matter. Read
from Cedar's own JSON form of the policies (`cedarpy.policies_to_json_str`), not from
the text, so comments and strings cannot fool it; anything it does not recognise counts
as an exact read, and `context` used whole makes every attribute exact.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

#: context attributes that literal comparisons read as numbers (decimals in 1/10000)
LONGS = frozenset({"now", "hour", "weekday", "queries"})
DECIMALS = frozenset({"risk", "screen_score", "epsilon_spent"})

_COMPARISONS = frozenset({"<", "<=", ">", ">=", "==", "!="})
_DECIMAL_COMPARISONS = frozenset({"lessThan", "lessThanOrEqual", "greaterThan",
                                  "greaterThanOrEqual"})
_DECIMAL = re.compile(r"^(-?)(\d+)\.(\d{1,4})$")
_CONTEXT = {"Var": "context"}


@dataclass(frozen=True, slots=True)
class ContextReads:
    """The context attributes a policy set reads: each exactly, or only against thresholds.

    `thresholds` holds sorted literals: integers for Long attributes, ten-thousandths for
    decimals (Cedar's decimals have four places).
    """

    exact: frozenset[str]
    thresholds: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def names(self) -> frozenset[str]:
        return self.exact | {name for name, _ in self.thresholds}


def decimal_units(text: str) -> int | None:
    """A Cedar decimal literal in ten-thousandths, or None if it is not one."""
    m = _DECIMAL.match(text)
    if m is None:
        return None
    units = int(m.group(2)) * 10_000 + int(m.group(3).ljust(4, "0"))
    return -units if m.group(1) else units


def bucket(value: int, thresholds: tuple[int, ...]) -> int:
    """Which side of every threshold `value` lies on (below, on, above), as one number."""
    i = bisect_left(thresholds, value)
    return 2 * i + (i < len(thresholds) and thresholds[i] == value)


def context_reads(policies_text: str, attributes: Collection[str]) -> ContextReads | None:
    """The reads of a policy set, of the context `attributes` requests carry; None where
    they cannot be told (then nothing is cached)."""
    import cedarpy

    try:
        doc = json.loads(cedarpy.policies_to_json_str(policies_text))
    except (ValueError, TypeError):
        return None
    walk = _Walk()
    walk.visit(doc)
    known = frozenset(attributes)
    if walk.whole:
        return ContextReads(known, ())
    if not walk.exact | set(walk.thresholds) <= known:
        return None  # an attribute this gateway does not send: a user schema; no cache
    kept = {name: values for name, values in walk.thresholds.items()
            if name not in walk.exact}
    return ContextReads(frozenset(walk.exact),
                        tuple((n, tuple(sorted(v))) for n, v in sorted(kept.items())))


class _Walk:
    def __init__(self) -> None:
        self.whole = False
        self.exact: set[str] = set()
        self.thresholds: dict[str, set[int]] = {}

    def visit(self, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                self.visit(item)
            return
        if not isinstance(node, dict):
            return
        if node == _CONTEXT:
            self.whole = True  # context passed whole: any of its values may matter
            return
        if len(node) == 1:
            ((op, body),) = node.items()
            attr = _context_attr(node)
            if attr is not None:
                self.exact.add(attr)
                return
            if op == "has" and isinstance(body, dict) and body.get("left") == _CONTEXT:
                return  # every request carries every attribute: `has` never varies
            if self._comparison(op, body):
                return
        for value in node.values():
            self.visit(value)

    def _comparison(self, op: str, body: Any) -> bool:
        """A context attribute compared with a literal: record the literal as a threshold."""
        if op in _COMPARISONS and isinstance(body, dict) and set(body) == {"left", "right"}:
            pair = (body["left"], body["right"])
            kinds = LONGS
        elif op in _DECIMAL_COMPARISONS and isinstance(body, list) and len(body) == 2:
            pair = (body[0], body[1])
            kinds = DECIMALS
        else:
            return False
        for side, other in (pair, pair[::-1]):
            attr = _context_attr(side)
            if attr is None:
                continue
            literal = _literal(other, decimal=attr in DECIMALS)
            if literal is None or (attr not in kinds and op in _DECIMAL_COMPARISONS):
                return False
            if attr not in LONGS and attr not in DECIMALS:
                return False
            self.thresholds.setdefault(attr, set()).add(literal)
            return True
        return False


def _context_attr(node: Any) -> str | None:
    if isinstance(node, dict) and len(node) == 1 and isinstance(node.get("."), dict):
        body = node["."]
        if body.get("left") == _CONTEXT and isinstance(body.get("attr"), str):
            return str(body["attr"])
    return None


def _literal(node: Any, *, decimal: bool) -> int | None:
    if not isinstance(node, dict) or len(node) != 1:
        return None
    if not decimal:
        value = node.get("Value")
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    args = node.get("decimal")
    if isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict):
        text = args[0].get("Value")
        return decimal_units(text) if isinstance(text, str) else None
    return None

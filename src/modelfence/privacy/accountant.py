"""ε spent, from how many answers of each mechanism a caller was given: RDP composition.

The store keeps counts (per caller, model, mechanism), never ε itself, so a charge is one
atomic add and replicas never disagree; ε is computed from the counts here. Rényi DP curves
add under composition (Mironov 2017), so a caller's curve is the sum of each mechanism's
one-answer curve (taken once from `dp_accounting`'s `RdpAccountant`, over its default
orders) times its count, and ε at δ is `dp_accounting`'s conversion of that sum (Canonne,
Kamath and Steinke 2020, Prop. 12), vectorised: the same number `RdpAccountant.get_epsilon`
gives for the same events, at a thousandth of its cost, which keeps the per-request check
within microseconds. Where every mechanism is pure ε-DP, the plain sum of ε (basic
composition, valid at δ = 0) is used when it is smaller, as it is for few answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import rdp_privacy_accountant as rdp

from ..errors import ConfigurationError
from ..shaping.base import Array
from .forms import parse_private
from .mechanisms import PrivacyCost

ORDERS: Array = np.array(rdp.DEFAULT_RDP_ORDERS, dtype=np.float64)
_CACHE = 4096
#: ε of one mechanism for counts in blocks of this many, computed together and kept
_BLOCK, _BLOCKS = 1024, 256


@dataclass(frozen=True, slots=True)
class Curve:
    """One answer's RDP curve over `ORDERS`, and its ε when it is pure DP (else None)."""

    rdp: Array
    pure_epsilon: float | None


def curve_of(cost: PrivacyCost) -> Curve:
    account = rdp.RdpAccountant(list(ORDERS), NeighboringRelation.REPLACE_ONE)
    account.compose(cost.event)
    return Curve(np.array(account._rdp, dtype=np.float64),
                 cost.epsilon if cost.delta == 0 else None)


class Accountant:
    """ε at `delta` of a caller's counts by mechanism (their spec text, ``dp-rr:1``)."""

    def __init__(self, delta: float) -> None:
        if not 0 < delta < 1:
            raise ConfigurationError(f"privacy.delta must be in (0, 1), got {delta:g}")
        self.delta = delta
        with np.errstate(divide="ignore"):
            big = ORDERS > 1.01  # dp_accounting's conversion is unstable as the order -> 1
            safe = np.where(big, ORDERS, 2.0)
            self._shift: Array = np.where(
                big, np.log1p(-1.0 / safe) - np.log(delta * safe) / (safe - 1.0), np.inf)
        self._curves: dict[str, Curve] = {}
        self._memo: dict[tuple[tuple[str, int], ...], float] = {}
        self._blocks: dict[tuple[str, int], list[float]] = {}

    def curve(self, spec: str) -> Curve:
        got = self._curves.get(spec)
        if got is None:
            kind, _, arg = spec.partition(":")
            mechanism = parse_private(kind, arg)
            if mechanism is None:
                raise ConfigurationError(f"privacy: {spec!r} is not a private mechanism")
            got = self._curves[spec] = curve_of(mechanism.cost)
        return got

    def epsilon(self, counts: Mapping[str, int]) -> float:
        """ε spent at `delta` after `counts[spec]` answers of each mechanism."""
        key = tuple(sorted((s, n) for s, n in counts.items() if n > 0))
        if not key:
            return 0.0
        if len(key) == 1:  # the usual case: one mechanism per model
            return self.single(*key[0])
        got = self._memo.get(key)
        if got is None:
            got = self._compute(key)
            if len(self._memo) >= _CACHE:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = got
        return got

    def single(self, spec: str, n: int) -> float:
        """ε after `n` answers of one mechanism, from a block of counts computed at once."""
        block = self._blocks.get((spec, n // _BLOCK))
        if block is None:
            block = self._block(spec, n // _BLOCK)
        return block[n % _BLOCK]

    def _block(self, spec: str, index: int) -> list[float]:
        curve = self.curve(spec)
        ns = np.arange(index * _BLOCK, (index + 1) * _BLOCK, dtype=np.float64)
        total = ns[:, None] * curve.rdp[None, :]
        eps = np.maximum(np.min(total + self._shift[None, :], axis=1), 0.0)
        tiny = (total < 0).any(axis=1) | (self.delta ** 2 + np.expm1(-total) > 0).any(axis=1)
        eps[tiny] = 0.0
        if curve.pure_epsilon is not None:
            eps = np.minimum(eps, ns * curve.pure_epsilon)
        if len(self._blocks) >= _BLOCKS:
            self._blocks.pop(next(iter(self._blocks)))
        out: list[float] = eps.tolist()
        self._blocks[(spec, index)] = out
        return out

    def _compute(self, counts: tuple[tuple[str, int], ...]) -> float:
        curves = [(self.curve(s), n) for s, n in counts]
        total = sum((c.rdp * n for c, n in curves), np.zeros_like(ORDERS))
        eps = self.from_rdp(total)
        pure = [c.pure_epsilon for c, _ in curves]
        if all(p is not None for p in pure):
            eps = min(eps, math.fsum(p * n for p, (_, n) in zip(pure, curves, strict=True)
                                     if p is not None))
        return eps

    def from_rdp(self, curve: Array) -> float:
        """`dp_accounting.rdp.compute_epsilon(ORDERS, curve, delta)`, vectorised."""
        if (curve < 0).any() or (self.delta ** 2 + np.expm1(-curve) > 0).any():
            return 0.0
        return max(0.0, float(np.min(curve + self._shift)))

"""Differentially private answers: output defenses whose every answer is a random draw with a
stated privacy cost, sampled by OpenDP.

What is protected is the model's answer to one input. A mechanism is (ε, δ)-DP when, for any
two answers the model could give to an input (any two labels, any two probability vectors),
the distributions of what the caller is shown differ by at most a factor e^ε (plus δ). Over a
caller's queries the costs compose (`privacy.accountant`), so ε spent bounds how well anything
the caller computes from its answers can tell this model from any other model on the inputs
it asked: a test that accepts this model with probability t accepts any other with at least
(t - δ)/e^ε. This is label (or answer) privacy, not training-data privacy.

Each class here is a stateless `Defense`: `apply` draws fresh noise on every call. The
gateway never calls a private defense twice for the same question within a period: its
repeat memory (`privacy.repeats`) answers repeats with the first draw, so they neither spend
ε nor average the noise away.

Noise comes from OpenDP's samplers (exact discrete samplers behind its float Laplace and
Gaussian, which snap to a grid, so the floating-point attack of Mironov 2012 does not apply);
nothing here draws from numpy or `random`. Each mechanism states its per-answer cost as ε,
δ and a `dp_accounting` event; for the pure ε-DP ones the event is binary randomized
response with the same ε, which dominates every ε-DP mechanism (Kairouz, Oh and Viswanath
2015), so the RDP accountant's composition is an upper bound for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import numpy as np
from dp_accounting import dp_event

from ..errors import ConfigurationError
from ..shaping.base import Array, Defense, LabelOnly

#: ε a single answer may be given with: below, answers are noise; above, no protection
MIN_EPSILON, MAX_EPSILON = 0.01, 20.0
#: the L1 and L2 distance between two probability vectors, at most
L1_SENSITIVITY, L2_SENSITIVITY = 2.0, math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class PrivacyCost:
    """What one randomised answer spends: (ε, δ) alone and as an event for composition."""

    epsilon: float
    delta: float
    event: dp_event.DpEvent


def pure_event(epsilon: float) -> dp_event.DpEvent:
    """Binary randomized response at `epsilon`: the event that dominates any ε-DP answer."""
    return dp_event.RandomizedResponseDpEvent(
        noise_parameter=2.0 / (math.exp(epsilon) + 1.0), num_buckets=2)


def _opendp() -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@cache
def _rr_measurement(k: int, prob: float) -> Callable[[int], int]:
    """OpenDP's k-ary randomized response: the input with `prob`, else another uniformly."""
    dp = _opendp()
    m: Callable[[int], int] = dp.m.make_randomized_response(categories=list(range(k)), prob=prob)
    return m


@cache
def _vector_noise(kind: str, scale: float) -> Callable[[list[float]], list[float]]:
    """OpenDP's Laplace or Gaussian noise added to a float vector (`scale` per coordinate)."""
    dp = _opendp()
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    if kind == "laplace":
        m = dp.m.make_laplace(domain, dp.l1_distance(T=float), scale=scale)
    else:
        m = dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=scale)
    sample: Callable[[list[float]], list[float]] = m
    return sample


def _epsilon(value: float, mechanism: str) -> float:
    if not MIN_EPSILON <= value <= MAX_EPSILON or math.isnan(value):
        raise ConfigurationError(
            f"{mechanism}: ε must be in [{MIN_EPSILON}, {MAX_EPSILON}], got {value:g}")
    return float(value)


class PrivateDefense(Defense):
    """A defense whose answers are random: `cost` per charged answer, fresh on every call.

    `charged(p)` says which rows of a probability matrix spend `cost` (all, except for the
    boundary layer, which randomises and charges only rows near the boundary).
    """

    private: ClassVar[bool] = True
    cost: PrivacyCost

    def charged(self, p: Array) -> Array:
        out: Array = np.ones(p.shape[0], dtype=bool)
        return out


class RandomizedResponse(PrivateDefense, LabelOnly):
    """k-ary randomized response on the label (label DP): the model's top class with
    probability e^ε / (e^ε + k - 1), each other class with 1 / (e^ε + k - 1); one-hot.

    It is a label-only answer (probabilities are withheld, like ``labels``).
    """

    kind = "dp-rr"
    SPEC = "dp-rr:{epsilon:g}"
    DESCRIPTION = "label by {epsilon:g}-DP randomized response (label only)"

    def __init__(self, epsilon: float) -> None:
        self.epsilon = _epsilon(epsilon, "dp-rr")
        self.cost = PrivacyCost(self.epsilon, 0.0, pure_event(self.epsilon))

    def keep_probability(self, k: int) -> float:
        return math.exp(self.epsilon) / (math.exp(self.epsilon) + k - 1)

    def event_for(self, k: int) -> dp_event.DpEvent:
        """The exact event with `k` classes (the stated `cost.event` bounds it for any k)."""
        return dp_event.RandomizedResponseDpEvent(
            noise_parameter=k / (math.exp(self.epsilon) + k - 1), num_buckets=k)

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        k = p.shape[1]
        sample = _rr_measurement(k, self.keep_probability(k))
        labels = [sample(int(t)) for t in p.argmax(axis=1)]
        out = np.zeros_like(p)
        out[np.arange(p.shape[0]), labels] = 1.0
        return out


class BoundaryLayer(PrivateDefense, LabelOnly):
    """A boundary differentially private layer in the manner of BDPL (Zheng et al. 2019):
    label-only answers, randomised only where the model is near its decision boundary.

    A row is in the boundary zone when its top-1 and top-2 probabilities are within `margin`
    of each other. There the answer is ε-randomized response between those two classes: the
    preferred one with probability e^ε / (1 + e^ε). Elsewhere it is the model's label.

    The guarantee covers rows in the zone only: for an input in the zone, whichever of its two
    leading classes the model prefers (which side of the boundary it falls on), the answer's
    distribution changes by at most e^ε. It does not hide which two classes lead, whether a
    row is in the zone, nor anything about rows outside it, whose labels are exact; only zone
    rows are charged. Zheng et al. measure the zone by distance in input space; here it is
    the margin of the model's own probabilities, which needs no model of the input space.
    """

    kind = "dp-bdpl"
    SPEC = "dp-bdpl:{epsilon:g},{margin:g}"
    DESCRIPTION = "label only; {epsilon:g}-DP randomized response within margin {margin:g}"

    def __init__(self, epsilon: float, margin: float = 0.2) -> None:
        self.epsilon = _epsilon(epsilon, "dp-bdpl")
        if not 0.0 < margin <= 1.0:
            raise ConfigurationError(f"dp-bdpl: margin must be in (0, 1], got {margin:g}")
        self.margin = float(margin)
        self.cost = PrivacyCost(self.epsilon, 0.0, pure_event(self.epsilon))

    def charged(self, p: Array) -> Array:
        two = np.sort(p, axis=1)[:, -2:]
        zone: Array = (two[:, 1] - two[:, 0]) <= self.margin
        return zone

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        order = np.argsort(-p, axis=1, kind="stable")[:, :2]
        labels = order[:, 0].copy()
        zone = self.charged(p)
        if zone.any():
            sample = _rr_measurement(2, math.exp(self.epsilon) / (1.0 + math.exp(self.epsilon)))
            for row in np.nonzero(zone)[0]:
                labels[row] = order[row, sample(0)]
        out = np.zeros_like(p)
        out[np.arange(p.shape[0]), labels] = 1.0
        return out


def to_simplex(v: Array) -> Array:
    """Each row's Euclidean projection onto the probability simplex (Duchi et al. 2008).

    Order preserving, so the answer's top class is the noisy vector's; a tie for the top
    (possible after the grid OpenDP snaps to) is broken towards the first, so the label is
    always unique. Post-processing: it costs no privacy.
    """
    n, k = v.shape
    u = -np.sort(-v, axis=1)
    css = np.cumsum(u, axis=1) - 1.0
    idx = np.arange(1, k + 1)
    rho = np.sum(u - css / idx > 0, axis=1)
    theta = css[np.arange(n), rho - 1] / rho
    out: Array = np.maximum(v - theta[:, None], 0.0)
    top = v.argmax(axis=1)
    rows = np.arange(n)
    tied = np.add.reduce(out == out[rows, top][:, None], axis=1) > 1
    if tied.any():
        out[rows[tied], top[tied]] += 1e-9
        out[tied] /= out[tied].sum(axis=1, keepdims=True)
    return out


class _VectorNoise(PrivateDefense):
    """Noise on the whole probability vector, then the projection back onto the simplex."""

    NOISE: ClassVar[str]
    scale: float

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        noisy = _vector_noise(self.NOISE, self.scale)(p.ravel().tolist())
        return to_simplex(np.asarray(noisy, dtype=np.float64).reshape(p.shape))


class LaplaceVector(_VectorNoise):
    """Laplace noise of scale 2/ε on each probability (two distributions are at most 2
    apart in L1), projected back to a distribution whose top class is the noisy top class."""

    kind = "dp-laplace"
    NOISE = "laplace"
    SPEC = "dp-laplace:{epsilon:g}"
    DESCRIPTION = "probabilities with {epsilon:g}-DP Laplace noise, projected to a distribution"

    def __init__(self, epsilon: float) -> None:
        self.epsilon = _epsilon(epsilon, "dp-laplace")
        self.scale = L1_SENSITIVITY / self.epsilon
        self.cost = PrivacyCost(self.epsilon, 0.0, pure_event(self.epsilon))


def gaussian_rho(epsilon: float, delta: float) -> float:
    """The largest zCDP rho whose (ε, δ) conversion (through RDP, as `dp_accounting` does
    it) is at most `epsilon` at `delta`: the discrete Gaussian with sensitivity/sigma =
    sqrt(2 rho) is rho-zCDP (Canonne, Kamath and Steinke 2020)."""
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    orders = np.array(rdp.DEFAULT_RDP_ORDERS, dtype=np.float64)
    lo, hi = 0.0, epsilon * epsilon
    for _ in range(60):
        mid = (lo + hi) / 2
        eps, _ = rdp.compute_epsilon(orders, orders * mid, delta)
        lo, hi = (mid, hi) if eps <= epsilon else (lo, mid)
    return lo


class GaussianVector(_VectorNoise):
    """Gaussian noise on each probability, calibrated so one answer is (ε, δ)-DP (L2
    sensitivity √2), projected back to a distribution like `LaplaceVector`."""

    kind = "dp-gauss"
    NOISE = "gaussian"
    SPEC = "dp-gauss:{epsilon:g},{delta:g}"
    DESCRIPTION = "probabilities with ({epsilon:g}, {delta:g})-DP Gaussian noise"

    def __init__(self, epsilon: float, delta: float = 1e-6) -> None:
        self.epsilon = _epsilon(epsilon, "dp-gauss")
        if not 0.0 < delta < 0.01:
            raise ConfigurationError(f"dp-gauss: δ must be in (0, 0.01), got {delta:g}")
        self.delta = float(delta)
        self.rho = gaussian_rho(self.epsilon, self.delta)
        self.scale = L2_SENSITIVITY / math.sqrt(2.0 * self.rho)
        self.cost = PrivacyCost(self.epsilon, self.delta, dp_event.ZCDpEvent(self.rho))


def private_steps(defense: Defense) -> list[PrivateDefense]:
    """The private steps of a defense or of a chain of them."""
    steps = getattr(defense, "steps", (defense,))
    return [s for s in steps if isinstance(s, PrivateDefense)]

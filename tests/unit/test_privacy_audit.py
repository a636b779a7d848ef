"""The empirical privacy audit: its statistics, then every mechanism of `modelfence.privacy`
audited on neighbouring inputs (the bound never above the stated ε), and mis-wired variants
that the audit must catch (so these tests can fail)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelfence.evaluation.privacy_audit import (
    AuditResult,
    Neighbours,
    audit_labels,
    audit_vectors,
    clopper_pearson,
    epsilon_bound,
)

# the statistics ----------------------------------------------------------------------------


def test_clopper_pearson_matches_its_closed_forms() -> None:
    # no hits in n: the upper bound solves (1 - p)^n = alpha; all hits: p^n = alpha
    low, high = clopper_pearson(0, 10, 0.05)
    assert low == 0.0 and high == pytest.approx(1 - 0.05 ** (1 / 10))
    low, high = clopper_pearson(10, 10, 0.05)
    assert low == pytest.approx(0.05 ** (1 / 10)) and high == 1.0
    low, high = clopper_pearson(500, 1000, 0.025)
    assert low < 0.5 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 1000),
                                                           rel=0.02)
    with pytest.raises(ValueError, match="hits <= n"):
        clopper_pearson(11, 10, 0.05)


def test_epsilon_bound_is_conservative_and_grows_with_the_gap() -> None:
    assert epsilon_bound(500, 500, 1000) == 0.0  # the same rate proves nothing
    assert epsilon_bound(300, 500, 1000) == 0.0  # the wrong way round proves nothing
    small, big = epsilon_bound(600, 400, 1000), epsilon_bound(6000, 4000, 10000)
    assert 0 < small < big < math.log(600 / 400)  # more draws, tighter; never the raw ratio
    assert epsilon_bound(6000, 4000, 10000, delta=0.5) == 0.0  # a δ that large allows anything


def _rr(label: int, k: int, eps: float, seed: int):  # type: ignore[no-untyped-def]
    """Plain k-ary randomized response on numpy's generator: a reference for the statistics
    only (the product's mechanisms are audited below)."""
    rng = np.random.default_rng(seed)

    def sample(n: int) -> np.ndarray:
        keep = rng.random(n) < math.exp(eps) / (math.exp(eps) + k - 1)
        other = rng.integers(0, k - 1, n)
        return np.where(keep, label, other + (other >= label))

    return sample


def test_the_audit_is_tight_on_reference_randomized_response_and_catches_double_eps() -> None:
    for k, eps in ((2, 1.0), (10, 2.0)):
        fair = audit_labels(Neighbours("rr", _rr(0, k, eps, 1), _rr(1, k, eps, 2)), eps, k)
        assert fair.passed and fair.epsilon_lower > 0.8 * eps, fair
        broken = audit_labels(Neighbours("rr", _rr(0, k, 2 * eps, 3), _rr(1, k, 2 * eps, 4)),
                              eps, k)
        assert not broken.passed and broken.epsilon_lower > 1.5 * eps, broken


def test_identical_distributions_prove_nothing() -> None:
    rng = np.random.default_rng(5)
    same = Neighbours("same", lambda n: rng.laplace(size=(n, 3)), lambda n: rng.laplace(
        size=(n, 3)))
    result = audit_vectors(same, 0.0, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    assert result.epsilon_lower < 0.05 and result.draws == 20_000


# the product's mechanisms ------------------------------------------------------------------
# Fresh draws: the private defenses draw anew on every row of every `apply`; the gateway's
# repeat memory (which answers a repeated question with its first draw) is not in the way.
# Few draws, to keep this test to seconds (OpenDP's samplers take 30-100 µs a draw); the
# bench (python bench/privacy.py --audit) runs the same audit with 50,000 per input.

LABELS, VECTORS = (3000, 500), (5000, 1500)  # draws per input: for the bound, for the event


def _audit(defense: object, classes: int, epsilon: float | None = None) -> AuditResult:
    from modelfence.evaluation.privacy_audit import audit_defense

    label_only = getattr(defense, "kind", "") in ("dp-rr", "dp-bdpl")
    draws, select = LABELS if label_only else VECTORS
    return audit_defense(defense, classes=classes, epsilon=epsilon, draws=draws,
                         select_draws=select)


@pytest.mark.parametrize(("spec", "classes"), [
    ("dp-rr:1", 2), ("dp-rr:2", 10), ("dp-bdpl:1,0.2", 3), ("dp-laplace:1", 3),
    ("dp-gauss:1,1e-06", 3)])
def test_no_mechanism_spends_more_than_it_states(spec: str, classes: int) -> None:
    from modelfence.shaping import parse_defense

    defense = parse_defense(spec)
    result = _audit(defense, classes)
    assert result.epsilon == defense.cost.epsilon and result.passed, result  # type: ignore[attr-defined]
    if spec.startswith(("dp-rr", "dp-bdpl")):  # tight mechanisms: the bound comes close
        assert result.epsilon_lower > 0.7 * result.epsilon, result


def test_the_audit_catches_mis_wired_mechanisms() -> None:
    """Noise for a larger ε than the one stated (a sensitivity or a factor forgotten), or no
    noise at all: each bound exceeds the stated ε."""
    from modelfence.privacy.mechanisms import BoundaryLayer, LaplaceVector, RandomizedResponse
    from modelfence.shaping.base import NoDefense

    caught = [
        _audit(RandomizedResponse(2.0), 2, epsilon=1.0),
        _audit(RandomizedResponse(4.0), 10, epsilon=2.0),
        _audit(BoundaryLayer(2.0, 0.2), 3, epsilon=1.0),
        _audit(LaplaceVector(4.0), 3, epsilon=1.0),
        _audit(NoDefense(), 3, epsilon=1.0),
    ]
    for result in caught:
        assert not result.passed, result
    assert caught[-1].epsilon_lower > 5  # deterministic answers: only the draws limit it

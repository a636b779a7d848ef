"""The copy test's statistics: exact tails, Fisher's combination, and validity by simulation.

Validity: for suspects made without the marked answers (any accuracy, binary and
multi-class, disagreements concentrated on some inputs), P[p <= alpha] <= alpha. Power: a
copy that repeats most marks is convicted far below alpha.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelfence.watermark.stats import (
    LN2,
    bonferroni,
    copy_test,
    disagreement_test,
    fisher_combine,
    log_hypergeom_sf,
    perfect_copy_log2_p,
)


@pytest.mark.parametrize(("x", "total", "succ", "draws"), [
    (5, 300, 40, 30), (1, 50, 10, 5), (12, 1000, 100, 60), (0, 20, 5, 5), (3, 44, 4, 4),
    (30, 2200, 200, 200)])
def test_hypergeometric_tail_matches_scipy(x: int, total: int, succ: int, draws: int) -> None:
    from scipy.stats import hypergeom

    want = float(hypergeom.logsf(x - 1, total, succ, draws))
    assert log_hypergeom_sf(x, total, succ, draws) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_hypergeometric_tail_is_exact_far_below_float_range() -> None:
    # all 400 marks disagree, no control does: p = 1 / C(4400, 400)
    got = log_hypergeom_sf(400, 4400, 400, 400)
    want = -(math.lgamma(4401) - math.lgamma(401) - math.lgamma(4001))
    assert got == pytest.approx(want, rel=1e-12)
    assert got / LN2 < -1500
    assert log_hypergeom_sf(401, 4400, 400, 400) == -math.inf
    assert log_hypergeom_sf(0, 4400, 400, 400) == 0.0


@pytest.mark.parametrize("log2_ps", [[-1.0, -1.0], [-3.0, -7.0], [-0.1, -20.0, -2.0],
                                     [-50.0, -60.0, -1.0, -0.5]])
def test_fisher_combination_matches_the_chi_square_survival(log2_ps: list[float]) -> None:
    from scipy.stats import chi2

    x = -2.0 * LN2 * sum(log2_ps)
    want = float(chi2.logsf(x, 2 * len(log2_ps))) / LN2
    assert fisher_combine(log2_ps) == pytest.approx(want, rel=1e-9)


def test_fisher_combination_far_below_float_range() -> None:
    got = fisher_combine([-100000.0, -5.0])
    # -2 ln p / 2 = s; sf = e^-s (1 + s): log2 = -(100005) + log2(1 + s)
    s = 100005 * LN2
    assert got == pytest.approx(-100005 + math.log2(1 + s), rel=1e-12)
    assert fisher_combine([-7.0]) == -7.0
    assert fisher_combine([0.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        fisher_combine([])
    with pytest.raises(ValueError):
        fisher_combine([0.5])


def test_bonferroni() -> None:
    assert bonferroni(-20.0, 4) == pytest.approx(-18.0)
    assert bonferroni(-1.0, 8) == 0.0
    assert bonferroni(-5.0, 1) == -5.0
    with pytest.raises(ValueError):
        bonferroni(-5.0, 0)


def test_binary_copy_test_is_the_disagreement_test() -> None:
    t = copy_test(4, 4, 4, 40, 0, 2)
    assert t.log2_p == disagreement_test(4, 4, 0, 40).log2_p
    assert t.log2_p == pytest.approx(-math.log2(math.comb(44, 4)))
    assert perfect_copy_log2_p(4, 40, 2) == t.log2_p


def test_multiclass_copy_test_combines_both_tests() -> None:
    t = copy_test(20, 12, 10, 200, 30, 5)
    dis, decoy = t.parts
    assert dis.name == "disagreement test" and decoy.name == "decoy test"
    assert t.log2_p == pytest.approx(fisher_combine([dis.log2_p, decoy.log2_p]))
    assert t.log2_p < min(dis.log2_p, decoy.log2_p)
    assert "Fisher" in t.statement
    assert t.to_dict()["parts"][1]["name"] == "decoy test"


def test_no_controls_gives_no_evidence_from_disagreements() -> None:
    assert disagreement_test(5, 5, 0, 0).log2_p == 0.0
    assert copy_test(0, 0, 0, 0, 0, 2).log2_p == 0.0


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        disagreement_test(5, 4, 0, 10)
    with pytest.raises(ValueError):
        copy_test(4, 2, 3, 10, 0, 3)
    with pytest.raises(ValueError):
        copy_test(4, 2, 1, 10, 0, 1)


def _simulate(rng: np.random.Generator, *, n_inputs: int, mark_share: float, k: int,
              accuracy: float, copy: float) -> float:
    """One set of records and one suspect; the copy test's log2 p.

    Inputs have heterogeneous difficulty: the suspect disagrees with our model on input i
    with its own probability (a Beta around 1 - accuracy), fixed before the keyed draw. A
    suspect made without our marks (copy = 0) errs toward a class of its own (here always
    the next class), independent of the keyed decoy. A copy (copy > 0) repeats each mark's
    decoy with probability `copy`.
    """
    err = 1.0 - accuracy
    hard = rng.beta(0.5, 0.5 * (1 - err) / err, n_inputs)  # mean = err
    disagree = rng.random(n_inputs) < hard
    marked = rng.random(n_inputs) < mark_share
    decoy_step = rng.integers(1, k, n_inputs)  # decoy = model + step (mod k)
    own_step = np.ones(n_inputs, dtype=np.int64)  # a suspect's own wrong class
    repeats = marked & (rng.random(n_inputs) < copy)
    mark_dis = marked & (disagree | repeats)
    hits = marked & ((repeats) | (disagree & (own_step == decoy_step)))
    return copy_test(int(marked.sum()), int(mark_dis.sum()), int(hits.sum()),
                     int((~marked).sum()), int((disagree & ~marked).sum()), k).log2_p


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("accuracy", [0.6, 0.9, 0.99])
def test_the_copy_test_is_valid_for_models_made_without_the_marks(k: int,
                                                                    accuracy: float) -> None:
    rng = np.random.default_rng(1000 * k + int(100 * accuracy))
    runs = 1500
    ps = np.array([_simulate(rng, n_inputs=330, mark_share=1 / 11, k=k, accuracy=accuracy,
                             copy=0.0) for _ in range(runs)])
    for alpha in (0.01, 0.05, 0.2):
        rate = float(np.mean(ps <= math.log2(alpha)))
        slack = 3.5 * math.sqrt(alpha * (1 - alpha) / runs)
        assert rate <= alpha + slack, (alpha, rate)
    assert np.min(ps) > -20  # nothing near a conviction


@pytest.mark.parametrize("k", [2, 3, 10])
def test_the_copy_test_convicts_a_copy(k: int) -> None:
    rng = np.random.default_rng(7 + k)
    ps = [_simulate(rng, n_inputs=330, mark_share=1 / 11, k=k, accuracy=0.9, copy=0.85)
          for _ in range(50)]
    assert max(ps) < -20
    assert float(np.median(ps)) < -40

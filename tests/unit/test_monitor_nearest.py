"""The nearest held row is chosen and measured the same on every CPU.

A float32 matrix-vector product rounds differently on different BLAS kernels, so rows that
nearly tie could be picked differently by two replicas (and a re-send judged against another
anchor's answer). `rings.nearest` re-measures every near-tie exactly.
"""

from __future__ import annotations

import numpy as np

from modelfence.monitor.resends import into_anchor_space, projection
from modelfence.monitor.rings import nearest


def _half(rows: np.ndarray) -> np.ndarray:
    return 0.5 * np.einsum("ij,ij->i", rows, rows)


def test_an_exact_tie_goes_to_the_lowest_index_and_measures_exactly() -> None:
    rows = np.array([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0]], np.float32)
    z = np.zeros(2, np.float32)
    assert nearest(rows, _half(rows), z, 0.0) == (0, 9.0)
    # the same rows in another order: still the lowest index among the tied
    assert nearest(rows[::-1].copy(), _half(rows[::-1]), z, 0.0) == (0, 9.0)


def test_rows_within_float32_error_are_told_apart_by_their_exact_distance() -> None:
    # large norms and a difference far below float32's resolution of them: the float32
    # scores of rows 0 and 1 are equal, their exact distances are not
    z = np.array([1000.0, 1000.0], np.float32)
    a = np.array([1000.0, 1000.0625], np.float32)
    b = np.array([1000.0, 999.9375], np.float32)
    c = np.array([1000.0, 1000.0], np.float32)
    rows = np.stack([a, b, c])
    j, d2 = nearest(rows, _half(rows), z, float(z @ z))
    assert (j, d2) == (2, 0.0), "the float32 product alone cannot see that row 2 is z itself"
    rows = np.stack([a, b])
    j, d2 = nearest(rows, _half(rows), z, float(z @ z))
    assert (j, d2) == (0, 0.0625 ** 2)


def test_the_answer_matches_an_exact_search() -> None:
    rng = np.random.default_rng(7)
    # a coarse grid makes true ties common
    rows = rng.integers(-3, 4, (500, 6)).astype(np.float32)
    half = _half(rows)
    for z in rng.integers(-3, 4, (300, 6)).astype(np.float32):
        exact = ((rows.astype(np.float64) - z) ** 2).sum(axis=1)
        j, d2 = nearest(rows, half, z, float(z @ z))
        assert d2 == exact.min()
        assert j == int(np.flatnonzero(exact == exact.min())[0])


def test_anchors_are_the_float64_product_rounded_once() -> None:
    proj = projection(24, key=3)
    assert proj is not None
    z = np.random.default_rng(1).standard_normal(24).astype(np.float32)
    got = into_anchor_space(z, proj)
    assert got.dtype == np.float32
    assert np.array_equal(got, (z.astype(np.float64) @ proj.astype(np.float64)).astype(np.float32))

"""PRADA's Shapiro-Wilk W, computed without scipy, is scipy's W for every sample size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import shapiro

from modelfence.monitor.prada import shapiro_w


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 11, 20, 64, 128, 257])
def test_w_matches_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    for d in (rng.normal(size=n), rng.gamma(1.5, size=n), rng.uniform(size=n),
              rng.exponential(size=n) ** 3):
        assert shapiro_w(np.sort(d)) == pytest.approx(shapiro(d).statistic, abs=1e-8)


def test_nothing_to_test_reads_one() -> None:
    assert shapiro_w(np.ones(64)) == 1.0
    assert shapiro_w(np.array([1.0, 2.0])) == 1.0

"""Detectors calibrated per model at fit, and `monitor calibrate`'s bound and refusal.

The models here are outside the efficacy corpus (iris with a logistic regression, a
make_classification shape and seed the corpus does not use), so what is checked is that the
calibration carries to a model nobody tuned on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from modelfence.cli.monitor import app
from modelfence.errors import ConfigurationError
from modelfence.evaluation import monitor as ev
from modelfence.monitor import Monitor, MonitorSettings, Summary

Array = np.ndarray[Any, Any]


class Tabular:
    """make_classification, 7 classes, 18 features (3 redundant), rounded to 2 decimals."""

    def __init__(self) -> None:
        x, y = make_classification(n_samples=4000, n_features=18, n_informative=9,
                                   n_redundant=3, n_classes=7, n_clusters_per_class=1,
                                   class_sep=1.3, random_state=1234)
        x = np.round(x, 2)
        self.model = LogisticRegression(max_iter=500).fit(x[:1200], y[:1200])
        self.summary = Summary.fit(x[1200:2000], self.proba(x[1200:2000]), seed=3,
                                   predict=self.proba)
        self.pool, self.labels = x[2000:], y[2000:]

    def proba(self, x: Array) -> Array:
        p: Array = self.model.predict_proba(x)
        return p

    def top_risk(self, xs: Array, summary: Summary | None = None) -> tuple[float, Monitor]:
        monitor = Monitor(summary or self.summary)
        p = self.proba(xs)
        top = 0.0
        for i in range(len(xs)):
            monitor.observe("c", xs[i:i + 1], p[i:i + 1], now=1e9 + i)
            top = max(top, monitor.risk("c").score)
        return top, monitor


@pytest.fixture(scope="module")
def tab() -> Tabular:
    return Tabular()


def test_the_null_is_measured_and_survives_a_round_trip(tab: Tabular, tmp_path: Path) -> None:
    s = tab.summary
    assert (s.lattice_step == 0.01).all()  # two decimals, found from the data
    assert len(s.weak) > 0 and s.weak_cut > 0  # the redundant features' subspace
    assert 0.0 < s.resend_radius < s.natural_gap  # noise up to 10% sd, below natural rows
    assert s.boundary_z0 >= 4.0 and s.unnatural_z0 >= 4.0 and s.ood_z0 >= 4.0
    assert 0.0 < s.prada_w < 1.0
    back = Summary.load(s.save(tmp_path / "t.summary.npz"))
    assert back.resend_radius == s.resend_radius and back.resend_key == s.resend_key
    assert np.array_equal(back.weak, s.weak) and np.array_equal(back.cell_ood, s.cell_ood)
    xs = np.r_[tab.pool[:300], tab.pool[:100] + 0.3]  # natural rows, then shifted ones
    a, b = tab.top_risk(xs)[1], tab.top_risk(xs, back)[1]
    assert a.risk("c").readings == b.risk("c").readings


def test_drifting_and_one_class_callers_stay_low(tab: Tabular) -> None:
    rng = np.random.default_rng(5)
    direction = rng.standard_normal(tab.pool.shape[1])
    proj = tab.summary.transform(tab.pool) @ direction
    drift = tab.pool[np.argsort(proj + rng.normal(0, 0.3 * proj.std(), len(proj)))]
    assert tab.top_risk(drift[:2000])[0] < 0.5
    by_class = tab.pool[np.argsort(tab.labels + rng.normal(0, 0.8, len(tab.labels)))]
    assert tab.top_risk(by_class[:2000])[0] < 0.5
    one = tab.pool[tab.labels == 3]
    assert tab.top_risk(one)[0] < 0.5


@pytest.mark.parametrize("share", [0.001, 0.02, 0.10])
def test_noisy_resends_stay_low_off_the_corpus(tab: Tabular, share: float) -> None:
    rng = np.random.default_rng(6)
    fresh = tab.pool[:400]
    sd = tab.pool.std(axis=0)
    src = np.r_[np.arange(400), rng.integers(0, 400, 400)]
    xs = fresh[src] + np.r_[np.zeros((400, 18)), rng.standard_normal((400, 18)) * share * sd]
    xs = xs[np.argsort(np.r_[np.arange(400.0), src[400:] + rng.uniform(1, 400, 400)])]
    assert tab.top_risk(xs)[0] < 0.2


def test_noised_fresh_rows_are_flagged_off_the_corpus(tab: Tabular) -> None:
    rng = np.random.default_rng(7)
    xs = tab.pool[:500] + rng.standard_normal((500, 18)) * 0.05 * tab.pool.std(axis=0)
    top, monitor = tab.top_risk(xs)
    assert top >= 0.5 and monitor.risk("c").readings["synthetic"].score == 1.0


def test_a_bisection_within_the_resend_radius_is_flagged_by_its_flips(tab: Tabular) -> None:
    """Re-sends are volume only while their answer stays that of the row they re-send: a
    bisection that walks to the boundary in steps inside the radius changes it often."""
    assert 0.0 < tab.summary.cell_flip.mean() < 0.25  # measured through the model at fit
    labels = tab.proba(tab.pool).argmax(axis=1)
    rng = np.random.default_rng(8)
    rows = []
    for _ in range(30):
        a = tab.pool[rng.integers(len(tab.pool))]
        b = tab.pool[rng.choice(np.nonzero(labels != labels[0])[0])]
        lo, hi = 0.0, 1.0
        for _ in range(8):  # the boundary between a and b, one halving at a time
            mid = (lo + hi) / 2
            rows.append(a + mid * (b - a))
            same = tab.proba(rows[-1][None])[0].argmax() == tab.proba(a[None])[0].argmax()
            lo, hi = (mid, hi) if same else (lo, mid)
    top, monitor = tab.top_risk(np.array(rows))
    assert top >= 0.5 and monitor.risk("c").readings["flips"].score > 0.5
    honest = tab.pool[:300]
    again = honest[rng.integers(0, 300, 300)] + rng.standard_normal((300, 18)) * 0.05 * \
        tab.pool.std(axis=0)
    top, monitor = tab.top_risk(np.r_[honest, again])
    assert top < 0.2 and monitor.risk("c").readings["flips"].score == 0.0


def test_duplicates_is_retired_with_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"'duplicates' was retired.*re-send"):
        MonitorSettings(detectors=("prada", "duplicates"))


# monitor calibrate -----------------------------------------------------------------------


def test_the_bound_and_the_sample_it_needs() -> None:
    assert ev.needed(0.01, 0.95) == 299  # the rule of three
    assert ev.upper_bound(0, 299, 0.95) <= 0.01 < ev.upper_bound(0, 298, 0.95)
    risks = np.r_[np.zeros(9000), np.linspace(0.2, 0.9, 1000)]
    t, allowed = ev.bounded_threshold(risks, 0.01, 0.95)
    alarms = int(np.sum(risks >= t))
    assert alarms <= allowed and ev.upper_bound(alarms, len(risks), 0.95) <= 0.01
    assert ev.upper_bound(allowed + 1, len(risks), 0.95) > 0.01  # the most it allows
    assert ev.bounded_threshold(np.zeros(100), 0.01, 0.95) == (1.0, 0)  # too few to show it
    with pytest.raises(ConfigurationError, match="needs at least 2,995 benign queries"):
        ev.check_sample(0.001, "query", 0.95, 2, 1000)
    with pytest.raises(ConfigurationError, match="needs at least 59 benign streams"):
        ev.check_sample(0.05, "stream", 0.95, 22, 5000)


def test_calibrate_on_a_model_outside_the_corpus() -> None:
    world = ev.build_world("sklearn:iris", "lr", seed=4)
    c = ev.calibrate(world, 0.01, benign_streams=2, benign_queries=300, seed=4)
    assert c.queries == 600 and c.per == "query" and c.needed == 299
    assert 0.0 < c.threshold <= 1.0 and c.yaml().startswith("monitor:\n")
    if c.feasible:  # the bound, not only the sample's rate, meets the target
        assert c.upper_bound <= 0.01 and c.achieved_rate <= c.upper_bound


def test_calibrate_refuses_a_sample_too_small(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["calibrate", "--benign-streams", "2", "--benign-queries",
                                   "100", "--false-alarm-rate", "0.001"])
    assert out.exit_code == 2
    assert "needs at least 2,995 benign queries" in " ".join(out.output.split())


def test_a_queue_of_one_true_class_stays_low_when_the_fit_knows_the_truth() -> None:
    """An analyst working through the rare class of an imbalanced scorer asks, by what the rows
    are, about the model's weakest region; with true labels at fit, the null holds such callers
    (a model and data shape outside the corpus)."""
    from sklearn.ensemble import RandomForestClassifier

    x, y = make_classification(n_samples=6000, n_features=12, n_informative=6,
                               weights=[0.94, 0.06], class_sep=0.7, flip_y=0.02,
                               random_state=77)
    x = np.round(x, 3)
    model = RandomForestClassifier(n_estimators=60, min_samples_leaf=3, random_state=0)
    model.fit(x[:2000], y[:2000])
    fit_x, fit_y = x[2000:4000], y[2000:4000]
    queue = x[4000:][y[4000:] == 1]
    assert len(queue) >= 100

    def top(summary: Summary) -> float:
        monitor, p, out = Monitor(summary), model.predict_proba(queue), 0.0
        for i in range(len(queue)):
            monitor.observe("analyst", queue[i:i + 1], p[i:i + 1], now=1e9 + i)
            out = max(out, monitor.risk("analyst").score)
        return out

    blind = Summary.fit(fit_x, model.predict_proba(fit_x), seed=5)
    knowing = Summary.fit(fit_x, model.predict_proba(fit_x), seed=5, truth=fit_y)
    assert knowing.boundary_z0 > blind.boundary_z0  # the rare class's queue is in the null
    assert top(knowing) < min(0.1, top(blind))


def test_truth_must_match_the_rows(tab: Tabular) -> None:
    x = tab.pool[:200]
    with pytest.raises(ConfigurationError, match="labels for"):
        Summary.fit(x, tab.proba(x), cells=8, truth=tab.labels[:10])


def test_the_ood_radius_of_a_small_fit_holds_new_rows() -> None:
    """On 40 fit rows the empirical 99th percentile is about the largest distance, which new
    natural rows pass far more often than 1% of the time; the prediction bound holds them."""
    from modelfence.monitor.summary import ood_radius

    rng = np.random.default_rng(11)
    beyond_empirical, beyond_bound = [], []
    for _ in range(200):
        own = np.sqrt(rng.chisquare(6, 40))
        new = np.sqrt(rng.chisquare(6, 2000))
        beyond_empirical.append(np.mean(new > np.quantile(own, 0.99)))
        beyond_bound.append(np.mean(new > ood_radius(own)))
    assert np.mean(beyond_empirical) > 0.02
    assert np.mean(beyond_bound) < 0.02
    big = np.sqrt(rng.chisquare(6, 2000))  # 20 rows beyond the 99th percentile: kept
    assert ood_radius(big) == np.quantile(big, 0.99)

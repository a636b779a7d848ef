"""The fingerprint: keyed, serialisable, valid against independent models, finds a copy."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import pytest

from modelfence.errors import ConfigurationError
from modelfence.watermark.fingerprint import (
    Fingerprint,
    build_fingerprint,
    fingerprint_test,
    fit_null,
    log_betabinom_sf,
)
from modelfence.watermark.references import recipe_of, train_references

#: Small and quick: the families that fit fastest, fewer models and points.
SMALL: dict[str, Any] = {"points": 60, "candidates_per_point": 50, "copies": 4, "selectors": 6,
                         "calibrators": 18,
                         "families": ("lr", "rf", "knn", "mlp-small", "dt", "et")}


@lru_cache(maxsize=1)
def _world() -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 3-class MLP (the protected model), its training rows and other natural rows."""
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = make_classification(n_samples=1400, n_features=10, n_informative=6, n_classes=3,
                               class_sep=1.0, flip_y=0.03, random_state=4)
    model = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(64,), max_iter=300, random_state=0))
    with _quiet():
        model.fit(x[:700], y[:700])
    return model, x[:700], y[:700], x[700:], y[700:]


@contextmanager
def _quiet() -> Iterator[None]:
    """Small MLPs warn that they have not converged; these tests do not need them to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _labeler(model: Any) -> Any:
    return lambda x: [str(v) for v in model.predict(np.asarray(x))]


#: Tiny, for what does not need power.
TINY: dict[str, Any] = {"points": 20, "candidates_per_point": 10, "copies": 2, "selectors": 3,
                        "calibrators": 6, "families": ("lr", "knn", "dt")}


@lru_cache(maxsize=1)
def _fp() -> Fingerprint:
    model, x, y, _, _ = _world()
    return build_fingerprint(_labeler(model), x, y, key=b"k1", recipe=recipe_of(model), **SMALL)


def test_same_key_same_points_other_key_other_points() -> None:
    model, x, y, _, _ = _world()
    a, b, c = (build_fingerprint(_labeler(model), x, y, key=k, **TINY)
               for k in (b"k1", b"k1", b"k2"))
    assert np.array_equal(a.points, b.points) and a.labels == b.labels
    assert a.to_dict() == b.to_dict()
    assert not np.array_equal(a.points, c.points)
    assert np.array_equal(a.points, a.points.astype(np.float32))  # what the wire carries
    assert a.labels == _labeler(model)(a.points)


def test_round_trips_through_strict_json() -> None:
    fp = _fp()
    text = json.dumps(fp.to_dict(), allow_nan=False)
    back = Fingerprint.from_dict(json.loads(text))
    answers = _labeler(_world()[0])(fp.points)
    assert fingerprint_test(back, answers) == fingerprint_test(fp, answers)
    with pytest.raises(ConfigurationError):
        Fingerprint.from_dict({"format": "modelfence-fingerprint", "inputs": [[1.0]]})
    with pytest.raises(ConfigurationError):
        Fingerprint.from_dict({"format": "other"})


def test_independent_models_are_not_accused_and_the_weights_are() -> None:
    """Models trained on the same rows, of every family and of the protected model's own
    recipe with other seeds, none used in calibration; the protected model itself (a copy of
    its weights) and a near-copy (same recipe and seed, trained on its labels)."""
    model, x, y, _, _ = _world()
    fp = _fp()
    innocents = [r.labels for r in train_references(x, y, count=20, seed=90_000)]
    with _quiet():
        for s in (501, 502, 503):
            innocents.append(_labeler(recipe_of(model)(s).fit(x, y)))
    worst = min(fingerprint_test(fp, f(fp.points)).log2_p for f in innocents)
    assert worst > -10, worst
    stolen = fingerprint_test(fp, _labeler(model)(fp.points))
    assert stolen.log2_p < -20, stolen
    assert stolen.successes == fp.n and "keyed fingerprint points" in stolen.statement


def test_a_copy_of_the_weights_is_found_after_quantisation() -> None:
    """The protected model's weights stored at half precision (a stolen, repackaged file)."""
    import copy

    model = _world()[0]
    fp = _fp()
    stolen = copy.deepcopy(model)
    mlp = stolen.steps[-1][1]
    mlp.coefs_ = [w.astype(np.float16).astype(np.float64) for w in mlp.coefs_]
    mlp.intercepts_ = [w.astype(np.float16).astype(np.float64) for w in mlp.intercepts_]
    result = fingerprint_test(fp, _labeler(stolen)(fp.points))
    assert result.log2_p < -20, result


def test_log_betabinom_sf_matches_scipy_and_stays_finite() -> None:
    from scipy.stats import betabinom

    for x, n, a, b in [(5, 20, 2.0, 3.0), (0, 10, 1.0, 1.0), (50, 60, 3.5, 30.0),
                       (199, 200, 40.0, 2.0)]:
        # summed from scipy's pmf: its sf (1 - cdf) loses digits in the far tail
        want = math.fsum(float(betabinom.pmf(j, n, a, b)) for j in range(x, n + 1))
        got = math.exp(log_betabinom_sf(x, n, a, b))
        assert got == pytest.approx(want, rel=1e-9, abs=1e-300)
    deep = log_betabinom_sf(1000, 1000, 2.0, 600.0)  # far below the smallest float
    assert math.isfinite(deep) and deep < -1000
    assert log_betabinom_sf(11, 10, 1.0, 1.0) == -math.inf


def test_fitted_null_is_valid_for_a_fresh_model_of_a_seen_family() -> None:
    """Simulated references: families with different mean agreements, models within a family
    over-dispersed. A fresh model of any family gets p <= 0.01 at most 1% of the time."""
    rng = np.random.default_rng(11)
    n, means, sd = 200, (0.2, 0.45, 0.7), 0.05
    false, trials = 0, 3000
    fams = [f"f{i}" for i in range(len(means)) for _ in range(3)]
    for _ in range(trials // 10):
        rates = [rng.normal(means[int(f[1])], sd) for f in fams]
        agree = [int(rng.binomial(n, min(max(r, 0.0), 1.0))) for r in rates]
        null = fit_null(agree, fams, n)
        for _ in range(10):
            f = int(rng.integers(len(means)))
            x = int(rng.binomial(n, min(max(rng.normal(means[f], sd), 0.0), 1.0)))
            log_p = max(log_betabinom_sf(x, n, c.alpha, c.beta) for c in null)
            false += log_p <= math.log(0.01)
    assert false / trials <= 0.01, false / trials


def test_bad_input_is_a_configuration_error() -> None:
    model, x, y, _, _ = _world()
    with pytest.raises(ConfigurationError, match="suspect answers"):
        fingerprint_test(_fp(), ["0"] * 3)
    with pytest.raises(ConfigurationError, match="share no class"):
        build_fingerprint(_labeler(model), x, [f"c{v}" for v in y], key=b"k", **SMALL)
    with pytest.raises(ConfigurationError, match="points"):
        build_fingerprint(_labeler(model), x, y, key=b"k", points=3)


def test_a_deterministic_learner_on_the_same_rows_is_never_accused() -> None:
    """A logistic regression is the same model whenever it sees the same rows: an innocent
    competitor with the protected model's data and algorithm cannot be told from a copy, so
    the fingerprint must not accuse it (it did, at 2^-30, when its references trained on a
    subsample)."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=2600, n_features=12, n_informative=8, n_classes=4,
                               class_sep=1.2, random_state=8)
    victim = LogisticRegression(max_iter=1000).fit(x, y)
    fp = build_fingerprint(_labeler(victim), x, y, key=b"lr", recipe=recipe_of(victim),
                           **{**SMALL, "families": ("lr", "knn", "dt")})
    twin = LogisticRegression(max_iter=1000).fit(x, y)  # an innocent: same data, same learner
    result = fingerprint_test(fp, _labeler(twin)(fp.points))
    assert result.successes == fp.n  # it answers exactly as the protected model does
    assert result.log2_p > -10, result
    assert "agree at least as much as the suspect" in result.statement

"""Reference models: classifiers trained independently of the protected model.

An ownership test is only as honest as its picture of the innocent: a model someone else
trained on the same kind of data, with any algorithm. `train_references` makes such models
from labelled rows, cycling through several scikit-learn families (linear, forests, boosted
trees, nearest neighbours, kernel machines, neural networks of several sizes) and, within a
family, through hyper-parameters and seeds, so that the references spread as widely as
independently trained models do. The same function trained on the protected model's own
labels instead of the true ones gives stand-ins for thieves (surrogate copies).

Each model fits on one thread in a second or two on ~2,000 rows of <= 200 features: they are
trained by the dozen on shared machines (fingerprint calibration, `verify-ownership
--reference-pool`, the benchmark of innocent models).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..extras import require

Array = np.ndarray[Any, Any]

#: Families in the order `train_references` cycles through them.
DEFAULT_FAMILIES: tuple[str, ...] = (
    "lr", "rf", "hgb", "mlp-small", "knn", "et", "mlp-medium", "svc", "mlp-large", "dt")
FAMILIES = frozenset(DEFAULT_FAMILIES)


@dataclass(frozen=True)
class Reference:
    """One fitted model: `labels` answers rows with class names (str), like a suspect."""

    name: str
    family: str
    model: Any

    def labels(self, x: Array) -> list[str]:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            out = self.model.predict(np.asarray(x, dtype=np.float64))
        return [str(v) for v in out]

    def __call__(self, x: Array) -> list[str]:
        return self.labels(x)


def make_reference(family: str, variant: int, seed: int) -> Any:
    """An unfitted classifier of `family`; `variant` picks its hyper-parameters."""
    require("local", "reference models", "sklearn", "threadpoolctl")
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    v = variant
    if family == "lr":
        return make_pipeline(StandardScaler(), LogisticRegression(
            C=(1.0, 0.1, 10.0)[v % 3], max_iter=500, random_state=seed))
    if family == "rf":
        return RandomForestClassifier(n_estimators=(60, 100)[v % 2],
                                      min_samples_leaf=(1, 2, 4)[v % 3],
                                      max_features=("sqrt", 0.5)[(v // 2) % 2], n_jobs=1,
                                      random_state=seed)
    if family == "et":
        return ExtraTreesClassifier(n_estimators=(60, 100)[v % 2],
                                    min_samples_leaf=(1, 2, 3)[v % 3], n_jobs=1,
                                    random_state=seed)
    if family == "hgb":
        return HistGradientBoostingClassifier(
            max_iter=(50, 80, 40)[v % 3], learning_rate=(0.15, 0.1, 0.2)[v % 3],
            max_leaf_nodes=(15, 31)[(v // 3) % 2], max_bins=63, early_stopping=False,
            random_state=seed)
    if family == "knn":
        return make_pipeline(StandardScaler(), KNeighborsClassifier(
            n_neighbors=(5, 10, 20, 3)[v % 4], weights=("uniform", "distance")[(v // 4) % 2]))
    if family == "svc":
        return make_pipeline(StandardScaler(), SVC(C=(1.0, 3.0, 0.3)[v % 3], gamma="scale",
                                                   random_state=seed))
    if family == "dt":
        return DecisionTreeClassifier(max_depth=(None, 12, 8)[v % 3],
                                      min_samples_leaf=(1, 3, 5)[v % 3], random_state=seed)
    if family.startswith("mlp-"):
        sizes = {"mlp-small": ((32,), (24,)), "mlp-medium": ((64,), (128,)),
                 "mlp-large": ((128, 64), (256, 128))}.get(family)
        if sizes is not None:
            return make_pipeline(StandardScaler(), MLPClassifier(
                hidden_layer_sizes=sizes[v % 2], alpha=(1e-4, 1e-3, 1e-2)[v % 3],
                max_iter=200, early_stopping=True, n_iter_no_change=8, random_state=seed))
    raise ConfigurationError(f"unknown reference family {family!r}; use: "
                             f"{', '.join(DEFAULT_FAMILIES)}")


def train_references(x: Array, y: Sequence[Any] | Array, *, count: int, seed: int = 0,
                     families: Sequence[str] = DEFAULT_FAMILIES,
                     subsample: float | None = None) -> list[Reference]:
    """`count` models trained on (x, y), cycling through `families`.

    Model i is of family ``families[i % len(families)]``, with hyper-parameter variant
    ``i // len(families)`` and random seed ``seed + i``. `subsample` (0 < s <= 1) trains
    each model on its own random share of the rows (drawn with seed ``seed + i``), so the
    references also differ in the data they saw; None trains all on every row.
    """
    x = np.asarray(x, dtype=np.float64)
    y_arr = np.asarray([str(v) for v in y], dtype=object)
    if x.ndim != 2 or len(x) != len(y_arr):
        raise ConfigurationError(f"references need rows (n, features) and n labels; got "
                                 f"{x.shape} rows and {len(y_arr)} labels")
    if count < 1:
        raise ConfigurationError("references: count must be at least 1")
    if not families:
        raise ConfigurationError("references: name at least one family")
    unknown = sorted(set(families) - FAMILIES)
    if unknown:
        raise ConfigurationError(f"unknown reference families {unknown}; use: "
                                 f"{', '.join(DEFAULT_FAMILIES)}")
    if subsample is not None and not 0.0 < subsample <= 1.0:
        raise ConfigurationError("references: subsample must be in (0, 1]")
    if len(set(y_arr.tolist())) < 2:
        raise ConfigurationError("references need labelled rows of at least two classes")
    from threadpoolctl import threadpool_limits

    out: list[Reference] = []
    for i in range(count):
        family = families[i % len(families)]
        variant = i // len(families)
        rows = _rows(len(x), y_arr, subsample, seed + i)
        model = make_reference(family, variant, seed + i)
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore")  # convergence warnings of small MLPs and LR
            model.fit(x[rows], y_arr[rows])
        out.append(Reference(f"{family}#{variant}/seed{seed + i}", family, model))
    return out


def train_recipe(x: Array, y: Sequence[Any] | Array, recipe: Callable[[int], Any], *,
                 count: int, seed: int = 0, subsample: float | None = None,
                 family: str = "recipe") -> list[Reference]:
    """`count` models made by `recipe(seed)` (an unfitted estimator: the protected model's own
    algorithm and hyper-parameters) with seeds ``seed + i``: the innocent most like it."""
    x = np.asarray(x, dtype=np.float64)
    y_arr = np.asarray([str(v) for v in y], dtype=object)
    if count < 1 or len(x) != len(y_arr):
        raise ConfigurationError("recipe references: need count >= 1 and one label per row")
    from threadpoolctl import threadpool_limits

    out: list[Reference] = []
    for i in range(count):
        model = recipe(seed + i)
        rows = _rows(len(x), y_arr, subsample, seed + i)
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore")
            model.fit(x[rows], y_arr[rows])
        out.append(Reference(f"{family}/seed{seed + i}", family, model))
    return out


def recipe_of(estimator: Any) -> Callable[[int], Any]:
    """The recipe of a fitted scikit-learn estimator: an unfitted clone whose every
    ``random_state`` is the given seed (a model trained the same way, another draw)."""
    from sklearn.base import clone

    def make(seed: int) -> Any:
        model = clone(estimator)
        states = {k: seed for k in model.get_params(deep=True)
                  if k == "random_state" or k.endswith("__random_state")}
        return model.set_params(**states) if states else model
    return make


def _rows(n: int, y: Array, share: float | None, seed: int) -> Array:
    """All rows, or a random `share` of them that still holds every class."""
    if share is None or share >= 1.0:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    take = max(round(share * n), 2)
    rows = np.sort(rng.permutation(n)[:take])
    missing = sorted(set(y.tolist()) - set(y[rows].tolist()))
    if missing:  # keep one row of each class the draw left out
        extra = [int(np.flatnonzero(y == c)[0]) for c in missing]
        rows = np.sort(np.concatenate([rows, np.asarray(extra, dtype=np.int64)]))
    return rows

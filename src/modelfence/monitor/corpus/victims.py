"""The corpus's victims: models nobody tuned the monitor on, each with the data it serves.

A detector that works on the one model it was built with proves nothing about the model a
user brings, so the corpus spans what users bring: 2 to 20 classes, 5 to 200 features, four
model families, scikit-learn's bundled data sets (recorded at their own precision) and
generators with different structure (linear clusters at several separations, imbalanced
binary scores, isotropic blobs, moons with noise dimensions, concentric shells), some rounded
to a fixed number of decimals as recorded data is, some at full float precision.

The victims come in two halves: detectors and defaults are tuned on ``dev`` only, and the
``test`` half, different data or a different family for every victim, is what gets reported.

`build_world` splits a victim's rows as `modelfence monitor fit` would be used: the model
trains on `TRAIN` of them, the summary is fitted on `FIT` (rows the model did not see, with
the model's own probabilities), `TEST` are never queried (fidelity and accuracy are measured
on them) and the rest is the pool callers, honest or not, draw their natural rows from.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ...errors import ConfigurationError
from ...redteam.victims import LocalVictim
from ..summary import Array, Summary

#: Shares of a victim's rows: model training, summary fit, never-queried test rows; the rest
#: (35%) is the callers' pool.
TRAIN, FIT, TEST = 0.30, 0.20, 0.15
FAMILIES = ("mlp", "gb", "rf", "lr")
HALVES = ("dev", "test")
#: Bundled scikit-learn sets: name → loader in sklearn.datasets.
BUNDLED = {"digits": "load_digits", "wine": "load_wine", "breast_cancer": "load_breast_cancer",
           "iris": "load_iris"}
GENERATORS = ("make_classification", "make_blobs", "make_moons", "make_gaussian_quantiles")


@dataclass(frozen=True)
class VictimSpec:
    """One victim: a unique stable name, how its rows are made, its model family, its half."""

    name: str
    data: str  # "make_classification:rows=8000,classes=5,features=20,sep=1.0,clusters=2"
    family: str  # "mlp" | "gb" | "rf" | "lr"
    half: str  # "dev" | "test"

    @property
    def source(self) -> str:
        return self.data.partition(":")[0]

    @property
    def options(self) -> dict[str, str]:
        return parse_options(self.data)

    @property
    def image_side(self) -> int | None:
        """Side of the square image a row is (8 for digits), None for tabular data."""
        return 8 if self.source == "digits" else None


def parse_options(data: str) -> dict[str, str]:
    text = data.partition(":")[2]
    out: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ConfigurationError(f"victim data {data!r}: {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def _v(name: str, data: str, family: str, half: str) -> VictimSpec:
    return VictimSpec(name, data, family, half)


#: Twelve victims per half. Every test-half victim differs from every dev one in its data
#: (generator settings, sizes, precision) or, for the three bundled sets, in its family.
VICTIMS: tuple[VictimSpec, ...] = (
    # dev ---------------------------------------------------------------------------------
    _v("digits-10c-64f-mlp", "digits", "mlp", "dev"),
    _v("wine-3c-13f-lr", "wine", "lr", "dev"),
    _v("breast-cancer-2c-30f-gb", "breast_cancer", "gb", "dev"),
    _v("clf-5c-20f-sep1-rf", "make_classification:rows=8000,classes=5,features=20,"
       "informative=10,redundant=4,sep=1.0,clusters=2,round=3", "rf", "dev"),
    _v("fraud-2c-30f-gb", "make_classification:rows=12000,classes=2,features=30,"
       "informative=8,redundant=6,repeated=2,sep=1.5,clusters=2,weights=0.97,flip=0.01,"
       "round=2", "gb", "dev"),
    _v("blobs-8c-12f-lr", "make_blobs:rows=6000,classes=8,features=12,std=4.5", "lr", "dev"),
    _v("moons-2c-5f-mlp", "make_moons:rows=6000,noise=0.25,extra=3,round=3", "mlp", "dev"),
    _v("quantiles-4c-8f-gb", "make_gaussian_quantiles:rows=8000,classes=4,features=8",
       "gb", "dev"),
    _v("clf-20c-40f-sep2-mlp", "make_classification:rows=12000,classes=20,features=40,"
       "informative=30,redundant=5,sep=2.0,clusters=1", "mlp", "dev"),
    _v("clf-3c-200f-lr", "make_classification:rows=4000,classes=3,features=200,"
       "informative=20,redundant=20,repeated=10,sep=1.0,clusters=1,round=4", "lr", "dev"),
    _v("clf-2c-10f-sep0.5-rf", "make_classification:rows=8000,classes=2,features=10,"
       "informative=6,redundant=2,sep=0.5,clusters=3,round=2", "rf", "dev"),
    _v("blobs-15c-6f-rf", "make_blobs:rows=9000,classes=15,features=6,std=2.5,round=1",
       "rf", "dev"),
    # test --------------------------------------------------------------------------------
    _v("digits-10c-64f-rf", "digits", "rf", "test"),
    _v("wine-3c-13f-gb", "wine", "gb", "test"),
    _v("breast-cancer-2c-30f-mlp", "breast_cancer", "mlp", "test"),
    _v("clf-6c-25f-sep1.5-gb", "make_classification:rows=9000,classes=6,features=25,"
       "informative=12,redundant=6,sep=1.5,clusters=3,round=2", "gb", "test"),
    _v("fraud-2c-20f-rf", "make_classification:rows=10000,classes=2,features=20,"
       "informative=6,redundant=4,repeated=1,sep=1.0,clusters=3,weights=0.95,flip=0.02,"
       "round=3", "rf", "test"),
    _v("blobs-10c-16f-mlp", "make_blobs:rows=7000,classes=10,features=16,std=4.0,round=3",
       "mlp", "test"),
    _v("moons-2c-8f-gb", "make_moons:rows=7000,noise=0.15,extra=6", "gb", "test"),
    _v("quantiles-3c-6f-mlp", "make_gaussian_quantiles:rows=6000,classes=3,features=6,"
       "round=2", "mlp", "test"),
    _v("clf-20c-30f-sep2-lr", "make_classification:rows=12000,classes=20,features=30,"
       "informative=24,redundant=3,sep=2.0,clusters=1,round=3", "lr", "test"),
    _v("clf-5c-200f-rf", "make_classification:rows=3500,classes=5,features=200,"
       "informative=30,redundant=30,repeated=5,sep=1.5,clusters=1", "rf", "test"),
    _v("clf-12c-50f-sep1.5-lr", "make_classification:rows=10000,classes=12,features=50,"
       "informative=20,redundant=10,sep=1.5,clusters=1", "lr", "test"),
    _v("clf-2c-5f-sep0.8-gb", "make_classification:rows=8000,classes=2,features=5,"
       "informative=4,redundant=1,sep=0.8,clusters=2,weights=0.8,round=1", "gb", "test"),
)


def victims(half: str | None = None) -> tuple[VictimSpec, ...]:
    """The victims of one half (both when `half` is None)."""
    if half is not None and half not in HALVES:
        raise ConfigurationError(f"unknown half {half!r}; use dev or test")
    return tuple(v for v in VICTIMS if half is None or v.half == half)


def victim(name: str) -> VictimSpec:
    for v in VICTIMS:
        if v.name == name:
            return v
    raise ConfigurationError(f"unknown corpus victim {name!r}; use: "
                             f"{', '.join(v.name for v in VICTIMS)}")


# data ------------------------------------------------------------------------------------


def make_data(data: str, seed: int = 0) -> tuple[Array, Array]:
    """Rows (float64) and integer labels 0..k-1 for a victim's `data` spec."""
    source, opts = data.partition(":")[0], parse_options(data)
    rs = (zlib.crc32(data.encode()) + 7919 * seed) % (2**31)
    if source in BUNDLED:
        import sklearn.datasets as ds

        bunch = getattr(ds, BUNDLED[source])()
        x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
    elif source in GENERATORS:
        x, y = _generated(source, opts, rs)
    else:
        raise ConfigurationError(f"victim data {data!r}: use one of "
                                 f"{', '.join((*BUNDLED, *GENERATORS))}")
    if "round" in opts:
        x = np.round(x, int(opts["round"]))
    return x, np.unique(y, return_inverse=True)[1].astype(np.int64)


def _generated(source: str, o: dict[str, str], rs: int) -> tuple[Array, Array]:
    import sklearn.datasets as ds

    def i(key: str, default: int) -> int:
        return int(o.get(key, default))

    def f(key: str, default: float) -> float:
        return float(o.get(key, default))

    n = i("rows", 6000)
    if source == "make_classification":
        k = i("classes", 2)
        weights = [f("weights", 0.0)] if "weights" in o and k == 2 else None
        x, y = ds.make_classification(
            n_samples=n, n_features=i("features", 20), n_informative=i("informative", 10),
            n_redundant=i("redundant", 2), n_repeated=i("repeated", 0), n_classes=k,
            n_clusters_per_class=i("clusters", 2), class_sep=f("sep", 1.0), weights=weights,
            flip_y=f("flip", 0.0), random_state=rs)
    elif source == "make_blobs":
        x, y = ds.make_blobs(n_samples=n, centers=i("classes", 4), n_features=i("features", 8),
                             cluster_std=f("std", 1.0), random_state=rs)
    elif source == "make_moons":
        x2, y = ds.make_moons(n_samples=n, noise=f("noise", 0.2), random_state=rs)
        extra = np.random.default_rng(rs).normal(0.0, 0.5, (n, i("extra", 0)))
        x = np.hstack([x2, extra])
    else:
        x, y = ds.make_gaussian_quantiles(n_samples=n, n_features=i("features", 6),
                                          n_classes=i("classes", 3), random_state=rs)
    return np.asarray(x, dtype=np.float64), np.asarray(y)


# models ----------------------------------------------------------------------------------


def make_model(family: str, seed: int, rows: int = 10_000) -> Any:
    """An unfitted classifier of `family` for `rows` training rows, sized to train in a second
    or two (early stopping only where a tenth of the rows is a validation set)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if family == "mlp":
        return make_pipeline(StandardScaler(), MLPClassifier(
            hidden_layer_sizes=(64,), max_iter=300, early_stopping=rows >= 2000,
            n_iter_no_change=8, random_state=seed))
    if family == "gb":
        return HistGradientBoostingClassifier(max_iter=100, early_stopping=rows >= 2000,
                                              n_iter_no_change=8, random_state=seed)
    if family == "rf":
        return RandomForestClassifier(n_estimators=60, min_samples_leaf=2, n_jobs=1,
                                      random_state=seed)
    if family == "lr":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    raise ConfigurationError(f"unknown model family {family!r}; use: {', '.join(FAMILIES)}")


class OneThread:
    """A model that fits and predicts on one OpenMP thread.

    Gradient boosting spreads even a 300-row fit over every core and, on a busy two-core
    machine, spends 20 times longer spinning than computing; the corpus runs victims side by
    side instead.
    """

    def __init__(self, model: Any) -> None:
        from threadpoolctl import ThreadpoolController

        self.model = model
        self._threads = ThreadpoolController()  # after the model's libraries are loaded

    @property
    def classes_(self) -> Array:
        return np.asarray(self.model.classes_)

    def fit(self, x: Array, y: Array) -> OneThread:
        with self._threads.limit(limits=1):
            self.model.fit(x, y)
        return self

    def predict_proba(self, x: Array) -> Array:
        with self._threads.limit(limits=1):
            out: Array = self.model.predict_proba(x)
        return out


# worlds ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusWorld:
    """A trained victim, the summary `monitor fit` would make, and the rows callers draw."""

    spec: VictimSpec
    victim: LocalVictim
    accuracy: float  # on the test rows
    summary: Summary
    pool_x: Array
    pool_y: Array
    test_x: Array
    test_y: Array


def build_world(spec: VictimSpec, seed: int = 0) -> CorpusWorld:
    """Train, fit and split one victim; the same (spec, seed) gives the same world, and is
    built once per process."""
    return _build(spec, seed)


@lru_cache(maxsize=32)
def _build(spec: VictimSpec, seed: int) -> CorpusWorld:
    x, y = make_data(spec.data, seed)
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    a, b, c = (int(n * TRAIN), int(n * (TRAIN + FIT)), int(n * (TRAIN + FIT + TEST)))
    train, fit, test, pool = order[:a], order[a:b], order[b:c], order[c:]
    classes = np.unique(y)
    if len(np.unique(y[train])) != len(classes) or len(fit) < 32:
        raise ConfigurationError(f"victim {spec.name}: too few rows to split")
    model = OneThread(make_model(spec.family, seed, len(train)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLP convergence and the like
        model.fit(x[train], y[train])
    lv = LocalVictim(model.predict_proba, n_classes=len(classes), n_features=x.shape[1],
                     classes=np.asarray(model.classes_), description=spec.name,
                     dtype=np.float64)
    proba = lv.ask(x[fit]).proba
    assert proba is not None
    summary = Summary.fit(x[fit], proba, cells=min(32, len(fit) // 4), seed=seed,
                          predict=model.predict_proba, truth=y[fit])
    accuracy = float(np.mean(lv.ask(x[test]).labels == y[test]))
    return CorpusWorld(spec, lv, accuracy, summary, x[pool], y[pool], x[test], y[test])

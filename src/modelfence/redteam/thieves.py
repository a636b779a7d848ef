"""Thieves: the copies an attacker trains on the answers it collected.

A label-only thief is a classifier on the victim's decisions. A soft-label thief regresses
the victim's centred log-probabilities (logit matching, Ba & Caruana 2014): for a
softmax-linear victim that is exactly Tramèr et al.'s equation solving, and for others it
uses everything the probabilities say, which is what defenses such as reverse sigmoid aim
to poison. scikit-learn thieves are always available; torch ones come with the [torch]
extra (see `torch_thieves`). Each fit runs single-threaded and seeded, so a fixed seed gives
the same thief.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..errors import ConfigurationError

Array = np.ndarray[Any, Any]

THIEVES = ("lr", "mlp", "torch-mlp", "torch-cnn")
_ALIASES = {"logistic": "lr", "logreg": "lr", "mlp": "mlp", "lr": "lr",
            "torch-mlp": "torch-mlp", "torch-cnn": "torch-cnn", "cnn": "torch-cnn"}
#: Probabilities below this are treated as this in log space: rounding and top-k answers
#: carry exact zeros, and a thief should not chase -inf.
LOG_FLOOR = 1e-6


def soft_targets(proba: Array) -> Array:
    """Centred log-probabilities: the logits up to a per-row constant."""
    t = np.log(np.clip(proba, LOG_FLOOR, None))
    out: Array = t - t.mean(axis=1, keepdims=True)
    return out


class Thief(ABC):
    """A surrogate model; `predict` returns class indices 0..k-1 like the oracle's labels."""

    name: str = "thief"

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._constant: int | None = None

    def fit(self, x: Array, labels: Array, proba: Array | None, n_classes: int) -> Thief:
        """Train on what was stolen; a transcript with one class yields a constant thief."""
        self._constant = None
        if proba is None and len(np.unique(labels)) < 2:
            self._constant = int(labels[0]) if len(labels) else 0
            return self
        with warnings.catch_warnings():
            # a thief stopping at max_iter is the budgeted training we chose, not a bug
            from sklearn.exceptions import ConvergenceWarning
            warnings.simplefilter("ignore", ConvergenceWarning)
            self._fit(x, labels, proba, n_classes)
        return self

    def predict(self, x: Array) -> Array:
        if self._constant is not None:
            return np.full(len(x), self._constant, dtype=np.int64)
        return self._predict(x)

    @abstractmethod
    def _fit(self, x: Array, labels: Array, proba: Array | None, n_classes: int) -> None: ...

    @abstractmethod
    def _predict(self, x: Array) -> Array: ...


class SklearnThief(Thief):
    """Logistic regression or an MLP (one hidden layer of 64), on standardised inputs."""

    def __init__(self, kind: str, seed: int) -> None:
        super().__init__(seed)
        self.kind = kind
        self.name = {"lr": "logistic regression", "mlp": "MLP (scikit-learn)"}[kind]
        self._model: Any = None
        self._soft = False

    def _fit(self, x: Array, labels: Array, proba: Array | None, n_classes: int) -> None:
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.neural_network import MLPClassifier, MLPRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._soft = proba is not None
        est: Any
        if self.kind == "lr":
            est = Ridge(alpha=1e-3) if self._soft else LogisticRegression(max_iter=500)
        elif self._soft:
            # Adam with a fixed number of sample passes: lbfgs on soft targets runs to its
            # iteration cap (no separable optimum), costing 2-3 times more for less fidelity
            epochs = min(80, max(15, math.ceil(40_000 / max(1, len(x)))))
            est = MLPRegressor(hidden_layer_sizes=(64,), alpha=1e-3, batch_size=min(64, len(x)),
                               learning_rate_init=3e-3, max_iter=epochs, tol=0.0,
                               n_iter_no_change=epochs + 1, random_state=self.seed)
        else:
            est = MLPClassifier(hidden_layer_sizes=(64,), solver="lbfgs", alpha=1e-3,
                                max_iter=200, max_fun=400, random_state=self.seed)
        self._model = make_pipeline(StandardScaler(), est)
        self._model.fit(x, soft_targets(proba) if proba is not None else labels)

    def _predict(self, x: Array) -> Array:
        out = np.asarray(self._model.predict(x))
        if self._soft:
            return np.asarray(np.argmax(np.atleast_2d(out), axis=1), dtype=np.int64)
        return out.astype(np.int64)


def make_thief(name: str, seed: int, *, n_features: int | None = None) -> Thief:
    """A fresh thief by name: lr, mlp, torch-mlp or torch-cnn."""
    kind = _ALIASES.get(name.lower())
    if kind is None:
        raise ConfigurationError(f"unknown thief {name!r}; use one of: {', '.join(THIEVES)}")
    if kind in ("lr", "mlp"):
        return SklearnThief(kind, seed)
    from .torch_thieves import TorchThief

    return TorchThief(kind.removeprefix("torch-"), seed, n_features=n_features)


def check_thief(name: str) -> None:
    """Fail early (before any query) if a thief's optional dependency is missing."""
    kind = _ALIASES.get(name.lower())
    if kind is None:
        raise ConfigurationError(f"unknown thief {name!r}; use one of: {', '.join(THIEVES)}")
    if kind.startswith("torch-"):
        from .torch_thieves import require_torch

        require_torch()

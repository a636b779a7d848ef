"""Jacobian-based dataset augmentation (Papernot et al., "Practical Black-Box Attacks against
Machine Learning", AsiaCCS 2017).

An attacker with only a handful of natural rows grows them: each round trains a substitute
on what it has, then moves every known row a step ``lambda * sign(dF_y/dx)`` along the
gradient of the substitute's probability for the victim's label y, and asks the victim
about the moved rows. Rows double each round, probing the decision boundaries near the
seeds; lambda changes sign every `TAU` rounds (the paper's periodic step size) so the rows
do not run away. When a round would overrun the budget, a random subset is asked
(the paper's reservoir sampling).

The substitute is an MLP with one hidden ReLU layer; its input gradient is computed here in
numpy from scikit-learn's weights, so no autograd library is needed.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..data import Pool
from ..victims import Recorder
from .base import Attack

Array = np.ndarray[Any, Any]


class JacobianAugmentation(Attack):
    kind = "jacobian"
    title = "Jacobian augmentation"
    reference = "Papernot et al., Practical Black-Box Attacks, AsiaCCS 2017"
    STEP = 0.1  # lambda, as a share of each feature's range
    TAU = 3

    def collect(self, rec: Recorder, pool: Pool) -> None:
        k = rec.oracle.n_classes
        lo, hi = pool.bounds()
        seeds = min(rec.remaining, len(pool.x), max(5 * k, rec.remaining // 20))
        rec.ask(pool.x[self.rng.permutation(len(pool.x))[:seeds]])
        step = self.STEP * (hi - lo)
        rounds = 0
        while rec.remaining:
            x, labels, _ = rec.transcript()
            direction = self._gradient_sign(x, labels)
            moved = np.clip(x + step * direction, lo, hi)
            if len(moved) > rec.remaining:
                moved = moved[np.sort(self.rng.choice(len(moved), rec.remaining, replace=False))]
            rec.ask(moved)
            rounds += 1
            if rounds % self.TAU == 0:
                step = -step

    def _gradient_sign(self, x: Array, labels: Array) -> Array:
        """sign(d p_label / dx) under a freshly trained substitute (random signs if it can't)."""
        if len(np.unique(labels)) < 2:
            signs: Array = self.rng.choice([-1.0, 1.0], size=x.shape)
            return signs
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        mean = x.mean(axis=0)
        scale = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        sub = MLPClassifier(hidden_layer_sizes=(64,), solver="lbfgs", alpha=1e-3, max_iter=200,
                            random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sub.fit((x - mean) / scale, labels)
        grad = mlp_input_gradient(sub, (x - mean) / scale, labels) / scale
        out: Array = np.sign(grad)
        return out


def mlp_input_gradient(mlp: Any, z: Array, labels: Array) -> Array:
    """d p_c / d z for each row's class c, through scikit-learn MLP weights (ReLU hidden)."""
    weights, biases = mlp.coefs_, mlp.intercepts_
    acts = [z]
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        acts.append(np.maximum(acts[-1] @ w + b, 0.0))
    out = acts[-1] @ weights[-1] + biases[-1]
    classes = np.asarray(mlp.classes_)
    col = np.searchsorted(classes, labels)
    rows = np.arange(len(z))
    if out.shape[1] == 1:  # binary: one logistic unit for classes_[1]
        p1 = 1.0 / (1.0 + np.exp(-out[:, 0]))
        sign = np.where(col == 1, 1.0, -1.0)
        delta = (sign * p1 * (1.0 - p1))[:, None]
    else:
        e = np.exp(out - out.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        onehot = np.zeros_like(p)
        onehot[rows, col] = 1.0
        delta = p[rows, col][:, None] * (onehot - p)
    for i in range(len(weights) - 1, 0, -1):
        delta = (delta @ weights[i].T) * (acts[i] > 0)
    grad: Array = delta @ weights[0].T
    return grad

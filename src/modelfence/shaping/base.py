"""Output defenses over a probability matrix, and the simple ones: rounding, top-k, label-only.

A defense maps what the model computed (an ``[n, classes]`` matrix of probabilities) to what
a caller is shown. Every defense here keeps the top-1 class, so the answer a benign caller
acts on does not change while the extra information a thief trains on (the shape of the
distribution) shrinks. They are pure: the same input, principal and secret always give the
same output, which the gateway (output shaping) and the red team (assessment) both rely on.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigurationError

Array = np.ndarray[Any, Any]
#: ufunc reductions: a third of the time of ``p.min()`` / ``p.sum()`` on one answer, which
#: matters at the gateway's ~20 µs budget per shaped answer
_MIN, _SUM = np.minimum.reduce, np.add.reduce
_SMALL = 256


def as_probabilities(proba: Any) -> Array:
    """Check and copy: a finite, non-negative ``[n, classes]`` matrix as float64."""
    p = np.array(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected probabilities of shape [n, classes>=2], got {list(p.shape)}")
    # a NaN or an infinity makes the sum fail `< inf`; on one answer, Python's min and sum
    # over a list take half the time of numpy's reductions
    if p.size <= _SMALL:
        values = p.ravel().tolist()
        ok = not values or (min(values) >= 0.0 and sum(values) < math.inf)
    else:
        ok = bool(_MIN(p, axis=None) >= 0.0 and _SUM(p, axis=None) < np.inf)
    if not ok:
        raise ValueError("probabilities must be finite and non-negative")
    return p


def normalise(p: Array) -> Array:
    """Rows scaled to sum to 1; an all-zero row becomes uniform rather than NaN."""
    s = _SUM(p, axis=1, keepdims=True)
    if _MIN(s, axis=None) > 0:
        fast: Array = p / s
        return fast
    out: Array = np.divide(p, s, out=np.full_like(p, 1.0 / p.shape[1]), where=s > 0)
    return out


def shaped_labels(original: Array, shaped: Array) -> Array:
    """The class a caller is told: the shaped top-1, the original's where it ties for the top.

    Rounding can tie the top class with another; the label then stays the model's.
    """
    top = original.argmax(axis=1)
    rows = np.arange(len(top))
    keep = shaped[rows, top] >= np.maximum.reduce(shaped, axis=1)
    out: Array = np.where(keep, top, shaped.argmax(axis=1))
    return out


class Defense(ABC):
    """One output defense. Subclasses implement `_shape`; `apply` does the shared checks.

    `inputs` and `principal` are only read by defenses keyed on who asked what (keyed
    noise); the others ignore them, so every defense can be called the same way.
    """

    kind: ClassVar[str]
    uses_inputs: ClassVar[bool] = False
    #: `spec` and `description` as format strings over the defense's attributes
    #: (``"round:{decimals}"``); a defense that composes them otherwise overrides both.
    SPEC: ClassVar[str]
    DESCRIPTION: ClassVar[str] = ""

    def apply(self, proba: Any, *, inputs: Any = None, principal: str = "") -> Array:
        p = as_probabilities(proba)
        self.check(p.shape[1])
        if self.uses_inputs and (inputs is None or len(inputs) != p.shape[0]):
            raise ValueError(f"{self.kind} needs the inputs, one row per probability row")
        return self._shape(p, inputs, principal)

    def check(self, n_classes: int) -> None:
        """Refuse settings that cannot work for a model with `n_classes` classes."""
        return None

    @abstractmethod
    def _shape(self, p: Array, inputs: Any, principal: str) -> Array: ...

    @property
    def spec(self) -> str:
        """The short form `parse_defense` reads back, e.g. ``round:2``."""
        return self.SPEC.format_map(vars(self))

    @property
    def description(self) -> str:
        return self.DESCRIPTION.format_map(vars(self)) if self.DESCRIPTION else self.spec

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"


class NoDefense(Defense):
    """The model's own probabilities: the baseline every other defense is compared with."""

    kind = "none"
    SPEC, DESCRIPTION = "none", "no defense: full probabilities"

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        return p


class Rounding(Defense):
    """Probabilities rounded to `decimals` places (Tramèr et al. 2016's first countermeasure).

    Cheap and harmless to callers, but it only hides the low digits: a label-only thief
    loses nothing, and equation solving loses its exactness, not its direction.
    """

    kind = "round"
    SPEC, DESCRIPTION = "round:{decimals}", "probabilities rounded to {decimals} decimals"

    def __init__(self, decimals: int) -> None:
        if not 0 <= decimals <= 8:
            raise ConfigurationError(f"round: decimals must be 0..8, got {decimals}")
        self.decimals = decimals

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        out: Array = p.round(self.decimals)
        return out


class TopK(Defense):
    """Only the `k` most likely classes, renormalised; the others read as 0.

    Classes tied with the k-th are kept too (no arbitrary pick among equals); ties carry no
    more than the tied value, and the cut is one partition rather than a full sort.
    """

    kind = "topk"
    SPEC, DESCRIPTION = "topk:{k}", "top-{k} classes only, renormalised"

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ConfigurationError(f"topk: k must be at least 1, got {k}")
        self.k = k

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        if self.k >= p.shape[1]:
            return p
        kth = np.partition(p, -self.k, axis=1)[:, -self.k, None]
        return normalise(np.where(p >= kth, p, 0.0))


class LabelOnly(Defense):
    """A one-hot vector for the top class: the caller learns the decision and nothing else."""

    kind = "labels"
    SPEC, DESCRIPTION = "labels", "label only (one-hot)"

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        out = np.zeros_like(p)
        out[np.arange(p.shape[0]), p.argmax(axis=1)] = 1.0
        return out

"""What every attack shares: a name and variant, the query loop's helpers, the surrogate hook.

An attack decides *which* rows to ask; the `Recorder` counts and keeps the answers; a thief
is trained on them afterwards. Because queries are chosen in order and never revised, the
first b queries of one run are exactly what an attacker with budget b would have sent under
the same plan, so one run to the largest budget yields the whole fidelity-vs-budget curve,
one thief per budget.

The label-only variant sees only the victim's decisions (the oracle is wrapped so that the
probabilities never reach the attack); the soft-label variant also sees the probabilities
and trains a soft-label thief on them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np

from ...errors import ConfigurationError
from ..data import Pool
from ..thieves import Thief
from ..victims import Recorder

Array = np.ndarray[Any, Any]
VARIANTS = ("soft", "labels")
#: Rows generated around pool rows when a budget outgrows the pool: noise of this share of
#: each feature's range, clipped to the range.
JITTER = 0.05


class Predictor(Protocol):
    def predict(self, x: Array) -> Array: ...


ThiefFactory = Callable[[], Thief]


class Attack(ABC):
    """One extraction strategy. Subclasses implement `collect`; some also `surrogate`."""

    kind: ClassVar[str]
    title: ClassVar[str]
    reference: ClassVar[str]

    def __init__(self, variant: str, seed: int) -> None:
        if variant not in VARIANTS:
            raise ConfigurationError(f"unknown variant {variant!r}; use soft or labels")
        self.variant = variant
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @property
    def soft(self) -> bool:
        return self.variant == "soft"

    @property
    def name(self) -> str:
        return self.kind if self.soft else f"{self.kind}:labels"

    @abstractmethod
    def collect(self, rec: Recorder, pool: Pool) -> None:
        """Ask rows until `rec.remaining` is 0 (or the endpoint refuses: the error propagates)."""

    def thief_name(self, thief: Thief) -> str:
        return thief.name

    def surrogate(self, x: Array, labels: Array, proba: Array | None, n_classes: int,
                  thief: ThiefFactory) -> Predictor:
        """The copy trained on the first queries; the default trains the chosen thief."""
        return thief().fit(x, labels, proba, n_classes)

    # helpers shared by several attacks ---------------------------------------------------

    def jitter(self, pool: Pool, n: int) -> Array:
        """`n` rows near random pool rows, for budgets larger than the pool."""
        lo, hi = pool.bounds()
        base = pool.x[self.rng.integers(0, len(pool.x), n)]
        noise = self.rng.standard_normal(base.shape) * JITTER * (hi - lo)
        out: Array = np.clip(base + noise, lo, hi)
        return out

    def uniform(self, pool: Pool, n: int) -> Array:
        lo, hi = pool.bounds()
        out: Array = self.rng.uniform(lo, hi, size=(n, len(lo)))
        return out


def fit_proxy(x: Array, labels: Array, seed: int) -> Any:
    """A quick logistic regression the adaptive attacks steer by (None with one class)."""
    if len(np.unique(labels)) < 2:
        return None
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=100))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, labels)
    return model


def proxy_proba(model: Any, x: Array, n_classes: int) -> Array:
    """The proxy's probabilities spread over all k classes (it may have seen fewer)."""
    out = np.zeros((len(x), n_classes))
    out[:, np.asarray(model.classes_, dtype=np.int64)] = model.predict_proba(x)
    return out

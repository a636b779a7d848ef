"""One risk per caller from many detectors, and the bounded table of callers.

Detector scores are calibrated alike (0 for what benign traffic shows, 1 for far beyond it),
so they combine by noisy-OR, 1 - prod(1 - s_i): any one detector that is sure makes the
risk sure, and several half-sure detectors add up, as independent evidence would. Each
detector's contribution is reported with its explanation, so a denial can say why.

The caller table is an LRU dict capped at `max_principals`; with each caller's state fixed in
size, the monitor's memory is bounded by settings alone. Sharing state across replicas
(through `stores/`) is the next step and not done here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigurationError
from .detectors import DETECTORS, Detector, Reading
from .summary import Array, Summary


@dataclass(frozen=True)
class MonitorSettings:
    """Monitor settings; moves into config.py when the monitor is wired into the gateway."""

    detectors: tuple[str, ...] = ("prada", "boundary", "duplicates", "ood", "coverage")
    threshold: float = 0.5  # risk at or above which a caller is flagged
    max_principals: int = 10_000

    def __post_init__(self) -> None:
        unknown = sorted(set(self.detectors) - set(DETECTORS))
        if unknown:
            raise ConfigurationError(
                f"unknown monitor detector(s) {unknown}; use: {', '.join(sorted(DETECTORS))}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigurationError("monitor threshold must be in (0, 1]")
        if self.max_principals < 1:
            raise ConfigurationError("monitor max_principals must be at least 1")


@dataclass(frozen=True)
class Risk:
    """A caller's risk, whether it crosses the threshold, and each detector's part in it."""

    score: float
    flagged: bool
    queries: int
    readings: dict[str, Reading] = field(default_factory=dict)

    def explain(self) -> str:
        parts = [f"{n} {r.score:.2f} ({r.why})" for n, r in self.readings.items() if r.score > 0]
        return "; ".join(parts) or "no detector raised"


def combine(readings: dict[str, Reading]) -> float:
    """Noisy-OR of the detector scores."""
    keep = 1.0
    for r in readings.values():
        keep *= 1.0 - min(1.0, max(0.0, r.score))
    return 1.0 - keep


class CallerState:
    """All detectors for one caller, plus a query count."""

    def __init__(self, summary: Summary, names: tuple[str, ...]) -> None:
        self.detectors: dict[str, Detector] = {n: DETECTORS[n](summary) for n in names}
        self.queries = 0

    @property
    def nbytes(self) -> int:
        return sum(d.nbytes for d in self.detectors.values())


class Monitor:
    """Per-principal extraction monitoring for one model."""

    def __init__(self, summary: Summary, settings: MonitorSettings | None = None) -> None:
        self.summary = summary
        self.settings = settings or MonitorSettings()
        self._callers: OrderedDict[str, CallerState] = OrderedDict()

    def _state(self, principal: str) -> CallerState:
        state = self._callers.get(principal)
        if state is None:
            state = CallerState(self.summary, self.settings.detectors)
            self._callers[principal] = state
            while len(self._callers) > self.settings.max_principals:
                self._callers.popitem(last=False)
        else:
            self._callers.move_to_end(principal)
        return state

    def observe(self, principal: str, features: Array, proba: Array) -> None:
        """Record answered rows [n, d] and their probabilities [n, k] for `principal`."""
        x = np.asarray(features, dtype=np.float64)
        p = np.asarray(proba, dtype=np.float64)
        if x.ndim == 1:
            x, p = x[None, :], p.reshape(1, -1)
        if (x.ndim != 2 or p.ndim != 2 or x.shape[1] != self.summary.n_features
                or p.shape != (len(x), self.summary.n_classes)):
            raise ConfigurationError(
                f"monitor expects rows of {self.summary.n_features} features with "
                f"{self.summary.n_classes} probabilities each; got {x.shape} and {p.shape}")
        z = self.summary.transform(x)
        state = self._state(principal)
        for det in state.detectors.values():
            det.observe(z, p)
        state.queries += len(x)

    def risk(self, principal: str) -> Risk:
        """The caller's current risk (0 for an unknown caller); does not create state."""
        state = self._callers.get(principal)
        if state is None:
            return Risk(0.0, False, 0)
        readings = {n: d.score() for n, d in state.detectors.items()}
        score = combine(readings)
        return Risk(score, score >= self.settings.threshold, state.queries, readings)

    def state_bytes(self, principal: str) -> int:
        state = self._callers.get(principal)
        return 0 if state is None else state.nbytes

    def __len__(self) -> int:
        return len(self._callers)

"""Extraction detectors: each watches one caller's queries and says how unlike use they look.

Every detector sees rows already standardized by the model's `Summary` and the model's
probabilities for them, keeps fixed-size numpy ring buffers (so a caller with a million
queries costs what one with a few hundred does), and scores in [0, 1], where 0 is "as benign
traffic looks" and 1 is "certainly not use". Scores ramp between two z-values of a
statistic against the benign expectation, so a threshold means the same for every detector.

- `DistanceNormality`: PRADA (Juuti et al., "PRADA: Protecting against DNN Model Stealing
  Attacks", EuroS&P 2019). Natural queries' distances to a caller's earlier queries of the
  same predicted class are roughly normal; synthetic ones (perturbations of few seeds, random
  points) are not. A Shapiro-Wilk W below the benign range raises the score.
- `BoundaryProbing`: many extraction attacks (Tramèr et al. 2016 line search; active
  learning; Jacobian augmentation, Papernot et al. 2017) ask where the model is unsure.
- `NearDuplicates`: stateful detection of black-box attacks (Chen, Carlini and Wagner,
  "Stateful Detection of Black-Box Adversarial Attacks", 2020): many queries close to recent ones.
- `OutOfDistribution`: synthetic queries fall outside the data (uniform random rows, pushed
  augmentations); the share beyond the data's own 99th-percentile radius is compared with 1%.
- `Coverage`: a thief covers every region and class faster than a user drawing from the data
  distribution would; distinct cells in the last window vs the iid expectation.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from .summary import Array, Summary, expected_distinct, top1_margin

#: z-values between which a score ramps from 0 to 1.
Z_LOW, Z_HIGH = 4.0, 7.0
#: Standardized distances at or below this are the same row sent again.
EXACT = 1e-9


@dataclass(frozen=True)
class Reading:
    """One detector's verdict: a score in [0, 1] and why, in a few words."""

    score: float
    why: str


def ramp(z: float, low: float = Z_LOW, high: float = Z_HIGH) -> float:
    return float(min(1.0, max(0.0, (z - low) / (high - low))))


def share_excess(hits: int, n: int, base: float) -> float:
    """z of an observed share `hits/n` against a benign share `base` (binomial)."""
    if n == 0:
        return 0.0
    base = min(max(base, 0.01), 0.99)
    return (hits / n - base) / float(np.sqrt(base * (1.0 - base) / n))


class Ring:
    """A fixed-size ring buffer of rows (or scalars): the whole of a detector's memory."""

    def __init__(self, size: int, width: int = 0, dtype: Any = np.float64) -> None:
        self.data: Array = np.zeros((size, width) if width else size, dtype=dtype)
        self.size, self.count, self.head = size, 0, 0

    def push(self, value: Any) -> None:
        self.data[self.head] = value
        self.head = (self.head + 1) % self.size
        self.count = min(self.count + 1, self.size)

    def view(self) -> Array:
        """The filled part (order is not kept; no detector needs it)."""
        return self.data[: self.count]

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


class Detector(ABC):
    """One signal of extraction for one caller; `observe` updates, `score` reads."""

    name: str = "detector"

    def __init__(self, summary: Summary) -> None:
        self.summary = summary

    def observe(self, features: Array, proba: Array) -> None:
        """Take standardized rows [n, d] and the model's probabilities [n, k], in order."""
        for i in range(len(features)):
            self._one(features[i], proba[i])

    @abstractmethod
    def _one(self, z: Array, p: Array) -> None: ...

    @abstractmethod
    def score(self) -> Reading: ...

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of per-caller state: constant once the buffers are full."""


class DistanceNormality(Detector):
    """PRADA: Shapiro-Wilk on the minimum distances to earlier same-class queries."""

    name = "prada"

    #: W this far below the benign floor scores 1.
    SPREAD = 0.12

    def __init__(self, summary: Summary, *, per_class: int = 64, window: int = 128,
                 min_n: int = 64) -> None:
        super().__init__(summary)
        d = summary.n_features
        self.seen = [Ring(per_class, d) for _ in range(summary.n_classes)]
        self.dmin = Ring(window)
        self.w_benign, self.min_n = summary.prada_w, min_n
        self.w_attack = self.w_benign - self.SPREAD

    @classmethod
    def calibrate(cls, summary: Summary, z: Array, proba: Array, seed: int,
                  replays: int = 8, slack: float = 0.02) -> float:
        """PRADA's threshold delta: the lowest W over replays of benign rows, less a slack.

        Natural data is not exactly normal in this test either (Juuti et al. set delta per
        data set for that reason), so the benign floor is measured, not assumed.
        """
        rng = np.random.default_rng(seed)
        lowest = 1.0
        for _ in range(replays):
            det = cls(summary)
            for i in rng.permutation(len(z)):
                det._one(z[i], proba[i])
                d = det.dmin.view()
                if len(d) >= det.min_n and np.ptp(d) > 1e-12:
                    lowest = min(lowest, det._w(d))
        return lowest - slack

    @staticmethod
    def _w(d: Array) -> float:
        from scipy.stats import shapiro

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(shapiro(d).statistic)

    def _one(self, z: Array, p: Array) -> None:
        ring = self.seen[int(p.argmax())]
        if ring.count:
            d = float(np.sqrt(((ring.view() - z) ** 2).sum(axis=1).min()))
            if d <= EXACT:  # a repeat teaches nothing new; it would only skew the test
                return
            self.dmin.push(d)
        ring.push(z)

    def score(self) -> Reading:
        d = self.dmin.view()
        if len(d) < self.min_n or np.ptp(d) <= 1e-12:
            return Reading(0.0, f"{len(d)} distances, too few to test")
        w = self._w(d)
        s = min(1.0, max(0.0, (self.w_benign - w) / (self.w_benign - self.w_attack)))
        return Reading(s, f"Shapiro-Wilk W={w:.3f} on {len(d)} min distances "
                          f"(benign floor {self.w_benign:.3f})")

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.seen) + self.dmin.nbytes


class _ShareDetector(Detector):
    """A windowed share of flagged queries against the benign share."""

    base: float = 0.01
    what: str = "flagged"

    def __init__(self, summary: Summary, *, window: int = 200, min_n: int = 20) -> None:
        super().__init__(summary)
        self.flags = Ring(window, dtype=np.bool_)
        self.min_n = min_n

    def score(self) -> Reading:
        f = self.flags.view()
        n, hits = len(f), int(f.sum())
        if n < self.min_n:
            return Reading(0.0, f"{n} queries, too few")
        z = share_excess(hits, n, self.base)
        return Reading(ramp(z), f"{hits}/{n} {self.what} (benign {self.base:.1%}), z={z:.1f}")

    @property
    def nbytes(self) -> int:
        return self.flags.nbytes


class BoundaryProbing(_ShareDetector):
    """Share of queries with a top-1 margin below the summary's cut."""

    name = "boundary"
    what = "near the boundary"

    def __init__(self, summary: Summary, **kw: Any) -> None:
        super().__init__(summary, **kw)
        self.base = max(summary.boundary_share, 0.02)

    def _one(self, z: Array, p: Array) -> None:
        self.flags.push(bool(top1_margin(p[None, :])[0] < self.summary.margin_cut))


class OutOfDistribution(_ShareDetector):
    """Share of queries farther from every k-means centroid than 99% of the data."""

    name = "ood"
    what = "out of distribution"
    base = 0.02  # 1% by construction, doubled for data drift between fit and use

    def _one(self, z: Array, p: Array) -> None:
        _, dist = self.summary.nearest_cell(z[None, :])
        self.flags.push(bool(dist[0] > self.summary.ood_radius))


class NearDuplicates(_ShareDetector):
    """Share of queries within `dup_radius` of one of the caller's last `memory` queries.

    Exact repeats do not count: re-sending a row reveals nothing new to a thief, and benign
    clients retry. Near-but-different rows are what perturbation-based searches send.
    """

    name = "duplicates"
    what = "near-duplicates"
    base = 0.02

    def __init__(self, summary: Summary, *, memory: int = 256, **kw: Any) -> None:
        super().__init__(summary, **kw)
        self.recent = Ring(memory, summary.n_features)

    def _one(self, z: Array, p: Array) -> None:
        past = self.recent.view()
        d2 = float(((past - z) ** 2).sum(axis=1).min()) if len(past) else np.inf
        # an exact repeat (a retry, a cache miss) tells a thief nothing; a small step does
        self.flags.push(EXACT**2 < d2 < self.summary.dup_radius**2)
        self.recent.push(z)

    @property
    def nbytes(self) -> int:
        return self.flags.nbytes + self.recent.nbytes


class Coverage(Detector):
    """Distinct k-means cells and classes in the last window vs iid draws from the data."""

    name = "coverage"

    def __init__(self, summary: Summary, *, window: int | None = None) -> None:
        super().__init__(summary)
        cells, k = len(summary.cell_freq), summary.n_classes
        self.cells = Ring(window or cells, dtype=np.int32)
        self.classes = Ring(window or max(k, 2), dtype=np.int32)
        self.expect = {
            "cells": expected_distinct(summary.cell_freq, self.cells.size),
            "classes": expected_distinct(summary.class_freq, self.classes.size),
        }

    def _one(self, z: Array, p: Array) -> None:
        cell, _ = self.summary.nearest_cell(z[None, :])
        self.cells.push(int(cell[0]))
        self.classes.push(int(p.argmax()))

    def score(self) -> Reading:
        best, why = 0.0, "window not full"
        for label, ring in (("cells", self.cells), ("classes", self.classes)):
            if ring.count < ring.size:
                continue
            seen = len(np.unique(ring.view()))
            mean, sd = self.expect[label]
            z = (seen - mean) / sd
            if ramp(z) >= best:
                best = ramp(z)
                why = f"{seen} distinct {label} in {ring.size} (benign {mean:.1f}±{sd:.1f})"
        return Reading(best, why)

    @property
    def nbytes(self) -> int:
        return self.cells.nbytes + self.classes.nbytes


DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (DistanceNormality, BoundaryProbing, NearDuplicates, OutOfDistribution, Coverage)
}

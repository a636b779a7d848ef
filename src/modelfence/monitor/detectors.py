"""Extraction detectors: each watches one caller's queries and says how unlike use they look.

Every detector sees rows already standardized by the model's `Summary` (float32) and the
model's probabilities for them, keeps bounded ring buffers that grow with the caller's
queries up to their sizes (so a caller with a million queries costs what one with a few
thousand does, and one with a few queries a few kilobytes: `rings`), and scores in [0, 1],
where 0 is "as benign traffic looks" and 1 is "certainly not use". Scores ramp between two
z-values of a statistic against the benign expectation, so a threshold means the same for
every detector.

A row the caller sent moments ago, unchanged, teaches a thief nothing, while benign clients
retry and refresh all the time; the monitor drops such repeats (`Repeats`) before every
detector but `VolumeVelocity`, which counts load. So a rare row sent three times counts once.

- `DistanceNormality`: PRADA (Juuti et al., "PRADA: Protecting against DNN Model Stealing
  Attacks", EuroS&P 2019). Natural queries' distances to a caller's earlier queries of the
  same predicted class are roughly normal; synthetic ones (perturbations of few seeds, random
  points) are not. A Shapiro-Wilk W below the benign range raises the score.
- `BoundaryProbing`: many extraction attacks (Tramèr et al. 2016 line search; active
  learning, Chandrasekaran et al. 2020; Jacobian augmentation, Papernot et al. 2017) ask
  where the model is unsure: margins low for the class the model answers.
- `NearDuplicates`: stateful detection of black-box attacks (Chen, Carlini and Wagner,
  "Stateful Detection of Black-Box Adversarial Attacks", 2020): many queries closer to recent
  ones than natural rows of the same class come.
- `OutOfDistribution`: synthetic queries fall outside the data (uniform random rows, pushed
  augmentations); the share beyond the data's own 99th-percentile radius is compared with 1%.
- `Coverage`: a thief covers every region and class faster than a user drawing from the data
  distribution would; distinct cells in the last window vs the iid expectation.
- `VolumeVelocity`: how much and how fast, against the caller's own history and its peers
  (the model's other callers, through a shared `PeerStats`). Weak evidence on its own.

A detector's whole state is `state()`: named numpy arrays, restored with `load`, so a
monitor can be snapshotted without pickle. Rows are kept as float32 (half the memory; a
distance's seventh digit decides nothing here). A one-row observe is what the request path
pays for, and on it numpy's per-call overhead, not arithmetic, is the cost: a nearest-row
search is one matrix-vector product against cached row norms (`nearest`), labels and margins
are read in plain Python, what the detectors read of a row (cell, naturalness, answer, norm)
is computed once per observe for a caller and its tenant (`facts`, through `take`), and a
reading's explanation is only formatted when someone reads it.

The detectors live by kind: the shared base in `detector_base`, PRADA in `prada`, the
share detectors in `shares`, volume and peers in `volume`, coverage here; this module is
the registry (`DETECTORS`) and the names other modules import.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Self

import numpy as np

from . import null
from .detector_base import (
    Z_HIGH,
    Z_LOW,
    Detector,
    Reading,
    Repeats,
    log_ramp,
    ramp,
    share_excess,
)
from .facts import Cells, Rows
from .prada import DistanceNormality
from .rings import Ring, _bad_state
from .shares import (
    BoundaryProbing,
    Flips,
    OutOfDistribution,
    Shared,
    ShareWindow,
    Synthetic,
)
from .summary import Array, Summary, expected_distinct
from .volume import PeerStats, VolumeVelocity

__all__ = [
    "DETECTORS", "RETIRED", "Z_HIGH", "Z_LOW", "BoundaryProbing", "Coverage", "Detector",
    "DistanceNormality", "Flips", "OutOfDistribution", "PeerStats", "Reading", "Repeats",
    "ShareWindow", "Shared", "Synthetic", "VolumeVelocity", "log_ramp", "ramp", "share_excess",
]


class _Distinct:
    """How many distinct values a ring of small ints holds, kept as values come and go."""

    def __init__(self, ring: Ring, values: int) -> None:
        self.ring, self.counts, self.distinct = ring, [0] * values, 0

    def push(self, value: int) -> None:
        ring, counts = self.ring, self.counts  # `Ring.push`, inlined: two a row, every caller
        head = ring.head
        if head == ring.cap:  # storage full before the first wrap
            ring.grow()
        if ring.count == ring.size:
            old = int(ring.data[head])
            counts[old] -= 1
            self.distinct -= counts[old] == 0
        else:
            ring.count += 1
        ring.data[head] = value
        ring.head = (head + 1) % ring.size
        counts[value] += 1
        self.distinct += counts[value] == 1

    def recount(self, values: int) -> None:
        held = self.ring.view()
        if len(held) and not (held.min() >= 0 and held.max() < values):
            raise _bad_state("coverage value out of range")
        self.counts = np.bincount(held, minlength=values).tolist()
        self.distinct = sum(c > 0 for c in self.counts)


class Coverage(Detector):
    """Distinct k-means cells and classes in the last window vs iid draws from the data.

    The classes' window holds `CLASS_ROWS` rows per class (at least `MIN_WINDOW`): with one
    row per class, a binary model with a rare class would call every caller who meets both
    classes a prober. A count's sd is at least `MIN_SD` (counts are whole numbers), and the
    score ramps from `Summary.coverage_z0`, beyond the honest callers simulated at fit.
    """

    name = "coverage"
    CLASS_ROWS, MIN_WINDOW, MIN_SD = 4, 16, 0.5

    def __init__(self, summary: Summary, *, window: int | None = None,
                 cells: Cells | None = None) -> None:
        super().__init__(summary)
        self.cell_of = cells or Cells(summary)
        n_cells, k = len(summary.cell_freq), summary.n_classes
        sizes = self.windows(n_cells, k)
        self.cells = Ring(window or sizes[0], dtype=np.int32)
        self.classes = Ring(window or sizes[1], dtype=np.int32)
        self.distinct = {"cells": _Distinct(self.cells, n_cells),
                         "classes": _Distinct(self.classes, k)}
        self.expect = {
            "cells": self.expected(summary.cell_freq, self.cells.size),
            "classes": self.expected(summary.class_freq, self.classes.size),
        }
        self.z0 = summary.coverage_z0
        # what `score` reads of each window, gathered once (loading a state refills the
        # rings and counts in place)
        self._windows = tuple((label, ring, self.distinct[label], self.expect[label])
                              for label, ring in (("cells", self.cells),
                                                  ("classes", self.classes)))

    @classmethod
    def windows(cls, n_cells: int, k: int) -> tuple[int, int]:
        """Window sizes: (cells, classes)."""
        return n_cells, max(cls.CLASS_ROWS * k, cls.MIN_WINDOW)

    @classmethod
    def expected(cls, freq: Array, n: int) -> tuple[float, float]:
        mean, sd = expected_distinct(freq, n)
        return mean, max(sd, cls.MIN_SD)

    @classmethod
    def null(cls, cells: Array, labels: Array, cell_freq: Array, class_freq: Array,
             orders: list[Array]) -> float:
        """Where the score starts: beyond the most distinct cells or classes (in z) any
        honest caller of `orders` showed in a window."""
        sizes = cls.windows(len(cell_freq), len(class_freq))
        top = 0.0
        for values, freq, size in ((cells, cell_freq, sizes[0]), (labels, class_freq, sizes[1])):
            mean, sd = cls.expected(freq, size)
            for order in orders:
                seq = values[order]
                for end in range(size, len(seq) + 1, max(1, size // 4)):
                    seen = len(np.unique(seq[end - size:end]))
                    top = max(top, (seen - mean) / sd)
        return null.start(top, Z_LOW)

    @classmethod
    def for_caller(cls, summary: Summary, *, key: str, shared: Shared) -> Self:
        return cls(summary, cells=shared.cells)

    def observe(self, features: Array, proba: Array, now: float) -> None:
        self.take(Rows(None, features, proba, self.cell_of), now)

    def take(self, rows: Rows, now: float) -> None:
        for cell, label in zip(rows.cells, rows.argmax, strict=True):
            self.distinct["cells"].push(cell)
            self.distinct["classes"].push(label)

    def score(self) -> Reading:
        best, won = 0.0, None
        z0 = self.z0
        for label, ring, distinct, (mean, sd) in self._windows:
            if ring.count < ring.size:
                continue
            seen = distinct.distinct
            z = ramp((seen - mean) / sd, z0, z0 + Z_HIGH - Z_LOW)
            if z >= best:
                best, won = z, (seen, label, ring.size, mean, sd)
        if won is None:
            return Reading(best, "window not full")
        return Reading(best, partial("{} distinct {} in {} (benign {:.1f}±{:.1f})".format,
                                     *won))

    def rings(self) -> dict[str, Ring]:
        return {"cells": self.cells, "classes": self.classes}

    def load(self, state: Mapping[str, Array]) -> None:
        super().load(state)
        self.distinct["cells"].recount(len(self.summary.cell_freq))
        self.distinct["classes"].recount(self.summary.n_classes)



#: Detectors no longer offered, and what to do instead (a configuration naming one fails).
RETIRED = {
    "duplicates": "rows within the model's calibrated re-send radius of a caller's recent "
                  "rows are now re-sends (volume only, never evidence), and unnatural fresh "
                  "rows are what 'synthetic' scores; remove 'duplicates' from "
                  "monitor.detectors (the default list has 'synthetic' instead)",
}

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (DistanceNormality, BoundaryProbing, Synthetic, Flips, OutOfDistribution,
                Coverage, VolumeVelocity)
}

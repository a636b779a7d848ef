"""What the detectors read of an observed batch of rows, each computed at most once.

A row's k-means cell, its naturalness verdict, the model's answer and margin, its squared
norm, its digest and its place in re-send anchor space do not depend on who sent it: a
principal and its tenant read the same ones, and so do a caller's seven detectors. On the
request path (one row, two callers) numpy's and Python's per-call overhead, not arithmetic,
is what an observe costs, so the monitor makes one `Batch` per observe and each caller's
detectors read its fresh rows through one `Rows` (the same object for both callers when,
as usual, the row is fresh for both). Every value is computed by the very expression a
detector used before it was shared (`Cells.of`'s one-row search, `answers`, a row's
`z @ z`), so sharing moves no score.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from .resends import into_anchor_space
from .rings import ROW, nearest
from .summary import Array, Summary


def answers(proba: Array) -> list[tuple[int, float]]:
    """(predicted class, top-1 minus top-2 probability) per row (margin 1.0 with one class).

    Plain Python over lists: for the one-row observes of the request path it is several
    times faster than numpy's partition, and agrees with `argmax` and `top1_margin`.
    """
    out = []
    for row in proba.tolist():
        top = max(row)
        label = row.index(top)
        row[label] = -math.inf
        out.append((label, top - max(row) if len(row) > 1 else 1.0))
    return out


def digest(row: Array) -> bytes:
    """A row's 8-byte BLAKE2 digest of its raw bytes (what `Repeats` remembers)."""
    return hashlib.blake2b(row.tobytes(), digest_size=8).digest()


class Cells:
    """Which k-means cell each row falls in, shared by a model's detectors.

    `of` remembers the last batch asked about (for detectors used on their own); the monitor
    asks through `Rows`, which computes once per observe.
    """

    def __init__(self, summary: Summary) -> None:
        self.centroids: Array = summary.centroids.astype(ROW)  # rows come as float32
        self.norms: Array = np.einsum("ij,ij->i", self.centroids, self.centroids)
        self.half: Array = 0.5 * self.norms
        self.minus2t: Array = np.ascontiguousarray(-2.0 * self.centroids.T)  # [d, cells]
        self._last: tuple[tuple[int, ...], bytes] = ((), b"")
        self._answer: tuple[list[int], list[float]] = ([], [])

    def of(self, z: Array) -> tuple[list[int], list[float]]:
        """(nearest cell, squared distance to its centroid) per standardized row."""
        key = (z.shape, z.tobytes())
        if key != self._last:
            self._answer = self.compute(z)
            self._last = key
        return self._answer

    def compute(self, z: Array) -> tuple[list[int], list[float]]:
        """`of` without the memory."""
        z = z.astype(ROW, copy=False)
        if len(z) == 1:  # the request path
            j, d2 = nearest(self.centroids, self.half, z[0], float(z[0] @ z[0]))
            return [j], [d2]
        # a batch: screen with one product, measure the winners
        cell = (z @ self.minus2t + self.norms).argmin(axis=1)
        diff = z - self.centroids[cell]
        return cell.tolist(), np.einsum("ij,ij->i", diff, diff).tolist()


class Judge:
    """Which rows fail the data's naturalness tests (`naturalness.Nature`), shared by a
    model's detectors; like `Cells`, `of` remembers the last batch asked about."""

    def __init__(self, summary: Summary) -> None:
        self.nature = summary.nature
        self._last: tuple[tuple[int, ...], bytes] = ((), b"")
        self._answer: list[bool] = []

    def of(self, x: Array, z: Array) -> list[bool]:
        """Per raw row of `x` (float64) and its standardized `z` (float32): unnatural?"""
        key = (x.shape, x.tobytes())
        if key != self._last:
            self._answer = self.compute(x, z)
            self._last = key
        return self._answer

    def compute(self, x: Array, z: Array) -> list[bool]:
        """`of` without the memory."""
        out: list[bool] = self.nature.unnatural(x, z).tolist()
        return out


class Rows:
    """Rows one caller's detectors see (raw `x` float64, standardized `z` float32, the
    model's probabilities `p`) and what they read of them, each computed on first read.

    A detector used on its own makes one of its own (`x` and `judge` may then be None when
    it reads no naturalness verdicts)."""

    __slots__ = ("_answers", "_argmax", "_cells", "_judge", "_norms", "_unnatural", "_where",
                 "p", "x", "z")

    def __init__(self, x: Array | None, z: Array, p: Array, cells: Cells,
                 judge: Judge | None = None, *, argmax: list[int] | None = None) -> None:
        self.x, self.z, self.p = x, z, p
        self._cells, self._judge = cells, judge
        self._answers: list[tuple[int, float]] | None = None
        self._argmax = argmax
        self._where: tuple[list[int], list[float]] | None = None
        self._unnatural: list[bool] | None = None
        self._norms: list[float] | None = None

    def __len__(self) -> int:
        return len(self.z)

    @property
    def answers(self) -> list[tuple[int, float]]:
        """(class, top-1 margin) per row (`answers`)."""
        if self._answers is None:
            self._answers = answers(self.p)
        return self._answers

    @property
    def argmax(self) -> list[int]:
        """numpy's argmax of each row's probabilities."""
        if self._argmax is None:
            self._argmax = self.p.argmax(axis=1).tolist()
        return self._argmax

    @property
    def cells(self) -> list[int]:
        """Each row's k-means cell (`Cells`)."""
        return self.where[0]

    @property
    def where(self) -> tuple[list[int], list[float]]:
        """(cell, squared distance to its centroid) per row."""
        if self._where is None:
            self._where = self._cells.compute(self.z)
        return self._where

    @property
    def unnatural(self) -> list[bool]:
        """Whether each row fails the data's naturalness tests (`Judge`)."""
        if self._unnatural is None:
            assert self.x is not None and self._judge is not None
            self._unnatural = self._judge.compute(self.x, self.z)
        return self._unnatural

    @property
    def norms(self) -> list[float]:
        """Each standardized row's squared norm, `z @ z` in float32."""
        if self._norms is None:
            z = self.z.astype(ROW, copy=False)
            self._norms = [float(r @ r) for r in z]
        return self._norms


class Batch:
    """The rows of one observe, and the `Rows` each subset of them that callers find fresh
    makes (kept, so a principal and its tenant share one). Per row, also what the re-send
    filters read: the raw bytes' digest and the row in anchor space."""

    __slots__ = ("_anchors", "_digests", "_fresh", "cells", "judge", "labels", "p", "proj",
                 "x", "z")

    def __init__(self, x: Array, z: Array, p: Array, cells: Cells, judge: Judge,
                 proj: Array | None) -> None:
        self.x, self.z, self.p = x, z, p
        self.cells, self.judge, self.proj = cells, judge, proj
        self.labels: list[int] = p.argmax(axis=1).tolist()
        self._digests: list[bytes] | None = None
        self._anchors: list[tuple[Array, float] | None] = [None] * len(x)
        self._fresh: dict[bytes, Rows] = {}

    def __len__(self) -> int:
        return len(self.x)

    def natural(self, i: int) -> bool:
        """Whether row `i` passes the data's naturalness tests (asked of a re-send only,
        `Resends.seen_at`), read from the whole batch's `Rows`."""
        return not self.rows().unnatural[i]

    def digest(self, i: int) -> bytes:
        if self._digests is None:
            self._digests = [digest(row) for row in self.x]
        return self._digests[i]

    def anchor(self, i: int) -> tuple[Array, float]:
        """Row `i` in anchor space (`resends.projection`) and its squared norm."""
        got = self._anchors[i]
        if got is None:
            z = self.z[i]
            a = z if self.proj is None else into_anchor_space(z, self.proj)
            got = self._anchors[i] = (a, float(a @ a))
        return got

    def rows(self, mask: list[bool] | None = None) -> Rows:
        """The rows where `mask` holds (all of them for None), one `Rows` per distinct mask."""
        key = b"" if mask is None else bytes(mask)
        got = self._fresh.get(key)
        if got is None:
            if mask is None:
                got = Rows(self.x, self.z, self.p, self.cells, self.judge, argmax=self.labels)
            else:
                m = np.array(mask, np.bool_)
                got = Rows(self.x[m], self.z[m], self.p[m], self.cells, self.judge)
                whole = self._fresh.get(b"")
                if whole is not None and whole._unnatural is not None:  # judged once a batch
                    got._unnatural = [u for u, keep in zip(whole._unnatural, mask, strict=True)
                                      if keep]
            self._fresh[key] = got
        return got


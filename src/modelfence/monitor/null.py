"""The benign null, measured at fit: what honest callers' statistics reach on this model's data.

A threshold tuned on one model's users means nothing on the next model, so each detector
learns at `Summary.fit` how far its own statistic goes for callers who only ever send natural
rows, in the orders honest traffic comes in: random order, one class, two classes, and
slowly drifting traffic (rows sorted along a principal direction or a random one, with some
jitter). Each detector that sees only fresh rows is calibrated on the fresh rows of those
orders (`fresh_orders`): where natural rows come closer than the re-send radius, the
monitor takes some of them for re-sends, and the ones it keeps are the sparse ones. A
detector's score then ramps from beyond the most extreme of those benign callers (`start`),
not from a fixed z that fits one data set.

Share statistics compare a window's count of flagged rows `H` with its expected count `E`
(each row's expected flag rate, from the cell it falls in: a caller who drifts through a
region where natural rows are often flagged is expected to be flagged often) by the
variance-stabilized binomial z, 2 sqrt(n) (asin sqrt(H/n) - asin sqrt(E/n)), which stays
honest at small expected counts where the normal approximation raises false alarms.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

#: Benign random-order callers simulated per model.
RANDOM = 4
#: A class needs this many fit rows to be simulated as a one-class caller.
MIN_CLASS = 20
#: Shrinkage of a cell's flag rate towards the overall rate, in rows.
PRIOR_ROWS = 10.0
#: z-units a detector's score starts above the most extreme benign caller at fit.
MARGIN = 1.5


def share_z(hits: float, expected: float, n: int) -> float:
    """Variance-stabilized z of `hits` flags in `n` rows against `expected` (0 when fewer)."""
    if n <= 0 or hits <= expected:
        return 0.0
    return 2.0 * math.sqrt(n) * (math.asin(math.sqrt(_unit(hits / n)))
                                 - math.asin(math.sqrt(_unit(expected / n))))


def _unit(v: float) -> float:
    """min(max(v, 0.0), 1.0), NaN and signed zeros alike, without two builtin calls (a
    share detector's score takes this twice on every observe)."""
    v = v if not v < 0.0 else 0.0  # max(v, 0.0) keeps v unless 0.0 > v
    return v if not v > 1.0 else 1.0  # min(v, 1.0) keeps v unless 1.0 < v


def cell_rates(flags: Array, cells: Array, n_cells: int, floor: float) -> Array:
    """Each cell's flag rate, shrunk towards the overall rate by `PRIOR_ROWS`, at least `floor`."""
    overall = float(np.mean(flags)) if len(flags) else 0.0
    hits = np.bincount(cells, weights=flags.astype(np.float64), minlength=n_cells)
    rows = np.bincount(cells, minlength=n_cells).astype(np.float64)
    rate = (hits + PRIOR_ROWS * overall) / (rows + PRIOR_ROWS)
    out: Array = np.maximum(rate, floor)
    return out


def benign_orders(z: Array, labels: Array, seed: int, truth: Array | None = None
                  ) -> list[Array]:
    """Orders of the fit rows honest callers might send them in (indices into `z`).

    `labels` are the model's answers; `truth`, when known, the rows' true classes: an honest
    caller's workload is skewed by what its rows are (a queue of fraud cases), and where the
    model errs those rows lie nearer its boundary than the ones it predicts as that class.
    """
    rng = np.random.default_rng(seed)
    n = len(z)
    orders = [rng.permutation(n) for _ in range(RANDOM)]
    classes = [c for c in np.unique(labels) if np.sum(labels == c) >= MIN_CLASS]
    for c in classes:
        rows = np.nonzero(labels == c)[0]
        orders.append(rows[rng.permutation(len(rows))])
    if len(classes) >= 3:
        for _ in range(2):
            pair = rng.choice(classes, 2, replace=False)
            rows = np.nonzero(np.isin(labels, pair))[0]
            orders.append(rows[rng.permutation(len(rows))])
    directions = [_first_component(z), *rng.standard_normal((2, z.shape[1]))]
    for v in directions:
        proj = z @ (v / max(float(np.linalg.norm(v)), 1e-12))
        jitter = rng.normal(0.0, 0.25 * float(proj.std()) + 1e-12, n)
        orders.append(np.argsort(proj + jitter, kind="stable"))
    if truth is not None:  # a stream of its own: the orders above stay as without truth
        own = np.random.default_rng([seed, 1])
        for c in np.unique(truth):
            rows = np.nonzero(truth == c)[0]
            if len(rows) >= MIN_CLASS:
                orders.append(rows[own.permutation(len(rows))])
    return orders


def fresh_orders(z: Array, orders: list[Array], radius: float, key: int) -> list[Array]:
    """Each order less the rows a caller's re-send filter (`resends.Resends`) would take for
    re-sends of its earlier rows: what the detectors that see only fresh rows are shown.

    The filter is not neutral where natural rows come closer than the radius (a dense class
    core, a small grid): it drops rows in dense regions and keeps the sparse ones, which lie
    nearer the boundary, off the weak directions or far from the centroids more often than
    their cells' rates say, and the more so the more anchors a caller holds. A null measured
    on every row misses that excess; an honest random-order caller was flagged for it after
    1,800 queries.
    """
    from .resends import Resends, into_anchor_space, projection

    zf = z.astype(np.float32)
    proj = projection(z.shape[1], key)
    a = zf if proj is None else into_anchor_space(zf, proj)
    aa = np.einsum("ij,ij->i", a.astype(np.float64), a.astype(np.float64))
    out = []
    for order in orders:
        seen = Resends(z.shape[1], radius, key)
        # fit rows are natural: a re-send of one is an echo, as a live caller's would be
        keep = [int(i) for i in order
                if seen.seen_at(a[i], float(aa[i]), natural=fit_rows_natural) is None]
        out.append(np.asarray(keep, dtype=np.int64))
    return out


def _first_component(z: Array) -> Array:
    c = z - z.mean(axis=0)
    _, _, vt = np.linalg.svd(c[:2000], full_matrices=False)
    out: Array = vt[0]
    return out


def window_extreme(flags: Array, expect: Array, orders: list[Array], window: int,
                   min_n: int) -> float:
    """The largest `share_z` over every window (of up to `window` rows, at least `min_n`)
    of every order."""
    top = 0.0
    f = flags.astype(np.float64)
    for order in orders:
        h = np.concatenate([[0.0], np.cumsum(f[order])])
        e = np.concatenate([[0.0], np.cumsum(expect[order])])
        for end in range(min_n, len(order) + 1):
            start = max(0, end - window)
            top = max(top, share_z(h[end] - h[start], e[end] - e[start], end - start))
    return top


def start(extreme: float, low: float) -> float:
    """Where a score starts to ramp: `low`, or `MARGIN` beyond the benign extreme."""
    return max(low, extreme + MARGIN)


def fit_rows_natural() -> bool:
    """What the naturalness tests are taken to say of a fit row (`Resends.seen_at`)."""
    return True

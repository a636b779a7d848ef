"""What benign traffic looks like for one model: the yardstick every detector compares with.

Extraction queries are judged against the model's own data, not against absolute numbers:
a margin of 0.3 is unusual for a confident digits classifier and common for a noisy tabular
one. `Summary.fit` is run once when the model is registered (the future
`modelfence monitor fit`) on data that looks like real use; it keeps only a few kilobytes:

- per-feature mean and standard deviation, so distances weigh every feature alike;
- a k-means codebook of the standardized data and the 99th percentile of the data's own
  distance to its nearest centroid (the out-of-distribution radius);
- how often each cell and each predicted class occurs (the expected coverage);
- per predicted class, a low quantile of the top-1 margin (what counts as near the boundary),
  and per cell how often natural rows fall below it;
- the radius within which a row re-sends a recent one (measurement noise up to 10% of each
  feature's spread, `resends`) and how close distinct natural rows come;
- the structure natural rows share (decimal grids, bounds, weak principal directions,
  `naturalness`) and, per cell, how often natural rows break it (cross-fitted);
- each detector's benign extreme: the most its statistic reached for honest callers
  simulated from these rows (`null`), and PRADA's floor on such callers.

Give it rows the model was *not* trained on where possible: on its own training rows a
model is over-confident, and the boundary baseline comes out too low.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..extras import require
from . import null
from .naturalness import Nature, crossfit
from .resends import natural_gap, projection_key, resend_radius

Array = np.ndarray[Any, Any]
#: Version of the file `Summary.save` writes; `load` refuses any other (3: the re-send radius,
#: the naturalness tests and each detector's benign null replace the near-duplicate radius).
FORMAT_VERSION = 3
#: A feature's scale is at least this share of the mean scale, so that a near-constant
#: feature (an always-blank pixel) cannot dominate every distance.
FLOOR = 0.5
#: A class with fewer rows than this gets the margin cut of all rows.
MIN_CLASS_ROWS = 20


def top1_margin(proba: Array) -> Array:
    """Top-1 minus top-2 probability per row (1.0 with a single class)."""
    if proba.shape[1] < 2:
        return np.ones(len(proba))
    part = np.partition(proba, -2, axis=1)
    out: Array = part[:, -1] - part[:, -2]
    return out


@dataclass(frozen=True)
class Summary:
    mean: Array
    scale: Array
    centroids: Array  # [cells, d], standardized space
    ood_radius: float  # 99th percentile of natural rows' (cross-fitted) nearest-centroid distance
    cell_ood: Array  # [cells] cross-fitted share of natural rows beyond it
    ood_z0: float  # where the ood score starts
    cell_freq: Array  # [cells], sums to 1
    class_freq: Array  # [k], sums to 1
    margin_cuts: Array  # [k] near the boundary below this top-1 margin, per predicted class
    boundary_share: float  # share of the data below its class's cut
    cell_boundary: Array  # [cells] share of each cell's rows below their class's cut
    boundary_z0: float  # where the boundary score starts (beyond benign callers' extreme)
    boundary_z0_long: float  # the same for its long window
    resend_radius: float  # a row this close (standardized) to a recent one is a re-send
    natural_gap: float  # 1st percentile of a natural row's distance to 1,024 others
    resend_key: float  # keys the projection re-send anchors are kept in (an int < 2^48)
    lattice_step: Array  # [d] decimal grid of each feature (0: continuous)
    lower: Array  # [d] raw-space bounds of natural rows (widened)
    upper: Array  # [d]
    weak: Array  # [r, d] whitened weak principal directions (r may be 0)
    weak_cut: float  # natural rows' 99th percentile of their energy there
    cell_unnatural: Array  # [cells] cross-fitted share of natural rows failing a test
    unnatural_share: float  # the same over all rows
    unnatural_z0: float  # where the synthetic score starts
    coverage_z0: float  # where the coverage score starts
    cell_flip: Array  # [cells] share of 10%-noise re-reads the model answers another class
    flip_z0: float  # where the flips score starts
    prada_w: float = 0.94  # lowest (trimmed) W on benign replays, less a slack (PRADA's delta)

    @property
    def n_classes(self) -> int:
        return len(self.class_freq)

    @property
    def n_features(self) -> int:
        return len(self.mean)

    @property
    def nature(self) -> Nature:
        """The naturalness tests (`naturalness.Nature`) this summary holds."""
        return Nature(self.lattice_step, self.lower, self.upper, self.weak, self.weak_cut)

    def transform(self, x: Array) -> Array:
        z: Array = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return z

    def nearest_cell(self, z: Array) -> tuple[Array, Array]:
        """(cell index, distance to its centroid) per standardized row."""
        d2 = ((z[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        cell = d2.argmin(axis=1)
        return cell, np.sqrt(d2[np.arange(len(z)), cell])

    @classmethod
    def fit(cls, x: Array, proba: Array, *, cells: int = 32, boundary_quantile: float = 0.3,
            seed: int = 0, predict: Callable[[Array], Array] | None = None,
            truth: Array | None = None) -> Summary:
        """Summarize rows [n, d] and the model's probabilities for them [n, k].

        A class's margin cut is the `boundary_quantile` of its rows' margins (the quantile
        of all rows for a class with fewer than `MIN_CLASS_ROWS`), so near-boundary queries
        are `boundary_quantile` of benign ones whatever classes a user asks about. Each
        detector's null is then measured on honest callers simulated from the same rows.
        `predict` (rows → the model's probabilities), when given, measures how often honest
        noisy re-reads change the model's answer (the `flips` detector's null). `truth`, the
        rows' true classes when known, add honest callers who ask about one true class (a
        fraud analyst's queue): where the model errs, they sit nearer its boundary than the
        rows it predicts as that class.
        """
        require("local", "fitting a monitor summary", "sklearn", "scipy")
        from sklearn.cluster import KMeans

        x = np.asarray(x, dtype=np.float64)
        proba = np.asarray(proba, dtype=np.float64)
        if x.ndim != 2 or proba.ndim != 2 or len(x) != len(proba):
            raise ConfigurationError("summary needs rows [n, d] and probabilities [n, k]")
        if len(x) < 2 * cells:
            raise ConfigurationError(f"summary needs at least {2 * cells} rows, got {len(x)}")
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        floor = max(float(std.mean()) * FLOOR, 1e-9)
        scale = np.maximum(std, floor)
        z = (x - mean) / scale
        km = KMeans(n_clusters=cells, n_init=3, random_state=seed).fit(z)
        centroids = np.asarray(km.cluster_centers_, dtype=np.float64)
        labels = _nearest(z, centroids)[0]
        own = _crossfit_distance(z, cells, seed)
        radius = ood_radius(own)
        predicted = proba.argmax(axis=1)
        k = proba.shape[1]
        margin = top1_margin(proba)
        overall = float(np.quantile(margin, boundary_quantile))
        cuts = np.array([
            float(np.quantile(margin[predicted == c], boundary_quantile))
            if np.sum(predicted == c) >= MIN_CLASS_ROWS else overall for c in range(k)])
        near = margin < cuts[predicted]
        unnatural, weak_cut = crossfit(x, z, seed)
        nature = Nature.fit(x, z, weak_cut)
        from .detectors import (  # they import this module
            BoundaryProbing,
            Coverage,
            DistanceNormality,
            Flips,
            OutOfDistribution,
            Synthetic,
        )

        if truth is not None:
            truth = np.asarray(truth).reshape(-1)
        if truth is not None and len(truth) != len(z):
            raise ConfigurationError(f"summary: {len(truth)} labels for {len(z)} rows")
        orders = null.benign_orders(z, predicted, seed, truth)
        key = projection_key(x, seed)
        resend = resend_radius(x, scale, key)
        fresh = null.fresh_orders(z, orders, resend, key)  # what fresh-only detectors see
        cell_boundary = null.cell_rates(near, labels, cells, BoundaryProbing.FLOOR)
        cell_unnatural = null.cell_rates(unnatural, labels, cells, Synthetic.FLOOR)
        cell_ood = null.cell_rates(own > radius, labels, cells, OutOfDistribution.FLOOR)
        cell_freq = np.bincount(labels, minlength=cells) / len(z)
        if predict is None:
            cell_flip, flip_z0 = np.full(cells, Flips.DEFAULT), null.start(0.0, 4.0)
        else:
            flips = _noisy_flips(x, predicted, predict, seed)
            cell_flip = null.cell_rates(flips, labels, cells, Flips.FLOOR)
            flip_z0 = Flips.null(flips, cell_flip[labels], orders)
        class_freq = np.bincount(predicted, minlength=k) / len(z)
        summary = cls(
            mean=mean, scale=scale, centroids=centroids,
            ood_radius=radius,
            cell_ood=cell_ood,
            ood_z0=OutOfDistribution.null(own > radius, cell_ood[labels], fresh),
            cell_freq=cell_freq,
            class_freq=class_freq,
            margin_cuts=cuts,
            boundary_share=float(np.mean(near)),
            cell_boundary=cell_boundary,
            boundary_z0=BoundaryProbing.null(near, cell_boundary[labels], fresh),
            boundary_z0_long=BoundaryProbing.null_long(near, cell_boundary[labels], fresh),
            resend_radius=resend,
            natural_gap=natural_gap(z, seed, key),
            resend_key=float(key),
            lattice_step=nature.step, lower=nature.lo, upper=nature.hi, weak=nature.weak,
            weak_cut=nature.cut,
            cell_unnatural=cell_unnatural,
            unnatural_share=float(np.mean(unnatural)),
            unnatural_z0=Synthetic.null(unnatural, cell_unnatural[labels], fresh),
            coverage_z0=Coverage.null(labels, predicted, cell_freq, class_freq, fresh),
            cell_flip=cell_flip, flip_z0=flip_z0,
        )
        return replace(summary, prada_w=DistanceNormality.calibrate(
            summary, z, proba, seed, replays=0, orders=orders))

    def save(self, path: Path | str) -> Path:
        """Write the summary as plain arrays (.npz, no pickle), so loading runs no code."""
        path = Path(path)
        arrays: dict[str, Array] = {
            f.name: np.asarray(getattr(self, f.name), dtype=np.float64) for f in fields(self)}
        arrays["format_version"] = np.asarray(FORMAT_VERSION, dtype=np.int64)
        savez: Any = np.savez  # numeric arrays only: nothing is pickled (load refuses pickles)
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as out:  # a file object: np.savez would append .npz to a name
                savez(out, **arrays)
            tmp.replace(path)
        except OSError as exc:
            raise ConfigurationError(f"cannot write monitor summary {path}: "
                                     f"{exc.strerror or exc}") from None
        return path

    @classmethod
    def load(cls, path: Path | str) -> Summary:
        """Read what `save` wrote; anything else is one ConfigurationError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigurationError(f"monitor summary {path} does not exist "
                                     "(create it with `modelfence monitor fit`)")
        try:
            with np.load(path, allow_pickle=False) as z:
                found = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigurationError(f"monitor summary {path}: not a summary file ({reason})"
                                     ) from None
        version = found.pop("format_version", None)
        if (version is None or version.shape != () or version.dtype.kind not in "iu"
                or int(version) != FORMAT_VERSION):
            raise ConfigurationError(f"monitor summary {path}: format version "
                                     f"{None if version is None else version.tolist()}, "
                                     f"expected {FORMAT_VERSION}; fit it again")
        missing = [f.name for f in fields(cls) if f.name not in found]
        if missing:
            raise ConfigurationError(f"monitor summary {path}: missing {', '.join(missing)}")
        return cls._checked(path, {f.name: found[f.name] for f in fields(cls)})

    @classmethod
    def _checked(cls, path: Path, a: dict[str, Array]) -> Summary:
        per_feature = ("mean", "scale", "lattice_step", "lower", "upper")
        per_cell = ("cell_freq", "cell_boundary", "cell_unnatural", "cell_ood", "cell_flip")
        per_class = ("class_freq", "margin_cuts")
        matrices = ("centroids", "weak")
        d = a["mean"].shape[0] if a["mean"].ndim == 1 else -1
        cells = a["centroids"].shape[0] if a["centroids"].ndim == 2 else -1
        k = a["class_freq"].shape[0] if a["class_freq"].ndim == 1 else -1
        ok = (all(v.dtype.kind in "iuf" for v in a.values())
              and d > 0 and cells > 0 and k > 0
              and all(a[n].shape == (d,) for n in per_feature)
              and all(a[n].shape == (cells,) for n in per_cell)
              and all(a[n].shape == (k,) for n in per_class)
              and all(a[n].ndim == 2 and a[n].shape[1] == d for n in matrices)
              and all(a[n].shape == () for n in a
                      if n not in (*per_feature, *per_cell, *per_class, *matrices))
              and all(np.isfinite(v).all() for v in a.values())
              and bool((a["scale"] > 0).all()))
        if not ok:
            raise ConfigurationError(f"monitor summary {path}: arrays of the wrong shape or "
                                     "non-finite values; fit it again")
        arrays = (*per_feature, *per_cell, *per_class, *matrices)
        values: dict[str, Any] = {n: (np.asarray(v, dtype=np.float64) if n in arrays
                                      else float(v)) for n, v in a.items()}
        return cls(**values)


def _noisy_flips(x: Array, predicted: Array, predict: Callable[[Array], Array], seed: int,
                 noise: float = 0.10) -> Array:
    """Per fit row, whether a re-read with Gaussian noise of `noise` x each feature's sd
    gets another class from the model: what an honest noisy re-sender's answers do."""
    rng = np.random.default_rng(seed + 1)
    noisy = x + rng.standard_normal(x.shape) * noise * x.std(axis=0)
    out: Array = np.asarray(predict(noisy)).argmax(axis=1) != predicted
    return out


def _nearest(z: Array, centroids: Array) -> tuple[Array, Array]:
    """(nearest centroid, distance to it) per row."""
    d2 = ((z[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    cell = d2.argmin(axis=1)
    return cell, np.sqrt(d2[np.arange(len(z)), cell])


def _crossfit_distance(z: Array, cells: int, seed: int, folds: int = 5) -> Array:
    """Each row's distance to the nearest of `cells` centroids fitted without it (5 folds):
    how far new natural rows fall, where in-sample distances would be too short."""
    from sklearn.cluster import KMeans

    part = np.random.default_rng(seed).permutation(len(z)) % folds
    out = np.zeros(len(z))
    for f in range(folds):
        held = part == f
        k = min(cells, int((~held).sum()))
        km = KMeans(n_clusters=k, n_init=1, max_iter=50, random_state=seed).fit(z[~held])
        out[held] = _nearest(z[held], np.asarray(km.cluster_centers_))[1]
    return out


def expected_distinct(freq: Array, n: int) -> tuple[float, float]:
    """Mean and standard deviation of the number of distinct cells hit by `n` iid draws.

    With q_i = (1 - p_i)^n the chance that cell i is missed, E = sum(1 - q_i) and
    Var = sum q_i(1 - q_i) + sum_{i != j} [(1 - p_i - p_j)^n - q_i q_j].
    """
    p = freq[freq > 0]
    q = (1.0 - p) ** n
    mean = float(np.sum(1.0 - q))
    pair = np.clip(1.0 - p[:, None] - p[None, :], 0.0, 1.0) ** n - q[:, None] * q[None, :]
    np.fill_diagonal(pair, 0.0)
    var = float(np.sum(q * (1.0 - q)) + pair.sum())
    return mean, float(np.sqrt(max(var, 1e-12)))


def ood_radius(own: Array, level: float = 0.99, tail_rows: int = 10) -> float:
    """The distance natural rows stay within with probability `level`: their empirical
    quantile, or, while fewer than `tail_rows` fit rows lie beyond it, the higher of that and
    a log-normal prediction bound (Student t on the log distances).

    On a few dozen fit rows the empirical 99th percentile is about their largest distance,
    and new natural rows pass it far more often than 1% of the time (a 36-row fit left 13% of
    new rows beyond it); the prediction bound accounts for how little was seen. With enough
    rows beyond it, the empirical quantile is kept as it is.
    """
    from scipy.stats import t

    q = float(np.quantile(own, level))
    logs = np.log(own[own > 0])
    k = len(logs)
    if k < 3 or (1.0 - level) * len(own) >= tail_rows:
        return q
    bound = float(np.exp(logs.mean() + t.ppf(level, k - 1) * logs.std(ddof=1)
                         * np.sqrt(1.0 + 1.0 / k)))
    return max(q, bound)

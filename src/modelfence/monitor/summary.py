"""What benign traffic looks like for one model: the yardstick every detector compares with.

Extraction queries are judged against the model's own data, not against absolute numbers:
a margin of 0.3 is unusual for a confident digits classifier and common for a noisy tabular
one. `Summary.fit` is run once when the model is registered (the future
`modelfence monitor fit`) on data that looks like real use; it keeps only a few kilobytes:

- per-feature mean and standard deviation, so distances weigh every feature alike;
- a k-means codebook of the standardized data and the 99th percentile of the data's own
  distance to its nearest centroid (the out-of-distribution radius);
- how often each cell and each predicted class occurs (the expected coverage);
- per predicted class, a low quantile of the top-1 margin (what counts as near the boundary);
- the distance within which natural rows of a class rarely come (the near-duplicate radius)
  and the lowest PRADA statistic of benign replays (its floor).

Give it rows the model was *not* trained on where possible: on its own training rows a
model is over-confident, and the boundary baseline comes out too low.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError

Array = np.ndarray[Any, Any]
#: Version of the file `Summary.save` writes; `load` refuses any other (2: per-class margin
#: cuts, a same-class near-duplicate radius and a trimmed PRADA floor).
FORMAT_VERSION = 2
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
    ood_radius: float  # 99th percentile of the data's own nearest-centroid distance
    cell_freq: Array  # [cells], sums to 1
    class_freq: Array  # [k], sums to 1
    margin_cuts: Array  # [k] near the boundary below this top-1 margin, per predicted class
    boundary_share: float  # share of the data below its class's cut
    dup_radius: float  # "near-duplicate" below this standardized distance
    nn_median: float  # median nearest-neighbour distance in the data
    prada_w: float = 0.94  # lowest (trimmed) W on benign replays, less a slack (PRADA's delta)

    @property
    def n_classes(self) -> int:
        return len(self.class_freq)

    @property
    def n_features(self) -> int:
        return len(self.mean)

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
            seed: int = 0) -> Summary:
        """Summarize rows [n, d] and the model's probabilities for them [n, k].

        A class's margin cut is the `boundary_quantile` of its rows' margins (the quantile
        of all rows for a class with fewer than `MIN_CLASS_ROWS`), so near-boundary queries
        are `boundary_quantile` of benign ones whatever classes a user asks about.
        """
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
        d_cent = np.sqrt(((z[:, None, :] - centroids[None]) ** 2).sum(axis=2))
        labels = d_cent.argmin(axis=1)
        own = d_cent[np.arange(len(z)), labels]
        # nearest-neighbour distances on (at most) 2,000 rows: the data's typical spacing
        sub = z[np.random.default_rng(seed).permutation(len(z))[:2000]]
        sq = (sub**2).sum(axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * sub @ sub.T, 0.0)
        np.fill_diagonal(d2, np.inf)
        nn = np.sqrt(d2.min(axis=1))
        predicted = proba.argmax(axis=1)
        k = proba.shape[1]
        margin = top1_margin(proba)
        overall = float(np.quantile(margin, boundary_quantile))
        cuts = np.array([
            float(np.quantile(margin[predicted == c], boundary_quantile))
            if np.sum(predicted == c) >= MIN_CLASS_ROWS else overall for c in range(k)])
        from .detectors import DistanceNormality, NearDuplicates  # they import this module

        summary = cls(
            mean=mean, scale=scale, centroids=centroids,
            ood_radius=float(np.quantile(own, 0.99)),
            cell_freq=np.bincount(labels, minlength=cells) / len(z),
            class_freq=np.bincount(predicted, minlength=k) / len(z),
            margin_cuts=cuts,
            boundary_share=float(np.mean(margin < cuts[predicted])),
            dup_radius=NearDuplicates.calibrate(z, predicted, seed),
            nn_median=float(np.median(nn)),
        )
        return replace(summary, prada_w=DistanceNormality.calibrate(summary, z, proba, seed))

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
        vectors = ("mean", "scale", "centroids", "cell_freq", "class_freq", "margin_cuts")
        d = a["mean"].shape[0] if a["mean"].ndim == 1 else -1
        ok = (all(v.dtype.kind in "iuf" for v in a.values())
              and d > 0 and a["scale"].shape == (d,) and a["centroids"].ndim == 2
              and a["centroids"].shape[1] == d
              and a["cell_freq"].shape == (a["centroids"].shape[0],)
              and a["class_freq"].ndim == 1 and len(a["class_freq"]) > 0
              and a["margin_cuts"].shape == a["class_freq"].shape
              and all(a[k].shape == () for k in a if k not in vectors)
              and all(np.isfinite(v).all() for v in a.values())
              and bool((a["scale"] > 0).all()))
        if not ok:
            raise ConfigurationError(f"monitor summary {path}: arrays of the wrong shape or "
                                     "non-finite values; fit it again")
        values: dict[str, Any] = {k: (np.asarray(v, dtype=np.float64) if k in vectors
                                      else float(v)) for k, v in a.items()}
        return cls(**values)


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

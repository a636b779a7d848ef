"""Pools: the inputs an attacker draws queries from, and the held-out rows fidelity is measured on.

An extraction attack needs inputs the model accepts. A thief with natural data from the
model's domain (Knockoff's premise) is the realistic worst case; one with only the feature
ranges (uniform and Jacobian attacks) is weaker. So the pool is whatever the owner says an
attacker could plausibly hold: their own data file, one of scikit-learn's bundled data sets,
or synthetic rows. A fixed share is held out and never queried by the attack; fidelity
(agreement with the victim) and accuracy (with the true labels, when the pool has them) are
measured on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError

Array = np.ndarray[Any, Any]

SKLEARN_SETS = ("digits", "iris", "wine", "breast_cancer")
#: Rows in a synthetic pool unless `synthetic:N` says otherwise.
SYNTHETIC_ROWS = 2000


@dataclass(frozen=True)
class Pool:
    """Feature rows (float64) and, when known, their true labels."""

    name: str
    x: Array
    y: Array | None = None

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    def split(self, eval_fraction: float = 0.25, seed: int = 0) -> tuple[Pool, Pool]:
        """(attack pool, held-out rows); the split seed is fixed so seeds compare alike."""
        n = len(self.x)
        n_eval = max(1, min(n - 1, round(n * eval_fraction)))
        order = np.random.default_rng(seed).permutation(n)
        ev, rest = order[:n_eval], order[n_eval:]
        y = self.y
        return (Pool(self.name, self.x[rest], None if y is None else y[rest]),
                Pool(f"{self.name} (held out)", self.x[ev], None if y is None else y[ev]))

    def bounds(self) -> tuple[Array, Array]:
        """Per-feature minimum and maximum: what a thief knowing the ranges would know."""
        return self.x.min(axis=0), self.x.max(axis=0)


def load_pool(spec: str | Path, *, n_features: int | None = None,
              label_column: str | None = None, seed: int = 0) -> Pool:
    """Read a pool from ``sklearn:NAME``, ``synthetic[:ROWS]`` or a .npy/.npz/.csv/.parquet file.

    `n_features` (the model's input width) is checked here so that a mismatch is one
    clear error before any query, and sizes a synthetic pool.
    """
    text = str(spec)
    if text.startswith("sklearn:"):
        pool = _sklearn(text.removeprefix("sklearn:"))
    elif text == "synthetic" or text.startswith("synthetic:"):
        if n_features is None:
            raise ConfigurationError("a synthetic pool needs the model's number of features")
        rows = text.partition(":")[2]
        if rows and not rows.isdigit():
            raise ConfigurationError(f"pool {text!r}: use synthetic or synthetic:ROWS")
        n = int(rows) if rows else SYNTHETIC_ROWS
        x = np.random.default_rng(seed).standard_normal((n, n_features))
        pool = Pool(f"synthetic ({n} standard-normal rows)", x)
    else:
        pool = _file(Path(text), label_column)
    if len(pool.x) < 4:
        raise ConfigurationError(f"pool {pool.name}: needs at least 4 rows, has {len(pool.x)}")
    if n_features is not None and pool.n_features != n_features:
        raise ConfigurationError(
            f"pool {pool.name} has {pool.n_features} features but the model expects "
            f"{n_features}; pass a matching --pool")
    if not np.isfinite(pool.x).all():
        raise ConfigurationError(f"pool {pool.name}: contains NaN or infinite values")
    return pool


def _sklearn(name: str) -> Pool:
    import sklearn.datasets as ds

    if name not in SKLEARN_SETS:
        raise ConfigurationError(f"unknown scikit-learn data set {name!r}; use one of: "
                                 + ", ".join(SKLEARN_SETS))
    x, y = getattr(ds, f"load_{name}")(return_X_y=True)
    return Pool(f"sklearn:{name}", np.asarray(x, dtype=np.float64), np.asarray(y))


def _file(path: Path, label_column: str | None) -> Pool:
    if not path.is_file():
        raise ConfigurationError(f"pool file {path} does not exist (or use sklearn:NAME, "
                                 "synthetic)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return Pool(str(path), _matrix(np.load(path, allow_pickle=False), path))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                x_key = next((k for k in ("x", "X", "data") if k in z), None)
                if x_key is None:
                    raise ConfigurationError(f"{path}: an .npz pool needs an array named x")
                y_key = next((k for k in ("y", "labels", "target") if k in z), None)
                return Pool(str(path), _matrix(z[x_key], path),
                            None if y_key is None else np.asarray(z[y_key]))
        if suffix in (".csv", ".parquet", ".pq"):
            return _table(path, label_column)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read pool file {path}: {exc}") from None
    raise ConfigurationError(f"pool file {path}: use .npy, .npz, .csv or .parquet")


def _matrix(a: Array, path: Path) -> Array:
    if a.ndim != 2 or a.dtype.kind not in "iuf":
        raise ConfigurationError(f"{path}: expected a 2-D numeric array, got {a.dtype} "
                                 f"{list(a.shape)}")
    return a.astype(np.float64)


def _table(path: Path, label_column: str | None) -> Pool:
    """CSV (header row) or Parquet; `label_column` names the true labels, if any."""
    if path.suffix.lower() == ".csv":
        import csv

        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) < 2:
            raise ConfigurationError(f"{path}: needs a header row and data rows")
        header, body = rows[0], rows[1:]
        columns: dict[str, list[str]] = {h: [r[i] for r in body] for i, h in enumerate(header)}
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigurationError("reading Parquet pools needs pyarrow: pip install pyarrow"
                                     ) from None
        table = pq.read_table(path)
        columns = {n: table.column(n).to_pylist() for n in table.column_names}
    y = None
    if label_column is not None:
        if label_column not in columns:
            raise ConfigurationError(f"{path}: no column {label_column!r}")
        y = np.asarray(columns.pop(label_column))
    try:
        x = np.column_stack([np.asarray(v, dtype=np.float64) for v in columns.values()])
    except ValueError:
        raise ConfigurationError(f"{path}: every feature column must be numeric (name the "
                                 "label column with --label-column)") from None
    return Pool(str(path), x, y)

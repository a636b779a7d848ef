"""Re-sends: a caller's rows that repeat one of its recent rows, exactly or up to measurement noise.

An honest client re-reads what it asked about (a retry, a refresh, the same sample measured
again by a noisy sensor); a re-sent row teaches a thief next to nothing it did not learn the
first time. So a re-send counts toward volume (load is load) and never as evidence: no
detector but volume sees it. Two filters, in order:

- `Repeats`: the exact bytes of one of the caller's last 256 rows (a digest each, in
  `detectors`);
- `Resends`: within `Summary.resend_radius` of one of its last `MEMORY` (2,048) fresh rows,
  kept in at most `DIMS` (16) dimensions (a random projection of the standardized row, keyed
  per summary: an honest client may re-read a row from long ago, and 2,048 rows of 200
  features would cost 1.6 MB a caller). Fresh rows become anchors, and so does a *natural*
  row (one the data's naturalness tests pass, `facts.Judge`) that re-sends a fresh anchor:
  an echo, marked `ECHO` in its label. Two distinct natural rows may lie closer than
  measurement noise (a small data set, a dense class), and an honest client's noisy re-read
  of the second lies within one radius of it but up to two of the first; without the echo
  it would be fresh, and evidence of noise. Noisy rows never echo, nor do rows that re-send
  an echo, so a walk of small steps cannot chain re-sends away from what it first sent:
  after two radii at most it is fresh again, and evidence.

The radius is calibrated per model (`resend_radius`): Gaussian noise at `NOISE` (10%) of each
feature's standard deviation moves a standardized row by a scaled chi distance, whose
1 - `MISS` quantile the radius covers; `natural_gap` measures how close natural distinct rows
come, which the summary keeps beside it (a model whose natural rows come closer than
measurement noise counts some of them as re-sends: less evidence, never a false alarm).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from ..extras import require
from .rings import Ring, RowRing

Array = np.ndarray[Any, Any]

#: Measurement noise a re-send may carry, as a share of each feature's standard deviation.
NOISE = 0.10
#: Share of such noisy re-sends allowed to fall outside the radius.
MISS = 1e-4
#: Fresh rows each caller keeps as anchors: honest clients re-read rows from long ago.
MEMORY = 2048
#: Anchors are kept in at most this many dimensions (a random projection beyond it).
DIMS = 16
#: Set in an anchor's label when it is an echo (a natural re-send of a fresh anchor).
ECHO = 1 << 30


def projection_key(x: Array, seed: int) -> int:
    """The projection's key for a summary: from the fit rows' bytes and the seed, so it is
    the same for the same fit and unknown to a caller who does not hold the fit rows (one
    who knew the projection could hide any change in its null space)."""
    digest = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=6,
                             key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big")  # 48 bits: exact in a summary's float64


@lru_cache(maxsize=16)
def projection(d: int, key: int = 0) -> Array | None:
    """The [d, DIMS] Gaussian projection anchors are kept in (None: d <= DIMS, kept as is);
    see `into_anchor_space`.

    Squared distances are kept in expectation (entries of variance 1/DIMS); the radius is
    computed for this very projection, so noise stays within it; natural rows that the
    projection brings within it count as re-sends (less evidence, never a false alarm).
    """
    if d <= DIMS:
        return None
    # float32 values held in float64: anchors are float32, their product is taken in float64
    out: Array = (np.random.default_rng(key).standard_normal((d, DIMS)) / np.sqrt(DIMS)
                  ).astype(np.float32).astype(np.float64)
    out.setflags(write=False)
    return out


def into_anchor_space(z: Array, proj: Array) -> Array:
    """`z @ proj`, computed in float64 and rounded to float32: the same anchor on every CPU
    (a float32 product's last bit depends on the BLAS kernel, which would move ties)."""
    out: Array = (z.astype(np.float64) @ proj).astype(np.float32)
    return out


def resend_radius(x: Array, scale: Array, key: int = 0, noise: float = NOISE,
                  miss: float = MISS) -> float:
    """The distance (in anchor space) within which `noise` x sd Gaussian noise keeps a row
    with probability 1 - `miss`.

    Feature j moves by noise * sd_j / scale_j standard units (scale is the summary's floored
    sd), so the displacement is Gaussian with covariance S = noise^2 diag(r^2), seen through
    the projection P as P'SP; its squared norm, a weighted chi-square, is matched by its
    first two moments (Satterthwaite) to c * chi2(nu).
    """
    require("local", "the re-send radius", "scipy")
    from scipy.stats import chi2

    r2 = (np.asarray(x, dtype=np.float64).std(axis=0) / scale) ** 2
    proj = projection(len(r2), key)
    if proj is None:
        lam = r2
    else:
        p = proj.astype(np.float64)
        lam = np.linalg.eigvalsh(p.T @ (r2[:, None] * p))
    lam = np.clip(lam, 0.0, None)
    d1, d2 = float(lam.sum()), float((lam**2).sum())
    if d1 <= 0.0:
        return 0.0
    c, nu = d2 / d1, d1 * d1 / d2
    return float(noise * np.sqrt(c * chi2.ppf(1.0 - miss, nu)))


def natural_gap(z: Array, seed: int, key: int = 0, memory: int = MEMORY, rows: int = 500,
                q: float = 0.01) -> float:
    """The `q` quantile of a natural row's distance (in anchor space) to the nearest of
    `memory` other random rows: how close a caller's distinct natural rows come."""
    rng = np.random.default_rng(seed)
    n = len(z)
    if n < 2:
        return 0.0
    proj = projection(z.shape[1], key)
    a = z if proj is None else z @ proj.astype(np.float64)
    out = []
    for i in rng.permutation(n)[:rows]:
        others = rng.choice(n - 1, min(memory, n - 1), replace=False)
        others = others + (others >= i)  # every row but i
        out.append(float(np.sqrt(((a[others] - a[i]) ** 2).sum(axis=1).min())))
    return float(np.quantile(out, q))


class Resends:
    """One caller's recent fresh rows (float32, standardized, projected) and the radius of a
    re-send.

    `seen(z)` answers for one standardized float32 row and keeps it as an anchor when it is
    fresh: one projection and one matrix-vector product against the anchors' cached norms.
    """

    def __init__(self, width: int, radius: float, key: int = 0, memory: int = MEMORY,
                 gap: float | None = None) -> None:
        self.proj = projection(width, key)
        # a re-send's answer is compared with its anchor's only where natural distinct rows
        # do not come (`natural_gap`): there a changed answer is a probe, not another row
        self.gap2 = radius * radius if gap is None else min(radius, gap) ** 2
        self.rows = RowRing(memory, width if self.proj is None else DIMS)
        self.labels = Ring(memory, dtype=np.int32)  # the answer each anchor got
        self.radius2 = radius * radius

    def seen(self, z: Array, label: int = 0, natural: Callable[[], bool] | None = None
             ) -> int | None:
        """The answer (class) of the anchor `z` re-sends (-1 when it lies beyond the
        natural gap, too far to judge), or None when `z` is fresh (it is then kept as an
        anchor, with `label`, the class the model answered for it). `natural` says, when
        asked, whether `z` is a natural row: one that re-sends a fresh anchor is kept as an
        echo (None: never)."""
        a = z if self.proj is None else into_anchor_space(z, self.proj)
        return self.seen_at(a, float(a @ a), label, natural)

    def seen_at(self, a: Array, aa: float, label: int = 0,
                natural: Callable[[], bool] | None = None) -> int | None:
        """`seen`, given the row already in anchor space (`a`, through `projection`) and
        `aa` = |a|^2: a principal and its tenant project a row once (`facts.Batch`)."""
        j, d2 = self.rows.nearest_at(a, aa)
        if d2 <= self.radius2:
            held = int(self.labels.data[j])
            if d2 > 0.0 and not held & ECHO and natural is not None and natural():
                self.rows.push(a, aa)
                self.labels.push(label | ECHO)
            held &= ~ECHO
            return held if d2 <= self.gap2 else -1
        self.rows.push(a, aa)
        self.labels.push(label)
        return None

    def state(self) -> dict[str, Array]:
        return {**self.rows.state("anchors"), **self.labels.state("labels")}

    def load(self, state: Mapping[str, Array]) -> None:
        self.rows.load("anchors", state)
        self.labels.load("labels", state)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.labels.nbytes

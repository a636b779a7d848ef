"""Adaptive Misinformation (Kariyappa & Qureshi, "Defending Against Model Stealing Attacks
with Adaptive Misinformation", CVPR 2020): true answers in distribution, lies outside it.

A benign caller asks about the kind of data the model was built for; an extraction attack
that has no such data (or grows a little of it by augmentation) asks elsewhere. So the
answer is blended: ``(1 - a) * p + a * lie``, where ``a = sigmoid(nu * (s - tau))`` rises
with the out-of-distribution score ``s``, the distance to the nearest centroid of the
monitor's `Summary` in units of its ``ood_radius`` (s = 1 is the 99th percentile of the
model's own data, where the monitor's own `ood` detector draws its line). The paper scores
with the model's confidence and trains a network to lie; here the score is the monitor's
yardstick and the lie is keyed.

Three promises, each tested:

- **In-distribution rows are never touched**: the weight is exactly 0 for every row within
  the radius (s <= 1), whatever tau, and below `CUTOFF`; ``tau < 1`` is refused, since it
  would lie to rows the monitor itself calls natural (and, as a band for flagged callers,
  to every honest row they send).
- **The lie is independent of the truth**: the decoy class is a keyed uniform draw over all
  k classes, so it equals the true top class 1/k of the time, and the answer's top class
  (the decoy, from tau on) says nothing about the true one. On a binary model a lie is a
  keyed coin: flipping the answers one suspects are lies recovers nothing. The top class
  swaps its value with the decoy's, so the answer keeps its confidence profile and nothing
  in it says "this is the lie".
- **Re-asking learns nothing**: the draw is keyed by (secret, input), so the same input
  always gets the same answer, and repeating or averaging a question adds nothing.

The lie is keyed by the input only, not by who asked: accounts pooling their answers (a
Sybil attack) then agree with each other instead of exposing the lies by disagreement.

Its limit, measured on digits (``modelfence shaping tradeoff``): queries that stay near the
data are not lied to. Jacobian augmentation's steps (a tenth of each feature's range) leave
rows as close to a centroid as natural digits (median 0.65 of the radius against 0.59), so
a label-only Jacobian thief keeps most of its fidelity unless tau is lowered to where
honest callers are lied to as well.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigurationError
from .base import Array, Defense
from .keyed_noise import derive_key, keyed_rows

if TYPE_CHECKING:  # not imported at run time: the monitor may come to import shaping
    from ..monitor.summary import Summary

MISINFO = b"mf-misinfo"
#: Blend weights below this are 0: in-distribution answers stay bit-for-bit the model's.
CUTOFF = 1e-3
DEFAULT_TAU = 1.0
DEFAULT_NU = 50.0
#: The monitor's out-of-distribution line, in ood_radius units: never a lie within it.
RADIUS = 1.0


def keyed_offsets(secret: bytes, inputs: Any, modulus: int) -> Array:
    """An integer in [0, modulus) per input row, fixed by (secret, row as float32 bytes)."""
    key = derive_key(secret, MISINFO)
    return np.array([_offset(key, m, modulus) for m in keyed_rows(b"", inputs)],
                    dtype=np.int64)


def _offset(key: bytes, message: bytes, modulus: int) -> int:
    digest = hashlib.blake2b(message, key=key, digest_size=8).digest()
    return int.from_bytes(digest, "little") % modulus


class AdaptiveMisinformation(Defense):
    """Blend toward a keyed wrong answer as the input leaves the model's data."""

    kind = "misinfo"
    uses_inputs = True

    def __init__(self, summary: Summary, secret: bytes, tau: float = DEFAULT_TAU,
                 nu: float = DEFAULT_NU) -> None:
        if len(secret) < 16:
            raise ConfigurationError("misinformation: the secret must be at least 16 bytes")
        if not (np.isfinite(tau) and tau >= RADIUS):
            raise ConfigurationError(
                f"misinformation: tau must be at least 1 (the monitor's out-of-distribution "
                f"radius), got {tau:g}; a smaller tau lies to in-distribution rows")
        if not (np.isfinite(nu) and nu > 0):
            raise ConfigurationError(f"misinformation: nu must be positive, got {nu}")
        if not summary.ood_radius > 0:
            raise ConfigurationError("misinformation: the summary has no out-of-distribution "
                                     "radius; fit it on more varied data")
        self.summary = summary
        self._key = derive_key(secret, MISINFO)
        self.tau, self.nu = float(tau), float(nu)
        self._inv = 1.0 / summary.scale
        self._shift = summary.mean / summary.scale
        # at or below this squared distance the answer is the model's: within the radius,
        # and where the weight would be under CUTOFF
        s_cut = max(RADIUS, self.tau + math.log(CUTOFF / (1.0 - CUTOFF)) / self.nu)
        self._d2_cut = (s_cut * summary.ood_radius) ** 2

    def check(self, n_classes: int) -> None:
        if n_classes != self.summary.n_classes:
            raise ConfigurationError(
                f"misinformation: the summary describes a {self.summary.n_classes}-class "
                f"model, not a {n_classes}-class one")

    def _d2(self, inputs: Any) -> Array:
        """Squared standardised distance to the nearest centroid, as `Summary.nearest_cell`.

        Element by element, not as a matrix product: BLAS rounds a one-row product and a
        batch's differently, and a row's answer must not depend on its batch.
        """
        x = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
        if x.shape[1] != self.summary.n_features:
            raise ValueError(f"misinformation: inputs have {x.shape[1]} features, the "
                             f"summary {self.summary.n_features}")
        diff = (x * self._inv - self._shift)[:, None, :] - self.summary.centroids
        d2: Array = np.minimum.reduce(np.add.reduce(diff * diff, axis=2), axis=1)
        return d2

    def score(self, inputs: Any) -> Array:
        """Distance to the nearest centroid (`Summary.nearest_cell`), in ood_radius units."""
        out: Array = np.sqrt(self._d2(inputs)) / self.summary.ood_radius
        return out

    def weight(self, inputs: Any) -> Array:
        """The blend weight per row: 0 within the radius, 1/2 at s = tau, toward 1 beyond."""
        return np.array([self._alpha(v) for v in self._d2(inputs)])

    def _alpha(self, d2: float) -> float:
        if d2 <= self._d2_cut:
            return 0.0
        s = math.sqrt(d2) / self.summary.ood_radius
        a = 1.0 / (1.0 + math.exp(min(700.0, -self.nu * (s - self.tau))))
        return a if a >= CUTOFF else 0.0

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        out = p
        k = p.shape[1]
        # row by row in Python, whatever the batch: a lie never depends on its neighbours,
        # and in-distribution rows (the common case) cost one comparison each
        for i, d2 in enumerate(self._d2(inputs).tolist()):
            a = self._alpha(d2)
            if a == 0.0:
                continue
            if out is p:
                out = p.copy()
            row = out[i]
            top = int(row.argmax())
            message = np.asarray(inputs)[i].astype("<f4").tobytes()
            decoy = _offset(self._key, message, k)  # uniform over all k: independent of top
            if decoy == top:
                continue
            t, d = float(row[top]), float(row[decoy])
            # (1 - a) * p + a * swap(p) moves only the two swapped classes
            row[top], row[decoy] = (1.0 - a) * t + a * d, (1.0 - a) * d + a * t
        return out

    @property
    def spec(self) -> str:
        return f"misinfo:{self.tau:g}" + (f",{self.nu:g}" if self.nu != DEFAULT_NU else "")

    @property
    def description(self) -> str:
        return (f"adaptive misinformation beyond {self.tau:g} x the OOD radius "
                f"(nu={self.nu:g}), keyed lies")

    def __repr__(self) -> str:  # never show the secret
        return f"<AdaptiveMisinformation tau={self.tau:g} nu={self.nu:g}>"

"""Keyed noise: a perturbation fixed by (secret, principal, input), keeping the top-1 class.

Fresh random noise on every answer is undone by asking the same question many times and
averaging. Noise derived from an HMAC of the principal and the input cannot be averaged
away: asking again returns the identical answer, so repeats add nothing. Different callers
see different noise for the same input, which also lets answers be traced to a principal.

The noise is added in log space (so small probabilities move by a similar factor as large
ones) and drawn from SHAKE-256 of the HMAC through Box-Muller, not from numpy's generators,
so the bytes on the wire do not depend on the numpy version. If the noise would change the
top class, the two classes swap values: the answer keeps its decision.

Inputs are keyed by their float32 bytes, the datatype the OIP wire carries for these models,
so the same row asked through the gateway or in-process gets the same noise.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from .base import Array, Defense

_FLOOR = 1e-12


def noise_matrix(secret: bytes, principal: str, inputs: Any, n_classes: int) -> Array:
    """Standard-normal noise, one row per input row, fixed by (secret, principal, row)."""
    rows = np.ascontiguousarray(np.asarray(inputs, dtype="<f4").reshape(len(inputs), -1))
    width = n_classes + (n_classes % 2)
    prefix = principal.encode() + b"\x00"
    stream = bytearray()
    for row in rows:
        digest = hmac.new(secret, prefix + row.tobytes(), hashlib.sha256).digest()
        stream += hashlib.shake_256(digest).digest(8 * width)
    bits = np.frombuffer(bytes(stream), dtype="<u8").reshape(len(rows), width)
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53  # in (0, 1)
    u1, u2 = u[:, 0::2], u[:, 1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    z = np.empty((len(rows), width))
    z[:, 0::2] = radius * np.cos(2 * np.pi * u2)
    z[:, 1::2] = radius * np.sin(2 * np.pi * u2)
    return z[:, :n_classes]


def keep_top1(original: Array, shaped: Array) -> Array:
    """Swap values where the shaped top class differs from the original's."""
    out = shaped.copy()
    rows = np.arange(len(out))
    top = np.argmax(original, axis=1)
    now = np.argmax(out, axis=1)
    moved = top != now
    r = rows[moved]
    out[r, top[moved]], out[r, now[moved]] = shaped[r, now[moved]], shaped[r, top[moved]]
    return out


class KeyedNoise(Defense):
    """Log-space Gaussian noise of standard deviation `scale`, keyed and top-1 preserving."""

    kind = "noise"
    uses_inputs = True

    def __init__(self, secret: bytes, scale: float = 0.5) -> None:
        if len(secret) < 16:
            raise ConfigurationError("keyed noise: the secret must be at least 16 bytes")
        if not 0 < scale <= 10:
            raise ConfigurationError(f"keyed noise: scale must be in (0, 10], got {scale}")
        self._secret = secret
        self.scale = float(scale)

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        z = np.log(np.clip(p, _FLOOR, None)) + self.scale * noise_matrix(
            self._secret, principal, inputs, p.shape[1])
        z -= z.max(axis=1, keepdims=True)
        q = np.exp(z)
        q /= q.sum(axis=1, keepdims=True)
        return keep_top1(p, q)

    @property
    def spec(self) -> str:
        return f"noise:{self.scale:g}"

    @property
    def description(self) -> str:
        return f"keyed log-space noise (scale {self.scale:g}), top-1 kept"

    def __repr__(self) -> str:  # never show the secret
        return f"<KeyedNoise scale={self.scale:g}>"

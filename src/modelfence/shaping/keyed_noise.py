"""Keyed noise: a perturbation fixed by (secret, principal, input), keeping the top-1 class.

Fresh random noise on every answer is undone by asking the same question many times and
averaging. Noise derived from a keyed hash of the principal and the input cannot be
averaged away: asking again returns the identical answer, so repeats add nothing. Different
callers see different noise for the same input, which also lets answers be traced to a
principal.

The noise is added in log space (so small probabilities move by a similar factor as large
ones) and drawn from keyed BLAKE2b (a MAC, RFC 7693; a third of HMAC-SHA256's time on one
answer) through Box-Muller in Python's `math`, not from numpy's generators, so the bytes on
the wire do not depend on the numpy version, and a row's noise does not depend on the batch
it came in. If the noise would change the top class, the two classes swap values: the
answer keeps its decision.

Inputs are keyed by their float32 bytes, the datatype the OIP wire carries for these models,
so the same row asked through the gateway or in-process gets the same noise.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from .base import Array, Defense

_FLOOR = 1e-12
_U32 = 2.0 ** -32
_TAU = 2.0 * math.pi
_BLOCK = 16  # 32-bit words in one 64-byte BLAKE2b digest
NOISE = b"mf-keyed-noise"


def derive_key(secret: bytes, purpose: bytes) -> bytes:
    """A 64-byte BLAKE2b key for one use of the secret (any length of secret works)."""
    return hashlib.blake2b(secret, digest_size=64, person=purpose[:16]).digest()


def keyed_rows(prefix: bytes, inputs: Any) -> Iterator[bytes]:
    """``prefix + row`` per input row, the row as its float32 bytes (what the wire carries)."""
    rows = np.asarray(inputs, dtype="<f4").reshape(len(inputs), -1)
    data, step = rows.tobytes(), rows.shape[1] * 4
    for start in range(0, len(data), step) if step else ():
        yield prefix + data[start:start + step]


def _normal_rows(key: bytes, principal: str, inputs: Any, width: int) -> Iterator[list[float]]:
    """`width` (even) standard normals per input row, from the row's keyed hash."""
    blocks = -(-width // _BLOCK)
    unpack = struct.Struct(f"<{blocks * _BLOCK}I").unpack
    log, sqrt, cos, sin, blake = math.log, math.sqrt, math.cos, math.sin, hashlib.blake2b
    salts = [b.to_bytes(8, "little") for b in range(1, blocks)]  # block 0: the zero salt
    for message in keyed_rows(principal.encode() + b"\x00", inputs):
        digest = blake(message, key=key, digest_size=64).digest()
        if salts:
            digest += b"".join(blake(message, key=key, digest_size=64, salt=salt).digest()
                               for salt in salts)
        words = unpack(digest)
        out: list[float] = []
        for i in range(0, width, 2):
            radius = sqrt(-2.0 * log((words[i] + 0.5) * _U32))  # u in (0, 1)
            angle = _TAU * (words[i + 1] + 0.5) * _U32
            out += (radius * cos(angle), radius * sin(angle))
        yield out


def noise_matrix(secret: bytes, principal: str, inputs: Any, n_classes: int) -> Array:
    """Standard-normal noise, one row per input row, fixed by (secret, principal, row)."""
    width = n_classes + (n_classes % 2)
    rows = list(_normal_rows(derive_key(secret, NOISE), principal, inputs, width))
    z: Array = np.array(rows, dtype=np.float64).reshape(len(rows), width)[:, :n_classes]
    return z


def keep_top1(original: Array, shaped: Array) -> Array:
    """Swap values where the shaped top class differs from the original's."""
    top = original.argmax(axis=1)
    now = shaped.argmax(axis=1)
    if len(top) == 1:  # one answer: the same swap in scalars, a third of the time
        t, n = int(top[0]), int(now[0])
        if t == n:
            return shaped
        one = shaped.copy()
        one[0, t], one[0, n] = shaped[0, n], shaped[0, t]
        return one
    moved = top != now
    if not moved.any():
        return shaped
    out = shaped.copy()
    r = np.nonzero(moved)[0]
    out[r, top[r]], out[r, now[r]] = shaped[r, now[r]], shaped[r, top[r]]
    return out


class KeyedNoise(Defense):
    """Log-space Gaussian noise of standard deviation `scale`, keyed and top-1 preserving."""

    kind = "noise"
    uses_inputs = True
    SPEC, DESCRIPTION = "noise:{scale:g}", "keyed log-space noise (scale {scale:g}), top-1 kept"

    def __init__(self, secret: bytes, scale: float = 0.5) -> None:
        if len(secret) < 16:
            raise ConfigurationError("keyed noise: the secret must be at least 16 bytes")
        if not 0 < scale <= 10:
            raise ConfigurationError(f"keyed noise: scale must be in (0, 10], got {scale}")
        self._key = derive_key(secret, NOISE)
        self.scale = float(scale)

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        # p * exp(scale * z) is log-space noise without the log; |z| < 7 by construction
        # (u >= 2**-33),
        # so neither the exponential nor the product can overflow or reach 0. In Python
        # per row, like the noise itself: on one answer each numpy call would cost more
        # than the arithmetic, and a row's answer cannot depend on its batch.
        k, exp, scale = p.shape[1], math.exp, self.scale
        rows = []
        for probs, z in zip(p.tolist(), _normal_rows(self._key, principal, inputs,
                                                     k + (k % 2)), strict=True):
            q = [max(v, _FLOOR) * exp(scale * n) for v, n in zip(probs, z, strict=False)]
            top, now = probs.index(max(probs)), q.index(max(q))
            q[top], q[now] = q[now], q[top]  # keep the decision (a no-op when they agree)
            total = sum(q)
            rows.append([v / total for v in q])
        return np.array(rows, dtype=np.float64).reshape(p.shape)

    def __repr__(self) -> str:  # never show the secret
        return f"<KeyedNoise scale={self.scale:g}>"

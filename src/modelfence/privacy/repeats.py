"""The repeat memory's keys and values: the same question within a period, the same answer.

A randomised answer is remembered per model, mechanism, input and period, under
HMAC-SHA256(key, model, mechanism, period, input): every caller who asks that input of that
model in that period is shown the one draw, so neither repeating a question nor asking it
from many identities (Sybils) averages the noise away. Each principal is charged for a draw
the first time it is shown it: a second key, HMAC(key, principal, answer key), remembers
which draw (its random id) the principal paid for. A draw dropped from memory and drawn
again has a new id, so it is charged again; memory pressure can cost a caller ε, never
give it a fresh draw for free.

Inputs are keyed by their bytes as decoded (dtype and shape included), row by row, over
every input tensor, so a row asked alone or in a batch has the same key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..shaping.base import Array

_ID = 16
_HEAD = struct.Struct(f"<{_ID}s?")


def derive(secret: bytes, purpose: bytes) -> bytes:
    return hmac.new(secret, b"modelfence-privacy:" + purpose, hashlib.sha256).digest()


def row_bytes(tensors: Sequence[Any], n: int) -> list[bytes]:
    """Each row's canonical bytes over every input tensor (its dtype and row shape first)."""
    rows = [bytearray() for _ in range(n)]
    for data in tensors:
        arr = np.asarray(data)
        arr = arr.reshape(n, -1) if arr.size else arr.reshape(n, 0)
        head = f"{arr.dtype.str}{arr.shape[1]}|".encode()
        if arr.dtype.kind == "O":
            for row, values in zip(rows, arr.tolist(), strict=True):
                row += head + repr(values).encode()
        else:
            arr = np.ascontiguousarray(arr)
            for i, row in enumerate(rows):
                row += head + arr[i].tobytes()
    return [bytes(r) for r in rows]


@dataclass(frozen=True, slots=True)
class Draw:
    """One remembered answer: its id, whether it spent ε, and the answer row."""

    id: bytes
    charged: bool
    row: Array

    def encode(self) -> bytes:
        return _HEAD.pack(self.id, self.charged) + np.asarray(self.row, "<f8").tobytes()

    @classmethod
    def decode(cls, value: bytes) -> Draw:
        ident, charged = _HEAD.unpack_from(value)
        return cls(ident, charged, np.frombuffer(value, "<f8", offset=_HEAD.size).copy())

    @classmethod
    def new(cls, charged: bool, row: Array) -> Draw:
        return cls(secrets.token_bytes(_ID), charged, row)


class RepeatKeys:
    """The keys of answers and of what each principal was charged for."""

    def __init__(self, secret: bytes, period_s: float) -> None:
        self._answer = derive(secret, b"answer")
        self._seen = derive(secret, b"seen")
        self.period_s = period_s

    def period(self, now: float) -> tuple[int, float]:
        """(index, end) of the period holding `now`."""
        index = int(now // self.period_s)
        return index, (index + 1) * self.period_s

    def answers(self, model: str, mechanism: str, period: int, rows: Sequence[bytes]
                ) -> list[bytes]:
        prefix = f"{model}\0{mechanism}\0{period}\0".encode()
        return [hmac.new(self._answer, prefix + row, hashlib.sha256).digest() for row in rows]

    def seen(self, principal: str, answers: Sequence[bytes]) -> list[bytes]:
        prefix = principal.encode("utf-8", "surrogatepass") + b"\0"
        return [hmac.new(self._seen, prefix + key, hashlib.sha256).digest() for key in answers]

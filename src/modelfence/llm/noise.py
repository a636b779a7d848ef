"""Keyed noise on the logprobs an answer returns (`controls.logprob_noise`).

Each returned logprob gets `scale` times a standard normal drawn from a keyed hash of
(secret, principal, prompt, token position, token): repeating a request returns the same
numbers, so averaging repeats does not remove the noise, while another principal or
another prompt draws afresh. The same token at the same position gets the same noise in
`logprob` and in `top_logprobs`. Noised values stay at or below 0. A stream is noised
chunk by chunk with each choice's running position, so it gets the same numbers as the
same answer in one piece.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import orjson

_TWO_64 = float(1 << 64)


def request_context(principal: str, body: dict[str, Any]) -> bytes:
    """What the noise depends on besides the position and token: who asked, with what."""
    prompt = {k: body.get(k) for k in ("messages", "prompt", "suffix", "logit_bias")}
    digest = hashlib.sha256(orjson.dumps(prompt, option=orjson.OPT_SORT_KEYS)).digest()
    return principal.encode() + b"\0" + digest


def add_noise(doc: dict[str, Any], secret: bytes, principal: str, request: dict[str, Any],
              scale: float) -> None:
    """Noise the logprobs of `doc` (the answer to `request`) for `principal`; 0: no-op."""
    if scale > 0:
        LogprobNoise(secret, request_context(principal, request), scale).apply(doc)


class LogprobNoise:
    """Noise for one answer: a key derived from the secret and the request's context."""

    def __init__(self, secret: bytes, context: bytes, scale: float) -> None:
        self.scale = scale
        self._key = hashlib.blake2b(context, key=hashlib.sha256(secret).digest(),
                                    digest_size=32, person=b"mf-lp-noise").digest()

    def gaussian(self, position: int, token: bytes) -> float:
        """A standard normal for (position, token), fixed by the key (Box-Muller)."""
        h = hashlib.blake2b(position.to_bytes(8, "big") + token, key=self._key,
                            digest_size=16).digest()
        u1 = (int.from_bytes(h[:8], "big") + 1) / (_TWO_64 + 1)
        u2 = int.from_bytes(h[8:], "big") / _TWO_64
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def noised(self, position: int, token: bytes, logprob: Any) -> Any:
        if isinstance(logprob, bool) or not isinstance(logprob, int | float):
            return logprob
        return min(0.0, float(logprob) + self.scale * self.gaussian(position, token))

    def apply(self, doc: dict[str, Any], offsets: dict[Any, int] | None = None) -> None:
        """Noise every logprob in an OpenAI chat or completions answer, in place.

        `offsets`: for a stream, one dict kept across its chunks (each choice's next
        position, keyed by the choice's index and the kind of list).
        """
        if self.scale <= 0:
            return
        for choice in doc.get("choices") or []:
            logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
            if not isinstance(logprobs, dict):
                continue
            index = choice.get("index", 0)
            for kind in ("content", "refusal"):
                if isinstance(logprobs.get(kind), list):
                    self._chat(logprobs[kind], _advance(offsets, (index, kind),
                                                        len(logprobs[kind])))
            if isinstance(logprobs.get("token_logprobs"), list):
                self._completion(logprobs, _advance(offsets, (index, "text"),
                                                    len(logprobs["token_logprobs"])))

    def _chat(self, entries: list[Any], start: int) -> None:
        for position, entry in enumerate(entries, start):
            if not isinstance(entry, dict):
                continue
            entry["logprob"] = self.noised(position, _token(entry), entry.get("logprob"))
            for alt in entry.get("top_logprobs") or []:
                if isinstance(alt, dict):
                    alt["logprob"] = self.noised(position, _token(alt), alt.get("logprob"))

    def _completion(self, logprobs: dict[str, Any], start: int) -> None:
        tokens = logprobs.get("tokens") or []
        values = logprobs["token_logprobs"]
        for i, value in enumerate(values):
            token = tokens[i] if i < len(tokens) else ""
            values[i] = self.noised(start + i, str(token).encode(), value)
        for i, alts in enumerate(logprobs.get("top_logprobs") or []):
            if isinstance(alts, dict):
                for token, value in alts.items():
                    alts[token] = self.noised(start + i, str(token).encode(), value)


def _advance(offsets: dict[Any, int] | None, key: Any, count: int) -> int:
    """The first position of `count` entries, and move the stream's position past them."""
    if offsets is None:
        return 0
    start = offsets.get(key, 0)
    offsets[key] = start + count
    return start


def _token(entry: dict[str, Any]) -> bytes:
    raw = entry.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    return str(entry.get("token", "")).encode()

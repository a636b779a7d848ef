"""What the distillation test keeps of one prompt: its embedding, a sketch of its wording and
the shape of the request.

The wording sketch is a bottom-k sample of hashed word 4-grams: two prompts built on one
template share the template's 4-grams, and a bottom-k sample picks the same ones from both,
whatever the topic words in between. The shape is what a distiller sets and a person rarely
does: temperature 0, a long max_tokens, one turn without history.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

#: word n-gram length of the wording sketch, and how many of the smallest hashes it keeps
NGRAM = 3
SKETCH = 24
_WORD = re.compile(r"\w+")

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Shape:
    """The request's shape. temperature: NaN when the caller did not set it."""

    temperature: float = math.nan
    max_tokens: int = 0
    n: int = 1
    turns: int = 1  # user messages in the request (more: a conversation with history)


@dataclass(frozen=True, slots=True)
class PromptFeatures:
    """One prompt as the detector keeps it."""

    embedding: F32  # [384] unit vector
    sketch: tuple[int, ...]  # bottom-k hashed word 4-grams
    digest: int  # of the whole normalised text (repeats are not new prompts)
    shape: Shape


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def sketch(text: str) -> tuple[tuple[int, ...], int]:
    """(bottom-k hashes of the word 4-grams, digest of the whole text) of `text`."""
    words = _WORD.findall(text.casefold())
    grams = {_hash(" ".join(words[i:i + NGRAM])) for i in range(len(words) - NGRAM + 1)}
    return tuple(sorted(grams)[:SKETCH]), _hash(" ".join(words))


def features(text: str, embedding: F32, shape: Shape | None = None) -> PromptFeatures:
    s, digest = sketch(text)
    return PromptFeatures(np.asarray(embedding, dtype=np.float32), s, digest, shape or Shape())


def _number(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def asked(kind: str, body: Any, *, max_chars: int = 2000) -> tuple[str, Shape] | None:
    """What a chat or completion request asks (its last user message, or the prompt) and its
    shape; None when there is no text. Never raises."""
    if not isinstance(body, Mapping):
        return None
    text = ""
    turns = 0
    if kind == "chat":
        messages = body.get("messages")
        for m in messages if isinstance(messages, list) else ():
            if isinstance(m, Mapping) and m.get("role") == "user":
                turns += 1
                text = _content(m.get("content"))
    elif kind == "completion":
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else ""
        turns = 1
    text = text.strip()[:max_chars]
    if not text:
        return None
    temperature = _number(body.get("temperature"), math.nan)
    most = body.get("max_completion_tokens", body.get("max_tokens"))
    return text, Shape(temperature=temperature, max_tokens=int(_number(most, 0)),
                       n=int(_number(body.get("n"), 1)), turns=max(turns, 1))


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content
                         if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return ""


def embed(embedder: Any, texts: Sequence[str], shapes: Sequence[Shape | None]
          ) -> list[PromptFeatures]:
    """Features of `texts`, embedded in one call of `embedder` (a MiniLmEmbedder)."""
    if not texts:
        return []
    vectors = embedder.encode(list(texts))
    return [features(t, v, s) for t, v, s in zip(texts, vectors, shapes, strict=True)]

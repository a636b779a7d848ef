"""What every prompt screener shares: the `Verdict`, the `Screener` template, bounding.

It sits below `screening` and its detector modules (`screening_rules`,
`screening_similarity`, `screening_external`) so that they can all use it without importing
each other or the composition in `screening`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from .screening_settings import Label


@dataclass(frozen=True, slots=True)
class Verdict:
    """One screening result. `failed`: the detector could not answer (see `on_error`)."""

    label: Label
    score: float
    source: str
    reason: str
    failed: bool = False

    @property
    def flagged(self) -> bool:
        return self.label != "benign"


def benign(source: str, reason: str = "no attack pattern found", score: float = 0.0) -> Verdict:
    return Verdict("benign", score, source, reason)


def strongest(verdicts: Sequence[Verdict]) -> Verdict:
    """The flagged verdict with the highest score (first on ties), else the most suspicious
    benign one, its source naming every detector that ran."""
    if not verdicts:
        return benign("none", "no detector ran")
    best = max(verdicts, key=lambda v: (v.flagged, v.score))
    if best.flagged or len(verdicts) == 1:
        return best
    sources = "+".join(dict.fromkeys(v.source for v in verdicts))
    failed = [v.reason for v in verdicts if v.failed]
    return Verdict("benign", best.score, sources, "; ".join(failed) or best.reason,
                   failed=bool(failed))


def bound(text: str, max_chars: int) -> str:
    """`text` within `max_chars`: its first quarter and last three quarters when longer."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 4
    tail = max_chars - head - 1
    return f"{text[:head]}\n{text[len(text) - tail:]}"


class Screener(ABC):
    """Template: `screen` bounds the text; each detector implements `_screen`."""

    source: ClassVar[str] = "screener"

    def __init__(self, *, max_chars: int = 8000) -> None:
        self.max_chars = max_chars

    async def screen(self, text: str) -> Verdict:
        if not isinstance(text, str) or not text.strip():
            return benign(self.source, "no text to screen")
        return await self._screen(bound(text, self.max_chars))

    @abstractmethod
    async def _screen(self, text: str) -> Verdict: ...

    async def start(self) -> None:
        """At gateway start-up: load what is configured to preload (nothing by default)."""
        return None

    async def warm(self) -> None:
        """Load now what the first call would (a model), configured to preload or not."""
        return None

    async def close(self) -> None:
        return None


"""Paraphrased leaks: an answer that retells the system prompt's sentences in other words.

A paraphrase keeps no verbatim span and, when the prompt holds no code or name, no mark:
only its meaning is left. Each secret sentence of the prompt (the public persona cut out) and
each sentence of the answer are embedded with all-MiniLM-L6-v2 (the model the similarity
screener ships); a prompt sentence is retold when some answer sentence is at cosine
`threshold` or more. One retold sentence is what an honest answer does when it follows a rule
("I can't discuss other banks"), so a leak is `needed` retold sentences or more — and at
least `share` of the prompt's secret sentences.

MiniLM is an English model: a paraphrase in English is caught; a translation scores low
(French, German and Spanish sentences land near each other only for cognate-rich text), so
translated leaks are left to the marks (codes, names, numbers survive translation). The check
runs once per answer, off the streaming path (its cost is an embedding call, ~5-20 ms on a
CPU): it raises leak evidence, it cannot take back text already sent.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .background import BackgroundWorker
from .leak_marks import secret_parts
from .risk import Observation
from .screening_similarity import MiniLmEmbedder

log = logging.getLogger("modelfence.llm")

_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")


def sentences(text: str, *, least: int = 20, most: int = 32) -> list[str]:
    """Sentences of at least `least` characters (shorter ones say too little to compare),
    at most `most` of them."""
    out = [s.strip() for s in _SENTENCE.split(text) if len(s.strip()) >= least]
    return out[:most]


class SemanticLeakCheck:
    """Sentence-level similarity of answers to one prompt's secret sentences."""

    def __init__(self, embedder: Any, prompt: str, *, public: Sequence[str] = (),
                 threshold: float = 0.5, needed: int = 2, share: float = 0.5) -> None:
        self.embedder = embedder
        self.threshold = threshold
        self.secret = [s for part in secret_parts(prompt, public) for s in sentences(part)]
        self.needed = max(needed, math.ceil(share * len(self.secret)))
        self._matrix: Any = None

    @property
    def active(self) -> bool:
        """A prompt with fewer secret sentences than `needed` cannot be retold by this test."""
        return len(self.secret) >= self.needed

    def retold(self, answer: str) -> list[tuple[int, float]]:
        """(prompt sentence, best cosine) for each secret sentence the answer retells."""
        said = sentences(answer)
        if not self.active or not said:
            return []
        if self._matrix is None:
            self._matrix = self.embedder.encode(self.secret)
        sims = self.embedder.encode(said) @ self._matrix.T  # [answer, prompt]
        best = sims.max(axis=0)
        return [(i, float(b)) for i, b in enumerate(best) if b >= self.threshold]

    def leaks(self, answer: str) -> bool:
        return len(self.retold(answer)) >= self.needed


@dataclass(frozen=True, slots=True)
class _Item:
    check: SemanticLeakCheck
    answer: str
    model: str
    principal: str
    tenant: str | None
    ts: float


class SemanticLeakWorker(BackgroundWorker[_Item]):
    """One background thread running `SemanticLeakCheck` on finished answers; a retold
    prompt becomes leak evidence for the caller (`sink`, e.g. `LlmRiskGuard.record`, called on
    the event loop). The queue is bounded: when it is full an answer goes unchecked and is
    counted in `dropped`, never waited for."""

    THREAD = "mf-leak-semantic"

    def __init__(self, sink: Callable[[Observation], None], *, embedder: Any = None,
                 size: int = 64) -> None:
        super().__init__(sink, size)
        self.embedder = embedder if embedder is not None else MiniLmEmbedder()
        self.checked = 0
        self.found = 0

    def submit(self, check: SemanticLeakCheck, answer: str, model: str, principal: str,
               tenant: str | None) -> bool:
        if not check.active or not answer:
            return False
        return self._offer(_Item(check, answer, model, principal, tenant, time.time()))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if item.check.embedder is None:
                    item.check.embedder = self.embedder
                retold = item.check.retold(item.answer)
                self.checked += 1
                if len(retold) >= item.check.needed:
                    self.found += 1
                    log.warning("LLM answer on %s retells %d sentences of the system prompt "
                                "(cosine %s); leak evidence for %s", item.model, len(retold),
                                ", ".join(f"{b:.2f}" for _, b in retold), item.principal)
                    self._deliver(Observation(model=item.model, principal=item.principal,
                                              tenant=item.tenant, leak=True, ts=item.ts))
            except Exception as e:  # logged: one bad answer must not stop the worker
                log.error("semantic leak check failed: %r", e)
            finally:
                self._finished(1)

"""Prompt screening in the chain: the verdict becomes policy context, not a block.

Before policy, the caller-written text of a chat or completion request goes through the
model's screener; `context.screen` ("benign", "injection", "extraction") and
`context.screen_score` let Cedar policies decide what follows (forbid, a stricter band),
and the verdict feeds the caller's risk. Embeddings are not screened: their input is data
to embed, not instructions to a model.

When screening cannot give a verdict (the similarity screener's queue is full, a classifier
is down), the model's `screening.on_failure` decides: `refuse` (the default, fail closed)
answers 503 with Retry-After; `allow` lets policy decide on `context.screen_failed`. Either
way it is counted, and logged once when the outage starts and once when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ClassVar

from ..errors import Unavailable
from ..kernel.chain import Guard
from .call import LlmCall, exchange_of
from .guards import KIND_OF_ACTION
from .screening import MiniLmEmbedder, Screener, build_screener, text_of
from .settings import LlmModel

log = logging.getLogger("modelfence.llm")


class ScreeningGuard(Guard[LlmCall]):
    name: ClassVar[str] = "screening"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "exchange"})
    provides: ClassVar[frozenset[str]] = frozenset({"screen", "screen_score", "screen_failed"})

    def __init__(self, models: list[LlmModel], *,
                 on_failure: Callable[[str, str], None] | None = None) -> None:
        embedder = MiniLmEmbedder()  # loaded once per process, on first use, if ever
        self._screeners: dict[str, Screener] = {
            m.name: build_screener(m.screening, embedder=embedder)
            for m in models if m.screening is not None}
        self._refuse = {m.name: m.screening.on_failure == "refuse"
                        for m in models if m.screening is not None}
        self._on_failure = on_failure  # (model, "refused" | "allowed"): the metric
        self._failing: dict[str, int] = {}  # model → failures in the current outage

    @property
    def active(self) -> bool:
        return bool(self._screeners)

    async def start(self) -> None:
        for screener in self._screeners.values():
            await screener.start()

    async def close(self) -> None:
        for screener in self._screeners.values():
            await screener.close()

    async def on_request(self, call: LlmCall) -> None:
        assert call.model is not None
        screener = self._screeners.get(call.model.name)
        kind = KIND_OF_ACTION[call.action]
        if screener is None or kind == "embed":
            return
        text = text_of(kind, exchange_of(call).request, max_chars=screener.max_chars)
        if not text:
            return
        verdict = await screener.screen(text)
        name = call.model.name
        if verdict.failed:
            self._failed(call, name, verdict.reason)
        elif name in self._failing:
            log.warning("prompt screening for model %s works again (%d prompt(s) failed "
                        "during the outage)", name, self._failing.pop(name))
        call.screen, call.screen_score = verdict.label, verdict.score
        call.screen_failed = verdict.failed
        if verdict.label != "benign" or verdict.failed:
            # the rule's name, never the quoted prompt text: audit records keep digests
            why = verdict.reason.split(":", 1)[0][:120]
            failed = ", a detector failed" if verdict.failed else ""
            call.note(self.name, "note", f"{verdict.label} {verdict.score:.2f} "
                      f"({verdict.source}{failed}): {why}")

    def _failed(self, call: LlmCall, name: str, reason: str) -> None:
        """Count, log the outage's first failure, and refuse unless `on_failure: allow`."""
        refuse = self._refuse.get(name, True)
        outcome = "refused" if refuse else "allowed"
        if self._on_failure is not None:
            self._on_failure(name, outcome)
        count = self._failing.get(name, 0)
        self._failing[name] = count + 1
        if count == 0:
            log.warning("prompt screening for model %s cannot give a verdict (%s); requests "
                        "are %s until it recovers", name, reason[:200], outcome)
        if refuse:
            call.screen_failed = True
            call.note(self.name, "deny", "screening unavailable: "
                      + reason.split(":", 1)[0][:120])
            raise Unavailable("prompt screening is unavailable; retry later",
                              retry_after_s=2, reason="screening_unavailable")

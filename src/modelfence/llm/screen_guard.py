"""Prompt screening in the chain: the verdict becomes policy context, not a block.

Before policy, the caller-written text of a chat or completion request goes through the
model's screener; `context.screen` ("benign", "injection", "extraction") and
`context.screen_score` let Cedar policies decide what follows (forbid, a stricter band),
and the verdict feeds the caller's risk. Embeddings are not screened: their input is data
to embed, not instructions to a model.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from ..gateway.call import Call
from ..gateway.chain import Guard
from .guards import KIND_OF_ACTION, exchange_of
from .screening import MiniLmEmbedder, Screener, build_screener, text_of
from .settings import LlmModel

log = logging.getLogger("modelfence.llm")


class ScreeningGuard(Guard):
    name: ClassVar[str] = "screening"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "body"})
    provides: ClassVar[frozenset[str]] = frozenset({"screen"})

    def __init__(self, models: list[LlmModel]) -> None:
        embedder = MiniLmEmbedder()  # loaded once per process, on first use, if ever
        self._screeners: dict[str, Screener] = {
            m.name: build_screener(m.screening, embedder=embedder)
            for m in models if m.screening is not None}

    @property
    def active(self) -> bool:
        return bool(self._screeners)

    async def start(self) -> None:
        for screener in self._screeners.values():
            await screener.start()

    async def close(self) -> None:
        for screener in self._screeners.values():
            await screener.close()

    async def on_request(self, call: Call) -> None:
        assert call.model is not None
        screener = self._screeners.get(call.model.name)
        kind = KIND_OF_ACTION[call.action]
        if screener is None or kind == "embed":
            return
        text = text_of(kind, exchange_of(call).request, max_chars=screener.max_chars)
        if not text:
            return
        verdict = await screener.screen(text)
        call.screen, call.screen_score = verdict.label, verdict.score
        call.screen_failed = verdict.failed
        if verdict.label != "benign" or verdict.failed:
            # the rule's name, never the quoted prompt text: audit records keep digests
            why = verdict.reason.split(":", 1)[0][:120]
            failed = ", a detector failed" if verdict.failed else ""
            call.note(self.name, "note", f"{verdict.label} {verdict.score:.2f} "
                      f"({verdict.source}{failed}): {why}")

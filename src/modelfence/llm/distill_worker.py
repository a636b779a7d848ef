"""The distillation test in the gateway: off the request path, on a bounded queue.

After an answered chat or completion call, `DistillGuard.on_complete` (which runs after the
response is sent) hands what the caller asked to `DistillWorker.submit`: a non-blocking put
on a bounded queue; when the queue is full the prompt is dropped and counted, never waited
for. One worker thread takes prompts in batches, embeds them with all-MiniLM-L6-v2 and runs
the detector; each window's evidence goes back to the event loop, to `LlmRiskGuard.record`,
so it feeds the same risk, bands, alerts and replica stream as any other evidence.

The worker has its own `MiniLmEmbedder` instance (the same loader as screening, one more
copy of the 90 MB model): sharing screening's would make a screened request wait behind a
batch of distillation prompts, on the request path.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigurationError
from ..kernel.chain import Guard
from .background import BackgroundWorker, Sink
from .call import LlmCall
from .distill import DistillDetector
from .distill_features import Shape, asked, embed
from .distill_settings import DistillSettings
from .guards import KIND_OF_ACTION
from .screening_similarity import MiniLmEmbedder, require_similarity_extra

log = logging.getLogger("modelfence.llm")

#: (model, outcome, n): outcome "dropped" (queue full), "cold" (reference not ready),
#: "tested", "flagged" (windows) — the Prometheus counter's labels
CountSink = Callable[[str, str, int], None]


@dataclass(frozen=True, slots=True)
class _Item:
    model: str
    principal: str
    tenant: str | None
    text: str
    shape: Shape
    ts: float


class DistillWorker(BackgroundWorker[_Item]):
    """One background thread embedding and testing the prompts of every distill model."""

    THREAD = "mf-distill"
    DROP_BACKLOG = True  # stopping never works through a backlog

    def __init__(self, models: Mapping[str, DistillSettings], sink: Sink, *,
                 embedder: MiniLmEmbedder | None = None,
                 on_count: CountSink | None = None) -> None:
        self.settings = dict(models)
        super().__init__(sink, max(s.queue for s in self.settings.values()))
        self.detectors = {name: DistillDetector(s) for name, s in self.settings.items()}
        self._on_count = on_count
        self.embedder = embedder or MiniLmEmbedder()
        self._batch = max(s.batch for s in self.settings.values())
        self.embedded = 0
        self._cold_logged: set[str] = set()

    @staticmethod
    def check(models: Mapping[str, DistillSettings]) -> None:
        """Refuse to start when distillation detection is on without the `llm` extra, or
        with a reference file that cannot be read."""
        if not models:
            return
        require_similarity_extra("distill: distillation detection")
        for name, s in models.items():
            if s.reference is not None and not s.reference.is_file():
                raise ConfigurationError(f"model {name!r}: distill.reference {s.reference} "
                                         "is not a readable file")

    def submit(self, model: str, principal: str, tenant: str | None, text: str,
               shape: Shape, ts: float) -> bool:
        """Queue one prompt; False (and counted) when the queue is full. Never blocks."""
        if self._offer(_Item(model, principal, tenant, text, shape, ts)):
            return True
        self._count(model, "dropped", 1)
        return False

    # -- the worker thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._warm_start()
        except Exception as e:  # logged: a broken reference file must not kill the worker
            log.error("distill: cannot read the reference prompts: %s", e)
        while True:
            item = self._queue.get()
            if item is None:
                return
            items = [item]
            while len(items) < self._batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._process(items)
                    return
                items.append(nxt)
            try:
                self._process(items)
            except Exception:
                log.exception("distill: a batch of %d prompts failed", len(items))
            self._finished(len(items))

    def _warm_start(self) -> None:
        for name, detector in self.detectors.items():
            n = detector.warm_start(name, self.embedder)
            if n:
                where = self.settings[name].reference or "the shipped generic prompts"
                log.info("distill: model %s reference warm-started with %d prompts from %s",
                         name, n, where)

    def _process(self, items: list[_Item]) -> None:
        prompts = embed(self.embedder, [i.text for i in items], [i.shape for i in items])
        self.embedded += len(items)
        for item, prompt in zip(items, prompts, strict=True):
            detector = self.detectors[item.model]
            before = detector.counts(item.model)
            for obs in detector.add(item.model, item.principal, item.tenant, prompt, item.ts):
                self._deliver(obs)
            after = detector.counts(item.model)
            for outcome in ("cold", "tested", "flagged"):
                n = after.get(outcome, 0) - before.get(outcome, 0)
                if n:
                    self._count(item.model, outcome, n)
            self._log(item.model, detector)

    def _log(self, model: str, detector: DistillDetector) -> None:
        for r in detector.results:
            if not r.tested and model not in self._cold_logged:
                self._cold_logged.add(model)
                s = self.settings[model]
                log.warning("distill: model %s's reference is not ready (needs %d prompts "
                            "from %d callers, or a reference file): windows give no evidence "
                            "yet", model, s.min_reference, s.min_callers)
            elif r.tested and model in self._cold_logged:
                self._cold_logged.discard(model)
                log.info("distill: model %s's reference is ready; windows are tested", model)
            if r.evidence > 0:
                log.warning("distill: %s %s on %s: evidence %.2f (%s)", r.kind, r.subject,
                            model, r.evidence, r.explain())

    def _count(self, model: str, outcome: str, n: int) -> None:
        if self._on_count is not None:
            self._on_count(model, outcome, n)



class DistillGuard(Guard[LlmCall]):
    """Hands each answered chat or completion call's prompt to the distillation worker."""

    name: ClassVar[str] = "distill"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "exchange"})

    def __init__(self, worker: DistillWorker) -> None:
        self.worker = worker

    async def on_complete(self, call: LlmCall) -> None:
        if (call.status != 200 or call.error is not None or call.principal is None
                or call.model is None or call.model.name not in self.worker.settings):
            return
        kind = KIND_OF_ACTION.get(call.action, "")
        ex = call.exchange
        got = asked(kind, ex.request if ex is not None else None)
        if got is None:
            return
        text, shape = got
        self.worker.submit(call.model.name, call.principal.id, call.principal.tenant or None,
                           text, shape, time.time())

"""The watermark in the gateway: marked answers out, evidence recorded after the answer.

Placed in the chain just before output shaping, so its response phase runs right after
shaping's: it sees what the caller is about to receive (shaped probabilities, or only a
label when a band withholds them) and the model's own answer (`call.unshaped_proba`, or
the probabilities when nothing shaped them). A marked row then shows its decoy: the label
is set to the decoy's class, and where probabilities are sent, the decoy and the shown top
class swap values. Whatever shaping does, the watermark reaches the caller intact.

With ``repeats: truthful`` the rows drawn as marks are looked up in the evidence store (one
query per request, only when some row is drawn): an input this principal already holds
marked is answered truthfully and not recorded again, so a repeat user pays for a marked
input once, for up to `truthful_limit` distinct inputs (`RepeatAllowance`): beyond them a
caller's repeats keep their mark, so re-asking everything strips few marks. When the store
cannot answer (PostgreSQL: within 1 s, as the lookup delays the answer), the rows are marked
as usual (counted in `repeat_checks_failed`): the answers are
then what they would be without the lookup.

Recording runs in the complete phase, after the answer left (or just before it, under
strict audit durability): the records are sealed and written to the evidence store there.
A store failure loses those records (logged and counted), never the answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from ..backends.base import ModelEntry
from ..backends.call import OipCall
from ..errors import StoreError
from ..kernel.chain import Guard
from ..kernel.metrics import GatewayMetrics
from .keyring import EvidenceCipher, Keyring
from .marking import Mark, RepeatAllowance, Watermarker, make_record
from .settings import WatermarkSettings
from .store import EvidenceRecord, EvidenceStore, evidence_store_from_url

log = logging.getLogger("modelfence.watermark")

PROBABILITIES = "probabilities"
LABEL = "label"


@dataclass(frozen=True, slots=True)
class _Pending:
    marks: list[Mark]
    model: str
    principal: str
    tenant: str
    classes: list[str]
    n_features: int
    time_us: int


class WatermarkGuard(Guard[OipCall]):
    name: ClassVar[str] = "watermark"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "outputs",
                                                    "queries"})

    def __init__(self, marker: Watermarker, store: EvidenceStore, *,
                 models: frozenset[str] | None = None,
                 cipher: EvidenceCipher | None = None,
                 metrics: GatewayMetrics | None = None,
                 repeats: Literal["truthful", "consistent"] = "truthful",
                 truthful_limit: int = 5) -> None:
        self.marker = marker
        self.repeats = repeats
        self.allowance = RepeatAllowance(truthful_limit)
        self._metrics = metrics
        self.store = store
        self._models = models
        self._cipher = cipher
        self._pending: dict[str, _Pending] = {}
        self.marked_rows = 0
        self.recorded = 0
        self.lost = 0  # records a failing store did not take
        self.truthful_repeats = 0  # marked rows answered truthfully: already held marked
        self.repeat_checks_failed = 0  # requests whose repeat lookup the store did not answer

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def ping(self) -> bool:
        return await self.store.ping()

    def watches(self, model: str) -> bool:
        return self._models is None or model in self._models

    async def on_response(self, call: OipCall) -> None:
        entry, outputs = call.model, call.outputs
        if (entry is None or outputs is None or call.principal is None or call.inputs is None
                or not self.watches(entry.name)):
            return
        proba = self._model_proba(call)
        rows = call.inputs.inputs[0].data if call.inputs.inputs else None
        if proba is None or rows is None or len(rows) != len(proba):
            return
        marks = self.marker.select(rows, np.argmax(proba, axis=1), proba.shape[1], call.risk,
                                   model=entry.name, answered=call.queries)
        if self.repeats == "truthful":
            marks = await self._drop_repeats(marks, entry.name, call.principal.id)
        if not marks:
            return
        classes = [str(v) for v in entry.backend.class_values(proba.shape[1])]
        marked = [m for m in marks if m.kind == "watermark"]
        if marked:
            if call.unshaped_proba is None:  # the monitor judges the model's own answer
                call.unshaped_proba = proba
            self._rewrite(entry, call, marked, proba.shape[1])
            self.marked_rows += len(marked)
            if self._metrics is not None:
                self._metrics.watermark_marked.inc(len(marked))
            call.note(self.name, "note", f"{len(marked)} of {len(proba)} rows watermarked")
        self._pending[call.request_id] = _Pending(
            marks, entry.name, call.principal.id, call.principal.tenant, classes,
            int(np.asarray(rows).reshape(len(rows), -1).shape[1]),
            int(call.received_at * 1_000_000))

    async def _drop_repeats(self, marks: list[Mark], model: str, principal: str
                            ) -> list[Mark]:
        """Marks without the inputs `principal` already holds marked (one store query)."""
        digests = [m.digest for m in marks if m.kind == "watermark"]
        if not digests:
            return marks
        try:
            held = await self.store.marked_before(model, principal, digests)
        except StoreError as exc:
            self.repeat_checks_failed += 1
            if self._metrics is not None:
                self._metrics.watermark_repeat_lookups_failed.inc()
            log.log(logging.DEBUG if exc.reported else logging.WARNING,
                    "watermark: repeats not looked up, marked as usual: %s", exc)
            return marks
        kept = self.allowance.apply(marks, held, model, principal)
        self.truthful_repeats += len(marks) - len(kept)
        if self._metrics is not None and len(kept) < len(marks):
            self._metrics.watermark_truthful_repeats.inc(len(marks) - len(kept))
        return kept

    @staticmethod
    def _model_proba(call: OipCall) -> np.ndarray[Any, Any] | None:
        raw = call.unshaped_proba
        if raw is None:
            assert call.outputs is not None
            tensor = call.outputs.output(PROBABILITIES)
            if tensor is None:
                return None
            raw = tensor.data
        proba = np.asarray(raw, dtype=np.float64)
        if proba.ndim != 2 or proba.shape[1] < 2:
            return None
        return proba

    @staticmethod
    def _rewrite(entry: ModelEntry, call: OipCall, marked: list[Mark], n_classes: int) -> None:
        assert call.outputs is not None
        shown = call.outputs.output(PROBABILITIES)
        if shown is not None:
            data = np.asarray(shown.data).reshape(len(shown.data), -1)
            shown.data = Watermarker.rewrite_proba(data, marked).reshape(shown.data.shape)
        label = call.outputs.output(LABEL)
        if label is not None:
            values = entry.backend.class_values(n_classes)
            data = np.array(label.data, copy=True)
            for m in marked:
                value = values[m.decoy_index]
                data[m.row] = int(value) if data.dtype.kind in "iu" else str(value)
            label.data = data

    async def on_complete(self, call: OipCall) -> None:
        pending = self._pending.pop(call.request_id, None)
        if pending is None or call.status != 200:
            return
        records = [self.record(pending, m, call.request_id) for m in pending.marks]
        try:
            self.recorded += await self.store.add(records)
        except StoreError as exc:
            self.lost += len(records)
            if self._metrics is not None:
                self._metrics.watermark_lost.inc(len(records))
            # during an outage its breaker logged once; the loss is counted per request
            log.log(logging.DEBUG if exc.reported else logging.WARNING,
                    "watermark evidence not recorded (%d records): %s", len(records), exc)

    def record(self, p: _Pending, m: Mark, request_id: str) -> EvidenceRecord:
        return make_record(m, model=p.model, principal=p.principal, tenant=p.tenant,
                           classes=p.classes, n_features=p.n_features, request_id=request_id,
                           time_us=p.time_us, cipher=self._cipher)


def build_watermark(settings: WatermarkSettings, models: dict[str, ModelEntry],
                    metrics: GatewayMetrics | None = None) -> WatermarkGuard:
    """The guard for the configured models; bad keys or store URLs fail start-up here."""
    unknown = sorted(set(settings.models) - set(models))
    if unknown:
        from ..errors import ConfigurationError

        raise ConfigurationError(f"watermark.models: no such model: {', '.join(unknown)}")
    cipher = (EvidenceCipher.from_file(settings.evidence_key_file)
              if settings.evidence_key_file is not None else None)
    if cipher is None:
        log.warning("watermark: no evidence_key_file; watermarked inputs are stored in clear")
    return WatermarkGuard(
        Watermarker.from_settings(settings, Keyring.from_settings(settings)),
        evidence_store_from_url(settings.evidence_store),
        models=frozenset(settings.models) if settings.models else None, cipher=cipher,
        metrics=metrics, repeats=settings.repeats, truthful_limit=settings.truthful_limit)

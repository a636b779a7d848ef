"""A watermarked victim in-process: the gateway's watermark without the gateway.

For red-team runs, tests and benchmarks: the victim's answers pass through the same
`Watermarker` the gateway's guard uses, and each marked or control row becomes the same
`EvidenceRecord` the guard writes, kept in `records`. As the guard with `repeats: truthful`
(the default), an input this principal already got marked is answered truthfully, for up
to `truthful_limit` distinct inputs (`truthful_repeats=False` answers it with its mark
again, as `repeats: consistent`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from ..redteam.victims import Answers, Oracle
from .keyring import EvidenceCipher
from .marking import RepeatAllowance, Watermarker, make_record
from .store import EvidenceRecord

Array = np.ndarray[Any, Any]


class WatermarkedOracle(Oracle):
    """`inner`'s answers with the watermark, as `principal` would receive them."""

    def __init__(self, inner: Oracle, marker: Watermarker, *, model: str = "model",
                 principal: str = "thief", tenant: str = "tenant",
                 risk: float | Callable[[], float] = 0.0,
                 cipher: EvidenceCipher | None = None, truthful_repeats: bool = True,
                 truthful_limit: int = 5) -> None:
        self._inner, self.marker = inner, marker
        self.n_classes, self.n_features = inner.n_classes, inner.n_features
        self.classes, self.batch = inner.classes, inner.batch
        self.description = f"{inner.description} (watermarked)"
        self.model, self.principal, self.tenant = model, principal, tenant
        self._risk = risk
        self._cipher = cipher
        self.records: list[EvidenceRecord] = []
        self.marked = 0
        self.truthful_repeats = truthful_repeats
        self.allowance = RepeatAllowance(truthful_limit)
        self.answered = 0  # rows answered so far (the planned rate tapers after `holding`)
        self._held: set[str] = set()  # digests of the inputs this principal got marked

    def ask(self, x: Array) -> Answers:
        a = self._inner.ask(x)
        if a.proba is None:
            raise ValueError("the watermark needs the victim's probabilities")
        risk = self._risk() if callable(self._risk) else self._risk
        marks = self.marker.select(x, a.labels, self.n_classes, risk, model=self.model,
                                   answered=self.answered)
        self.answered += len(a.labels)
        if self.truthful_repeats:
            marks = self.allowance.apply(marks, self._held, self.model, self.principal)
        if not marks:
            return a
        proba = Watermarker.rewrite_proba(a.proba, marks)
        labels = np.array(a.labels, copy=True)
        classes = [str(c) for c in (self.classes if self.classes is not None
                                    else range(self.n_classes))]
        request_id, now = uuid.uuid4().hex, int(time.time() * 1_000_000)
        for m in marks:
            if m.kind == "watermark":
                labels[m.row] = m.decoy_index
                self.marked += 1
                self._held.add(m.digest)
            self.records.append(make_record(
                m, model=self.model, principal=self.principal, tenant=self.tenant,
                classes=classes, n_features=self.n_features, request_id=request_id,
                time_us=now, cipher=self._cipher))
        return Answers(labels, proba)

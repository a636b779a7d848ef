"""Where the corpus plugs in the distillation detector (llm/distill.py) when it exists.

It does what the gateway's `DistillGuard` and background worker do, synchronously on the
simulated clock: for each answered call of a model with `distill:` settings, what the call
asks (`distill_features.asked` on the request sent upstream) is embedded, added to that
model's `DistillDetector`, and the observations of the windows it closed go to the risk
book. Without the module (or without `distill:` on the models) the hook says so: every
report carries the detector's status ("absent", ...), never a silent skip.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from ..risk import Observation
from ..screening import MiniLmEmbedder
from ..settings import LlmSettings
from .callers import Request


class DistillHook:
    """`status`: "absent (why)" or "present (what runs)"."""

    def __init__(self, detectors: dict[str, Any], embedder: MiniLmEmbedder, status: str,
                 features: Any = None) -> None:
        self._detectors = detectors
        self._embedder = embedder
        self._features = features
        self.status = status

    @classmethod
    def create(cls, settings: LlmSettings, embedder: MiniLmEmbedder) -> DistillHook:
        try:
            core = importlib.import_module("modelfence.llm.distill")
            features = importlib.import_module("modelfence.llm.distill_features")
        except ImportError:
            return cls({}, embedder, "absent (no modelfence.llm.distill)")
        make = getattr(core, "DistillDetector", None)
        if make is None or not hasattr(features, "asked") or not hasattr(features, "embed"):
            return cls({}, embedder, "absent (llm/distill.py has no DistillDetector API)")
        models = {m.name: m.distill for m in settings.models
                  if getattr(m, "distill", None) is not None}
        if not models:
            return cls({}, embedder, "absent (no model has distill: settings)")
        detectors = {name: make(s) for name, s in models.items()}
        for name, detector in detectors.items():  # as the gateway's worker does at start
            if hasattr(detector, "warm_start"):
                detector.warm_start(name, embedder)
        return cls(detectors, embedder, f"present (DistillDetector on {len(detectors)} "
                   "models)", features)

    @property
    def present(self) -> bool:
        return bool(self._detectors)

    def prime(self, texts: Sequence[str]) -> None:
        if self._detectors:
            self._embedder.encode(list(dict.fromkeys(t.strip()[:2000] for t in texts)))

    def add(self, r: Request, body: dict[str, Any], now: float) -> list[Observation]:
        """`body`: the request as sent upstream (after the band's controls)."""
        detector = self._detectors.get(r.model)
        if detector is None:
            return []
        got = self._features.asked(r.kind, body)
        if got is None:
            return []
        text, shape = got
        prompt = self._features.embed(self._embedder, [text], [shape])[0]
        return list(detector.add(r.model, r.principal, r.tenant, prompt, now) or ())

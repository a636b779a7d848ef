"""Distillation detection from what callers ask, per principal and per tenant.

Token volume alone misses a distiller that spends 3 to 6 times its peers' tokens. What
gives one away is the shape of what it asks: a window of its prompts is unlike the model's
benign traffic (an MMD two-sample test over all-MiniLM-L6-v2 embeddings, `distill_mmd.py`),
AND it has the structure of data collection rather than of a person at work:

- templated: most prompts of the window share a long wording skeleton (hashed word 4-grams,
  `distill_features.py`) around changing topic words;
- a topic sweep: a few reused request forms (a shared skeleton in part of the window) over
  ever new topics, never revisited (a person returns to a topic, follows up, rephrases);
- systematic requests (temperature 0, one turn without history) only scale the sweep's
  evidence: apps and editor plugins send temperature 0 for every user, and a thief sets it
  freely, so it is never evidence alone.

Differing from the population is not theft: a developer asking only Python questions
differs as much as a templated distiller, even at temperature 0, but asks in its own words
(no shared skeleton); alone, the MMD test gives no evidence.

Windows are tumbling windows of `window` prompts per subject; each subject keeps its last
`history` prompts in fixed arrays (int8 embeddings, wording sketches, shapes), so memory per
caller is bounded (`subject_bytes`), and at most `max_subjects` subjects per model (least
recently seen dropped). A tenant's window holds the prompts of all its keys: a thief split
over ten keys fills one in twenty prompts. The core is synchronous and pure (`add` takes the
time), so the corpus can drive it on a simulated clock; `distill_worker.py` runs it on a
background thread for the gateway.
"""

from __future__ import annotations

import importlib.resources
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..stores.recent import recent
from .distill_features import F32, SKETCH, PromptFeatures
from .distill_mmd import FILE_OWNER, NullFit, Reference
from .distill_settings import DistillSettings
from .risk import Observation

log = logging.getLogger("modelfence.llm")

DIM = 384
#: a prompt shares its template when this share of its sketch is in 3+ prompts of the window
TEMPLATE_SHARED = 0.5
TEMPLATE_PROMPTS = 3
#: cosine at which two prompts are one prompt retyped (a greeting, a typo, a retry)
REPEAT = 0.9
#: cosine at which a prompt returns to an earlier prompt's topic
REVISIT = 0.55
#: share of a window's prompts in a shared wording skeleton where reused request forms start
#: to count (one prompt in 20 is chance) and where they count fully
FORMS_FROM = 0.05
FORMS_FULL = 0.25
#: temperature at or below which a request asks for the model's most likely answer
DETERMINISTIC = 0.05


def _ramp(x: float, lo: float, hi: float) -> float:
    return min(max((x - lo) / (hi - lo), 0.0), 1.0)


def subject_bytes(settings: DistillSettings) -> int:
    """The most one subject (principal or tenant) holds: its fixed arrays and a bound on the
    Python objects around them."""
    h = settings.history
    return h * (DIM + 4 * SKETCH + 1 + 4 + 16 + 8) + 1024


@dataclass(slots=True)
class _Subject:
    """A principal's or tenant's last `history` prompts, in fixed arrays (a ring)."""

    emb: np.ndarray
    sketch: np.ndarray
    nsketch: np.ndarray
    digest: np.ndarray
    shape: np.ndarray  # [h, 4]: temperature (NaN: unset), max_tokens, n, turns
    owner: list[str]
    seen: int = 0  # prompts ever added
    pending: int = 0  # prompts since the last window
    last: float = 0.0  # the last window's evidence

    @classmethod
    def empty(cls, h: int) -> _Subject:
        return cls(np.zeros((h, DIM), np.int8), np.zeros((h, SKETCH), np.uint32),
                   np.zeros(h, np.uint8), np.zeros(h, np.uint32), np.zeros((h, 4), np.float32),
                   [""] * h)

    def push(self, f: PromptFeatures, owner: str) -> None:
        h = len(self.owner)
        i = self.seen % h
        self.emb[i] = np.clip(np.rint(f.embedding * 127.0), -127, 127)
        k = len(f.sketch)
        self.sketch[i, :k] = f.sketch
        self.nsketch[i] = k
        self.digest[i] = f.digest
        s = f.shape
        self.shape[i] = (s.temperature, s.max_tokens, s.n, s.turns)
        self.owner[i] = owner
        self.seen += 1
        self.pending += 1

    def recent(self, k: int) -> list[int]:
        """Ring positions of the last `k` prompts, oldest first."""
        h = len(self.owner)
        k = min(k, self.seen, h)
        return [(self.seen - k + j) % h for j in range(k)]

    def vectors(self, idx: Sequence[int]) -> F32:
        x = self.emb[list(idx)].astype(np.float32) / 127.0
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        out: F32 = x / np.maximum(norms, 1e-6)
        return out

    def nbytes(self) -> int:
        arrays = (self.emb, self.sketch, self.nsketch, self.digest, self.shape)
        return sum(a.nbytes for a in arrays) + 8 * len(self.owner) + 1024


@dataclass(frozen=True, slots=True)
class WindowResult:
    """One tested window: the parts of the evidence, for logs, tuning and the notes."""

    model: str
    kind: str  # "principal" | "tenant"
    subject: str
    principal: str  # the principal (for a tenant: the one with most prompts in the window)
    tenant: str | None
    evidence: float
    tested: bool  # False: the reference was not ready (no evidence either way)
    mmd2: float = 0.0
    threshold: float = 0.0
    p: float = 1.0
    differs: bool = False
    template: float = 0.0
    revisit: float = 0.0
    spread: float = 0.0
    systematic: float = 0.0
    nearest: float = 0.0

    @property
    def suspect(self) -> bool:
        """Evidence, or a structure that would be evidence were the window unlike benign
        traffic: before the reference is ready, such a window's prompts stay out of it."""
        return self.evidence > 0 or combine(True, self.template, self.revisit,
                                            self.systematic) > 0

    def explain(self) -> str:
        if not self.tested:
            return "reference not ready"
        return (f"mmd2 {self.mmd2:.4f} (threshold {self.threshold:.4f}, p {self.p:.1e}), "
                f"template {self.template:.2f}, revisits {self.revisit:.2f}, "
                f"spread {self.spread:.2f}, systematic {self.systematic:.2f}")


@dataclass(slots=True)
class _Model:
    reference: Reference
    subjects: OrderedDict[str, _Subject] = field(default_factory=OrderedDict)
    counts: Counter[str] = field(default_factory=Counter)


class DistillDetector:
    """Windows of each caller's prompts tested against the model's benign traffic.

    `add(model, principal, tenant, features, now)` returns the observations to give the risk
    book (`LlmRiskGuard.record`): one per window with evidence above 0. Not thread-safe: one
    thread (the worker) owns it.
    """

    def __init__(self, settings: DistillSettings, *, seed: int = 0) -> None:
        self.s = settings
        self._seed = seed
        self._models: dict[str, _Model] = {}
        self.results: list[WindowResult] = []  # the windows of the last `add`
        self._nearest = 0.0

    def _model(self, model: str) -> _Model:
        m = self._models.get(model)
        if m is None:
            cap = max(1, int(self.s.reference_size * self.s.caller_share))
            m = self._models[model] = _Model(Reference(self.s.reference_size, DIM,
                                                       caller_cap=cap, seed=self._seed))
        return m

    # -- the reference ---------------------------------------------------------------------

    def seed_reference(self, model: str, embeddings: F32) -> None:
        """Warm-start the reference with example benign prompts (the `reference` file)."""
        ref = self._model(model).reference
        for v in np.asarray(embeddings, dtype=np.float32):
            ref.add(FILE_OWNER, v)

    def warm_start(self, model: str, embedder: Any) -> int:
        """Seed `model`'s reference from `reference`, or else the shipped generic prompts
        (`shipped_reference`); the number of prompts seeded. `embedder`: a MiniLmEmbedder."""
        texts = reference_prompts(self.s)[:self.s.reference_size]
        for i in range(0, len(texts), 32):
            self.seed_reference(model, embedder.encode(texts[i:i + 32]))
        return len(texts)

    def ready(self, model: str) -> bool:
        """Whether windows of `model` are tested: the reference holds enough prompts from
        enough callers."""
        ref = self._model(model).reference
        return len(ref) >= self.s.min_reference and (
            ref.callers() >= self.s.min_callers or ref.has_file())

    def _fit(self, ref: Reference) -> NullFit:
        if ref.fit is None or ref.changed >= self.s.recalibrate_every:
            ref.calibrate(self.s.window, self.s.null_draws, self.s.false_alarm, self.s.margin)
        assert ref.fit is not None
        return ref.fit

    def counts(self, model: str) -> dict[str, int]:
        """Windows per outcome ("cold", "tested", "flagged") and prompts seen."""
        return dict(self._model(model).counts)

    # -- prompts ---------------------------------------------------------------------------

    def add(self, model: str, principal: str, tenant: str | None, prompt: PromptFeatures,
            now: float) -> list[Observation]:
        """Add one answered prompt; the observations of the windows it closed."""
        m = self._model(model)
        m.counts["prompts"] += 1
        self.results = []
        keys = [("principal", principal, f"p:{principal}")]
        if tenant:
            keys.append(("tenant", tenant, f"t:{tenant}"))
        out: list[Observation] = []
        for kind, subject, key in keys:
            sub = self._touch(m, key)
            sub.push(prompt, principal)
            if sub.pending < self.s.window:
                continue
            sub.pending = 0
            result = self._test(model, m, kind, subject, sub, tenant)
            sub.last = result.evidence if result.tested else float(result.suspect)
            self.results.append(result)
            # a prompt enters the reference through one window only: its tenant's if any
            # (before the reference is ready, not when its structure alone is suspect)
            passed = result.evidence == 0 if result.tested else not result.suspect
            if (kind == "tenant") == bool(tenant) and passed:
                self._admit(m, sub)
            if result.evidence > 0:
                out.append(Observation(model=model, principal=result.principal,
                                       tenant=tenant if kind == "tenant" else None,
                                       distill=result.evidence, ts=now))
        return out

    def _touch(self, m: _Model, key: str) -> _Subject:
        return recent(m.subjects, key, lambda: _Subject.empty(self.s.history),
                      self.s.max_subjects)

    def _admit(self, m: _Model, sub: _Subject) -> None:
        """The window's prompts join the reference, except those of a principal whose own
        last window had evidence."""
        for i in sub.recent(self.s.window):
            owner = sub.owner[i]
            mine = m.subjects.get(f"p:{owner}")
            if mine is not None and mine.last > 0:
                continue
            m.reference.add(owner, sub.vectors([i])[0])

    def _test(self, model: str, m: _Model, kind: str, subject: str, sub: _Subject,
              tenant: str | None) -> WindowResult:
        idx = sub.recent(self.s.window)
        principal = Counter(sub.owner[i] for i in idx).most_common(1)[0][0]
        if not self.ready(model):
            # no test, no evidence; the structure still says whether its prompts may
            # become the benign reference
            m.counts["cold"] += 1
            template, _ = self._template(sub, idx)
            revisit = self._revisits(sub, idx)
            systematic, _ = self._systematic(sub, idx)
            return WindowResult(model, kind, subject, principal, tenant, 0.0, False,
                                template=template, revisit=revisit, systematic=systematic)
        fit = self._fit(m.reference)
        x = sub.vectors(idx)
        stat = m.reference.mmd2(x)
        differs = stat > fit.threshold
        p = fit.p_value(stat, self.s.margin)
        template, templated = self._template(sub, idx)
        revisit = self._revisits(sub, idx)
        sims = x @ x.T
        spread = float((sims.sum() - len(idx)) / (len(idx) * (len(idx) - 1)))
        systematic, systematic_at = self._systematic(sub, idx)
        evidence = combine(differs, template, revisit, systematic)
        if evidence > 0 and kind == "tenant":
            # a tenant's window blames the key that sent most of what made it suspect, not
            # an honest member who happened to send more prompts into it
            blamed = Counter(sub.owner[i] for i in {*templated, *systematic_at})
            if blamed:
                principal = blamed.most_common(1)[0][0]
        m.counts["tested"] += 1
        if evidence > 0:
            m.counts["flagged"] += 1
        return WindowResult(model, kind, subject, principal, tenant, evidence, True, stat,
                            fit.threshold, p, differs, template, revisit, spread, systematic,
                            self._nearest)

    @staticmethod
    def _template(sub: _Subject, idx: Sequence[int]) -> tuple[float, list[int]]:
        """Share of the window's distinct prompts whose wording is mostly shared with 2+
        others of the window, and those prompts' ring positions. A repeat (the same prompt
        retyped: cosine 0.9 or more) is one prompt, not a template."""
        x = sub.vectors(idx)
        sims = x @ x.T
        kept: list[int] = []
        for j in range(len(idx)):
            if not kept or float(sims[j, kept].max()) < REPEAT:
                kept.append(j)
        sketches = [set(sub.sketch[idx[j], :sub.nsketch[idx[j]]].tolist()) for j in kept]
        counts: Counter[int] = Counter(h for s in sketches for h in s)
        templated: list[int] = []
        for j, s in zip(kept, sketches, strict=True):
            if len(s) < 4:
                continue
            shared = sum(1 for h in s if counts[h] >= TEMPLATE_PROMPTS)
            if shared >= TEMPLATE_SHARED * len(s):
                templated.append(idx[j])
        return len(templated) / max(len(sketches), 1), templated

    def _revisits(self, sub: _Subject, idx: Sequence[int]) -> float:
        """Share of the window's prompts that return to the topic of an earlier prompt of
        the subject's history (not a repeat of the same text)."""
        hist = sub.recent(len(sub.owner))
        pos = {p: j for j, p in enumerate(hist)}
        x = sub.vectors(hist)
        sims = x @ x.T
        digests = sub.digest[hist]
        back = 0
        near = []
        for i in idx:
            j = pos[i]
            if j == 0:
                continue
            earlier = sims[j, :j][digests[:j] != digests[j]]
            if earlier.size:
                near.append(float(earlier.max()))
                back += near[-1] >= REVISIT
        self._nearest = float(np.mean(near)) if near else 0.0
        return back / len(idx)

    @staticmethod
    def _systematic(sub: _Subject, idx: Sequence[int]) -> tuple[float, list[int]]:
        """Share of requests at temperature 0 (≤ 0.05), in one turn without history, and
        their ring positions."""
        shape = sub.shape[list(idx)]
        temp = shape[:, 0]
        low = np.where(np.isnan(temp), False, temp <= DETERMINISTIC) & (shape[:, 3] <= 1)
        return float(np.mean(low)), [i for i, flag in zip(idx, low, strict=True) if flag]

    # -- memory ----------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """What the detector holds now (subjects and references)."""
        return sum(m.reference.nbytes() + sum(s.nbytes() for s in m.subjects.values())
                   for m in self._models.values())

    def subjects(self, model: str) -> int:
        return len(self._model(model).subjects)


def reference_prompts(settings: DistillSettings) -> list[str]:
    """The warm-start prompts: the `reference` file's, else the shipped list, else none."""
    if settings.reference is not None:
        text = settings.reference.read_text(encoding="utf-8")
    elif settings.shipped_reference:
        text = (importlib.resources.files("modelfence.llm")
                .joinpath("distill_reference.txt").read_text(encoding="utf-8"))
    else:
        return []
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def combine(differs: bool, template: float, revisit: float, systematic: float) -> float:
    """A window's evidence in [0, 1] from its parts; nothing unless unlike benign traffic.

    - templated: most prompts share one long wording skeleton (a templated distiller);
    - request forms over ever new topics: some prompts share a wording skeleton (a distiller
      rotating a few long-answer forms: "Write a detailed explanation of X", "Elaborate on
      X: ...") AND the window rarely returns to an earlier topic (a sweep of a taxonomy);
    - temperature 0 only scales the request-forms part (half without it): it is a request
      shape a client sets freely, and editor plugins and apps send 0 for every user, so on
      its own it is no evidence. A focused developer at temperature 0 (one topic area, own
      phrasing, no shared skeleton) differs from the population and gets none.
    """
    if not differs:
        return 0.0
    templated = _ramp(template, 0.3, 0.6)
    forms = _ramp(template, FORMS_FROM, FORMS_FULL) * _ramp(0.3 - revisit, 0.0, 0.2)
    evidence = max(templated, forms * (0.5 + 0.5 * _ramp(systematic, 0.6, 0.9)))
    return 0.0 if evidence < 0.05 or not math.isfinite(evidence) else round(evidence, 3)

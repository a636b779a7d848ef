"""The gateway's real LLM components, driven in-process on a simulated clock.

`Gateway` runs one request as the /v1 chain does, in its order: screening (llm/screening.py,
heuristics and MiniLM similarity), the caller's risk (`LlmRiskBook.peek`), the example
policies (refuse a prompt screened as an attack above 0.8 on a "screened" model, and any
caller above risk 0.9), the band's output controls (`LlmModel.controls_for`,
`apply_controls`), the canary (`Canary.protect` and its leak policy), the upstream, the leak
filter fed the answer in small chunks as a stream (what it releases is what the client
gets), then `LlmRiskBook.observe`, the distillation detector's observations and the
canary's background paraphrase check (`semantic`: answers checked in batches, a retelling
answer observed as a leak at its time, as the routes' worker does). Nothing here
re-implements a detector: each is called as the gateway calls it, so the corpus measures
what ships. Where a component's signature grew (the leak policy's options, `apply_controls`'
`asked`, an Observation field) the call passes what the installed component accepts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import BadRequest
from .. import recommended
from ..canary import Canary, LeakPolicies
from ..controls import apply_controls
from ..guards import PROBE_REASONS
from ..risk import LlmCrossing as Crossing
from ..risk import LlmRiskBook, Observation
from ..risk_repeats import RepeatedHits
from ..screening import (
    CombinedScreener,
    HeuristicScreener,
    MiniLmEmbedder,
    Screener,
    SimilarityScreener,
    Verdict,
    benign,
    build_screener,
    text_of,
)
from ..screening_base import bound
from ..screening_rules import normalise
from ..screening_similarity import chunks
from ..settings import LlmModel, LlmSettings
from .callers import Request
from .data import SystemPrompt
from .distill_hook import DistillHook
from .upstream import ComplyingUpstream, cut, tokens

CANARY_SECRET = b"modelfence-corpus-canary-secret"
#: The paraphrase check runs on a background worker in the gateway: answers are checked in
#: batches of this many, or once the oldest has waited this long (simulated seconds).
SEMANTIC_BATCH, SEMANTIC_LAG_S = 64, 10.0


class CachingEmbedder(MiniLmEmbedder):
    """MiniLM with every text embedded once per run: the corpus sends many prompts many
    times (system prompts, repeated questions), and the answer never changes."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0

    def encode(self, texts: Sequence[str]) -> Any:
        import numpy as np

        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        for i in range(0, len(todo), 64):
            batch = todo[i:i + 64]
            for text, vec in zip(batch, super().encode(batch), strict=True):
                self._cache[text] = vec
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def prime(self, texts: Sequence[str]) -> None:
        """Embed these now, in large batches (several times faster than one by one)."""
        self.encode(list(dict.fromkeys(texts)))


def screen_now(screener: Screener, text: str) -> Verdict:
    """The verdict the screener's `screen` gives, computed synchronously (the corpus has
    no event loop to spare per request): the same checks, in the same order."""
    if not text.strip():
        return benign(screener.source, "no text to screen")
    text = bound(text, screener.max_chars)
    if isinstance(screener, HeuristicScreener | SimilarityScreener):
        return screener.check(text)
    if isinstance(screener, CombinedScreener):
        verdicts = []
        if screener.first is not None:
            v = screen_now(screener.first, text)
            if (v.flagged and screener.short_circuit) or not screener.rest:
                return v
            verdicts.append(v)
        verdicts += [screen_now(s, text) for s in screener.rest]
        from ..screening_base import strongest
        return strongest(verdicts)
    return asyncio.run(screener.screen(text))


@dataclass
class Outcome:
    """What one request came to, as the client and the gateway saw it."""

    request: Request
    status: int  # 200, 400 (controls), 403 (policy)
    reason: str = ""
    band: str = "default"
    risk: float = 0.0
    screen: str = ""
    screen_score: float = 0.0
    delivered: list[str] = field(default_factory=list)  # per choice, what the client got
    generated: list[str] = field(default_factory=list)  # per choice, what the model wrote
    leaked: bool = False  # the leak filter stopped an answer
    cut_by_band: bool = False  # the band's max_tokens cut an answer the base would not
    asked: tuple[str, ...] = ()
    crossings: list[Crossing] = field(default_factory=list)


class Gateway:
    """One protected model per system prompt, the recommended configuration, one risk book."""

    def __init__(self, systems: Sequence[SystemPrompt], *, embedder: CachingEmbedder | None
                 = None, distill: bool = True, settings: LlmSettings | None = None,
                 seed: int = 0, policies: bool = True) -> None:
        self.systems = {s.name: s for s in systems}
        self.settings = settings or recommended.llm_settings(
            [recommended.llm_model(s.name, "http://corpus.invalid/v1", public=s.persona)
             for s in systems])
        self.models: dict[str, LlmModel] = {m.name: m for m in self.settings.models}
        self.embedder = embedder or CachingEmbedder()
        self.screeners: dict[str, Screener] = {
            m.name: build_screener(m.screening, embedder=self.embedder)
            for m in self.settings.models if m.screening is not None}
        self.book = LlmRiskBook(self.settings.monitor, self.models)
        self.repeats = RepeatedHits()  # as LlmRiskGuard: a conversation's hit counts once
        self.upstream = ComplyingUpstream({s.text: s.secret for s in systems})
        self.distill = DistillHook.create(self.settings, self.embedder) if distill else None
        self._rng = random.Random(seed)  # noqa: S311 (chunk sizes of a simulated stream)
        self._policies = LeakPolicies()  # as the routes cache them
        self.cedar = policies  # off: the example policies refuse nothing (an ablation)
        # answers waiting for the paraphrase check (canary.semantic), as the routes' background
        # worker: (check, answer, request, time); checked in batches, at most SEMANTIC_LAG_S
        # of simulated time after the answer
        self._retold: list[tuple[Any, str, Request, float]] = []
        self.semantic_checked = 0
        self.on_crossing: Callable[[Crossing, float], None] | None = None

    @property
    def distill_status(self) -> str:
        return "off" if self.distill is None else self.distill.status

    def system_text(self, model: str) -> str | None:
        s = self.systems.get(model)
        return s.text if s is not None else None

    def prime(self, requests: Sequence[Request]) -> None:
        """Embed the screener's chunks of every request's text in large batches up front."""
        if not any(isinstance(s, SimilarityScreener | CombinedScreener)
                   for s in self.screeners.values()):
            return
        texts = []
        for r in dict.fromkeys((r.model, r.text, r.kind) for r in requests):
            model, text, kind = r
            system = self.system_text(model) if kind == "chat" else None
            whole = f"{system}\n{text}" if system else text
            texts += chunks(normalise(bound(whole, 8000)))
        self.embedder.prime(texts)
        if self.distill is not None:
            self.distill.prime([r.text for r in requests])

    def handle(self, r: Request, history: Sequence[tuple[str, str]] = ()) -> Outcome:
        """Run `r` at its simulated time `r.t`; `history`: the conversation so far."""
        now = r.t
        pending = self._semantic(now)
        model = self.models[r.model]
        kind = r.kind
        body = r.body(self.system_text(r.model) if kind == "chat" else None, history)
        out = Outcome(r, 200)
        screener = self.screeners.get(r.model)
        if screener is not None:
            verdict = screen_now(screener, text_of(kind, body, max_chars=screener.max_chars))
            out.screen, out.screen_score = verdict.label, verdict.score
        out.risk = self.book.peek(r.model, r.principal, r.tenant, now=now)
        tagged = self.cedar and bool(set(recommended.TAGS) & set(model.attributes.tags))
        if tagged and out.screen not in ("", "benign") and (
                out.screen_score > recommended.SCREEN_REFUSE_ABOVE):
            out.status, out.reason = 403, "policy:no-prompt-attacks"
        elif self.cedar and out.risk > recommended.STOP_RISK:
            out.status, out.reason = 403, "policy:stop-likely-thieves"
        asked: list[str] = []
        if out.status == 200:
            out.band, controls = model.controls_for(out.risk)
            try:
                apply_controls(kind, body, model, controls, asked)
            except BadRequest as exc:
                out.status, out.reason = 400, exc.reason
        out.asked = tuple(dict.fromkeys(asked))
        if out.status == 200:
            self._answer(out, model, kind, body)
        self._observe(out, r, body, now)
        out.crossings = pending + out.crossings
        return out

    def _semantic(self, now: float | None) -> list[Crossing]:
        """Check the waiting answers that are due (all of them when `now` is None): their
        sentences embedded together, each retelling answer observed as a leak at its time."""
        if not self._retold or (now is not None and len(self._retold) < SEMANTIC_BATCH
                                and self._retold[0][3] + SEMANTIC_LAG_S > now):
            return []
        from ..leak_semantic import sentences

        items, self._retold = self._retold, []
        texts = [t for check, answer, _, _ in items for t in sentences(answer)]
        texts += [t for check, _, _, _ in items for t in check.secret]
        self.embedder.prime(texts)
        crossings: list[Crossing] = []
        for check, answer, r, ts in items:
            if check.embedder is None:
                check.embedder = self.embedder
            self.semantic_checked += 1
            if check.leaks(answer):
                obs = Observation(model=r.model, principal=r.principal, tenant=r.tenant,
                                  leak=True, ts=ts)
                crossings += self.book.observe(obs, now=ts)
        return crossings

    def flush(self) -> list[Crossing]:
        """The background checks still waiting at the end of the run."""
        return self._semantic(None)

    def _answer(self, out: Outcome, model: LlmModel, kind: str, body: dict[str, Any]) -> None:
        n = int(body.get("n") or 1)
        cap = int(body.get("max_tokens") or model.controls.max_tokens)
        requested = out.request.options.get("max_tokens")
        base_cap = min(int(requested) if isinstance(requested, int) else
                       model.controls.max_tokens, model.controls.max_tokens)
        if kind == "completion":
            texts = [self.upstream.complete(str(body.get("prompt", "")), choice=i)
                     for i in range(n)]
            for text in texts:
                gen, _ = cut(text, cap)
                out.generated.append(gen)
                out.delivered.append(gen)
            return
        messages = body["messages"]
        policy = None
        if model.canary is not None:
            canary = Canary(CANARY_SECRET, model.name)
            policy = self._policies.for_settings(canary, messages, model.canary)
            messages = canary.protect(messages)
        for i in range(n):
            text = self.upstream.answer(messages, choice=i)
            gen, was_cut = cut(text, cap)
            out.cut_by_band = out.cut_by_band or (was_cut and cap < base_cap
                                                  and len(text) > len(gen))
            out.generated.append(gen)
            if policy is None:
                out.delivered.append(gen)
                continue
            f = policy.filter()
            got = []
            pos = 0
            while pos < len(gen):
                step = self._rng.randint(1, 8)
                got.append(f.feed(gen[pos:pos + step]))
                pos += step
            got.append(f.finish())
            out.delivered.append("".join(got))
            out.leaked = out.leaked or bool(f.leaked)
            semantic = getattr(model.canary, "semantic", False)
            if semantic and not f.leaked and hasattr(policy, "semantic"):
                check = policy.semantic(model.canary.semantic_threshold)  # type: ignore[union-attr]
                if check.active:
                    self._retold.append((check, out.delivered[-1], out.request,
                                         out.request.t))

    def _observe(self, out: Outcome, r: Request, body: dict[str, Any], now: float) -> None:
        used = 0
        if out.status == 200:
            prompt = sum(len(m.get("content") or "") for m in
                         r.body(self.system_text(r.model) if r.kind == "chat" else None)
                         .get("messages", [])) if r.kind == "chat" else len(r.text)
            used = tokens("x" * prompt) + sum(tokens(g) for g in out.generated)
        values: dict[str, Any] = {
            "model": r.model, "principal": r.principal, "tenant": r.tenant, "tokens": used,
            "leak": out.leaked, "screen": out.screen, "screen_score": out.screen_score,
            **({"screen": "", "screen_score": 0.0} if out.screen in ("extraction", "injection")
               and not self.repeats.fresh(r.principal, r.kind, body) else {}),
            "probe": out.reason in PROBE_REASONS and not out.asked, "asked": out.asked,
            "ts": now}
        obs = Observation(**values)
        if obs.tokens or obs.leak or obs.probe or out.asked or obs.screen not in ("", "benign"):
            out.crossings += self.book.observe(obs, now=now)
        if self.distill is not None and out.status == 200:
            for extra in self.distill.add(r, body, now):
                out.crossings += self.book.observe(extra, now=extra.ts or now)

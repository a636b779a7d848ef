"""The protections of an LLM's answer as guards: the system-prompt canary and logprob noise.

They sit in the chain's `outputs` stage (kernel/stages.py), as shaping and the watermark do
on the OIP path: the request phase prepares (the canary joins the system prompt, the
noise key is drawn), the response phase filters a whole answer (`LlmExchange.answer`), and
`on_event` filters each chunk of a stream as it passes, in the order response phases run.
The routes keep only the protocol: reading, re-encoding and the hidden upstream name.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any, ClassVar

from ..kernel.chain import Guard
from .call import LlmCall, LlmExchange, exchange_of
from .canary import Canary, LeakPolicies
from .leak_semantic import SemanticLeakWorker
from .noise import LogprobNoise, request_context

log = logging.getLogger("modelfence.llm")


class LlmOutputGuard(Guard[LlmCall]):
    """A guard on an LLM answer; `on_event` sees each chunk of a streamed one."""

    def on_event(self, call: LlmCall, ex: LlmExchange, chunk: dict[str, Any]) -> None:
        return None


class LogprobNoiseGuard(LlmOutputGuard):
    """Keyed noise on returned logprobs, at the caller's band's `logprob_noise` (noise.py);
    a stream is noised chunk by chunk with each choice's running position."""

    name: ClassVar[str] = "logprob_noise"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "exchange",
                                                    "controls"})

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    async def on_request(self, call: LlmCall) -> None:
        ex = exchange_of(call)
        assert call.controls is not None
        if call.controls.logprob_noise > 0:
            ex.noise = LogprobNoise(self._secret, request_context(_who(call), ex.request),
                                    call.controls.logprob_noise)

    async def on_response(self, call: LlmCall) -> None:
        ex = exchange_of(call)
        if ex.noise is not None and ex.answer is not None:
            ex.noise.apply(ex.answer)

    def on_event(self, call: LlmCall, ex: LlmExchange, chunk: dict[str, Any]) -> None:
        if ex.noise is not None:
            ex.noise.apply(chunk, ex.noise_offsets)


class CanaryGuard(LlmOutputGuard):
    """System-prompt theft protection for models with `canary:` settings.

    The request phase puts the deployment's canary first in the system prompt and builds
    what a leak looks like; the answer is then redacted or blocked where it would leak
    (a stream's text is held back while it could still become a leak), and an answer the
    filter passed goes to the paraphrase check (`semantic`, in the background).
    """

    name: ClassVar[str] = "canary"
    requires: ClassVar[frozenset[str]] = frozenset({"model", "exchange", "controls"})

    def __init__(self, secret: bytes, semantic: SemanticLeakWorker | None = None) -> None:
        self._secret = hmac.new(secret, b"canary", hashlib.sha256).digest()
        self._policies = LeakPolicies()
        self._semantic = semantic

    async def on_request(self, call: LlmCall) -> None:
        ex = exchange_of(call)
        settings = ex.entry.settings.canary
        messages = ex.request.get("messages")
        if settings is None or not isinstance(messages, list):
            return
        canary = Canary(self._secret, ex.entry.name)
        ex.leaks = self._policies.for_settings(canary, messages, settings)
        ex.request["messages"] = canary.protect(messages)

    async def on_response(self, call: LlmCall) -> None:
        ex = exchange_of(call)
        if ex.leaks is None or ex.answer is None:
            return
        for choice in ex.answer.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                continue
            result = ex.leaks.scan(message["content"])
            if result.leaked:
                message["content"] = result.text
                if ex.leaks.mode == "block":
                    choice["finish_reason"] = "content_filter"
                ex.leaked = True
                _leak_noted(call, ex.leaks.mode, result.detections)
            else:
                self._retold(call, ex, message["content"])

    def on_event(self, call: LlmCall, ex: LlmExchange, chunk: dict[str, Any]) -> None:
        """Pass each choice's text through its leak filter; hold back what could still leak."""
        if ex.leaks is None:
            return
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = int(choice.get("index", 0))
            f = ex.filters.get(index)
            if f is None:
                f = ex.filters[index] = ex.leaks.filter()
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            out = f.feed(text) if isinstance(text, str) else ""
            if choice.get("finish_reason") is not None:
                out += f.finish()
                if f.leaked and ex.leaks.mode == "block":
                    choice["finish_reason"] = "content_filter"
                if not f.leaked:
                    self._retold(call, ex, f.text)
            if f.leaked and not ex.leaked:
                ex.leaked = True
                _leak_noted(call, ex.leaks.mode, f.detections)
            if isinstance(delta, dict) and (isinstance(text, str) or out):
                delta["content"] = out

    def _retold(self, call: LlmCall, ex: LlmExchange, answer: str) -> None:
        """Hand an answer the leak filter passed to the paraphrase check (in the background:
        a retold prompt is leak evidence for the caller, after the answer)."""
        settings = ex.entry.settings.canary
        p = call.principal
        if (self._semantic is None or settings is None or not settings.semantic
                or p is None or ex.leaks is None):
            return
        self._semantic.submit(ex.leaks.semantic(settings.semantic_threshold), answer,
                              ex.entry.name, p.id, p.tenant or None)


def _leak_noted(call: LlmCall, mode: str, detections: Any) -> None:
    kinds = sorted({d.kind for d in detections})
    action = "blocked" if mode == "block" else "redacted"
    call.note("canary", "deny" if mode == "block" else "note",
              f"system prompt leak {action}: {', '.join(kinds)}")
    log.warning("LLM answer on %s would leak the system prompt (%s); %s",
                call.model_name, ", ".join(kinds), action)


def _who(call: LlmCall) -> str:
    p = call.principal
    return "" if p is None else f"{p.tenant}/{p.id}"

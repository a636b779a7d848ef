"""OpenAI-compatible routes: chat, completions, embeddings (streamed or not), the models.

Each POST runs the gateway's guard chain, in the stages every protocol shares
(kernel/stages.py: identity → inflight → llm_model → usage → screening → risk → policy →
rate limits → llm_body → budgets → canary → logprob noise), with the upstream call as the
terminal; the answer's protections are guards (output_guards.py), the route only reads,
renames the hidden upstream model and re-encodes.
A stream is passed through event by event as it arrives, each event parsed as the SSE
standard defines (sse_events.py) and re-encoded after the filters, never forwarded raw; its
audit record is written when it ends, or when the client goes away (which also closes the
upstream request).
Every answer under /v1 that is not a success is an OpenAI error object, an unknown route
or method included; a request whose fields the controls clamped says which in the
`X-Modelfence-Clamped` header.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from ..audit.record import replica_name
from ..errors import ConfigurationError, NotFound, UpstreamError, http_status_and_message
from ..kernel.chain import Guard, GuardChain, Terminal
from ..kernel.finish import OnFailure, finish
from ..kernel.responses import error_response
from ..kernel.stages import Stages
from ..risk import Alert
from .call import LlmCall, LlmEntry, LlmExchange, exchange_of
from .distill_worker import CountSink, DistillGuard, DistillWorker
from .guards import LlmBodyGuard, LlmModelGuard
from .leak_semantic import SemanticLeakWorker
from .output_guards import CanaryGuard, LlmOutputGuard, LogprobNoiseGuard
from .risk import LlmRiskBook
from .risk_guard import LlmRiskGuard
from .risk_sync import RiskStream
from .screen_guard import ScreeningGuard
from .screening_similarity import require_similarity_extra
from .settings import LlmSettings
from .sse import SseResponse
from .sse_events import SseEvent, SseParser
from .upstream import LlmUpstream, loads_object

log = logging.getLogger("modelfence.llm")

PATHS = {"chat": "/chat/completions", "completion": "/completions", "embed": "/embeddings"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "invalid_request_error",
               405: "invalid_request_error", 429: "rate_limit_error"}
#: What the catch-all route answers (404 or 405); Starlette's default would be GET only.
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: Names the fields the output controls lowered to the caller's limits (`n,max_tokens`).
CLAMPED_HEADER = "X-Modelfence-Clamped"


def openai_error(status: int, message: str, code: str,
                 headers: dict[str, str] | None = None) -> Response:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    doc = {"error": {"message": message, "type": kind, "code": code}}
    return Response(orjson.dumps(doc), status, headers=headers, media_type="application/json")


def _sse(doc: Any) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


class LlmRoutes:
    """The /v1 routes over the gateway's guards; `close()` it in the app's lifespan."""

    def __init__(self, settings: LlmSettings, *, stages: Stages,
                 audit_before_answer: bool = False, noise_secret: bytes | None = None,
                 on_alert: Callable[[Alert], None] | None = None,
                 on_screen_failure: Callable[[str, str], None] | None = None,
                 on_failure: OnFailure | None = None,
                 on_distill: CountSink | None = None,
                 upstream_traces: Sequence[Any] = (),
                 pins: Sequence[Guard[Any]] = ()) -> None:
        self.settings = settings
        self._on_failure = on_failure  # counts the gateway's own failures, as on OIP
        self._noise_secret = noise_secret or os.urandom(32)  # logprob noise key
        self.models = {m.name: LlmEntry(m) for m in settings.models}
        text_wm = hmac.new(self._noise_secret, b"text-watermark", hashlib.sha256).digest()
        self.upstream = LlmUpstream(max_connections=settings.max_connections,
                                    watermark_secret=text_wm, traces=upstream_traces)
        lookup = LlmModelGuard(self.models, settings.max_body_bytes)
        self.screening = ScreeningGuard(settings.models, on_failure=on_screen_failure)
        screening = [self.screening] if self.screening.active else []
        self.risk = self._risk_guard(settings, on_alert) if settings.monitor.enabled else None
        risk = [self.risk] if self.risk is not None else []
        self.distill = self._distill_worker(settings, on_distill)
        distill = [DistillGuard(self.distill)] if self.distill is not None else []
        self.leak_semantic = self._semantic_worker(settings)
        # response phases run bottom to top: the noise first, then the leak filter
        outputs: list[LlmOutputGuard] = [LogprobNoiseGuard(self._noise_secret)]
        if any(m.canary is not None for m in settings.models):
            outputs.insert(0, CanaryGuard(self._noise_secret, self.leak_semantic))
        # the gateway's shared stages, with the LLM's own guards in theirs (kernel/stages.py)
        self._chain = stages.with_(model=[lookup], screens=screening,
                                   # an operator's pin (`risk.PinGuard`) after the risk
                                   monitor=[*stages.monitor, *risk, *pins, *distill],
                                   body=[*stages.body, LlmBodyGuard()],
                                   outputs=[*stages.outputs, *outputs]).chain(LlmCall)
        self._event_guards = [g for g in reversed(self._chain.guards)
                              if isinstance(g, LlmOutputGuard)]
        self._list_chain = stages.chain(LlmCall, through="inflight")
        self._audit_before_answer = audit_before_answer
        self._pending: set[asyncio.Task[None]] = set()
        self._served: list[Route] = []  # the routes `routes()` gave, but the catch-all

    def _risk_guard(self, settings: LlmSettings,
                    on_alert: Callable[[Alert], None] | None) -> LlmRiskGuard:
        book = LlmRiskBook(settings.monitor, self.models)
        # host:pid can repeat after a restart (containers): a random part keeps it unique
        m, replica = settings.monitor, f"{replica_name()}:{secrets.token_hex(4)}"
        stream = (RiskStream(book, url=m.shared, key=m.key, stream_max=m.stream_max,
                             replica=replica) if m.shared else None)
        return LlmRiskGuard(book, on_alert or _log_alert, replica=replica, stream=stream)

    def _distill_worker(self, settings: LlmSettings,
                        on_count: CountSink | None) -> DistillWorker | None:
        """The distillation test's background worker, when a model has `distill:` on; its
        evidence goes to the risk book, so it needs `llm.monitor`."""
        models = {m.name: m.distill for m in settings.models
                  if m.distill is not None and m.distill.enabled}
        if not models:
            return None
        if self.risk is None:
            raise ConfigurationError(
                f"distill on model(s) {', '.join(sorted(models))} needs llm.monitor.enabled: "
                "its evidence goes to the risk book")
        DistillWorker.check(models)
        return DistillWorker(models, self.risk.record, on_count=on_count)

    def _semantic_worker(self, settings: LlmSettings) -> SemanticLeakWorker | None:
        """The paraphrase check's background worker, when a model's canary has `semantic`
        on (its evidence goes to the risk book); it shares the distillation worker's model."""
        names = sorted(m.name for m in settings.models
                       if m.canary is not None and m.canary.semantic)
        if not names:
            return None
        if self.risk is None:
            raise ConfigurationError(
                f"canary.semantic on model(s) {', '.join(names)} needs llm.monitor.enabled: "
                "its evidence goes to the risk book")
        try:
            require_similarity_extra()
        except ConfigurationError as e:
            raise ConfigurationError(f"canary.semantic: {e}") from None
        embedder = self.distill.embedder if self.distill is not None else None
        return SemanticLeakWorker(self.risk.record, embedder=embedder)

    @property
    def risk_stream(self) -> RiskStream | None:
        return self.risk.stream if self.risk is not None else None

    def routes(self) -> list[Route]:
        served = [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completion, methods=["POST"]),
            Route("/v1/embeddings", self.embed, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.retrieve_model, methods=["GET"]),
        ]
        self._served = served
        # last: what no route above serves is an OpenAI-shaped 404 or 405
        return [*served, Route("/v1{rest:path}", self.unknown_route, methods=ANY_METHOD)]

    async def start(self) -> None:
        if self.risk_stream is not None:
            await self.risk_stream.start()
        await self.screening.start()
        if self.distill is not None:
            self.distill.start(asyncio.get_running_loop())
        if self.leak_semantic is not None:
            self.leak_semantic.start(asyncio.get_running_loop())

    async def close(self) -> None:
        if self.leak_semantic is not None:
            await asyncio.to_thread(self.leak_semantic.stop)
        if self.distill is not None:
            await asyncio.to_thread(self.distill.stop)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.screening.close()
        if self.risk_stream is not None:
            await self.risk_stream.stop()
        await self.upstream.close()

    async def chat(self, request: Request) -> Response:
        return await self._post(LlmCall(request, "chat", None))

    async def completion(self, request: Request) -> Response:
        return await self._post(LlmCall(request, "completion", None))

    async def embed(self, request: Request) -> Response:
        return await self._post(LlmCall(request, "embed", None))

    async def list_models(self, request: Request) -> Response:
        call = LlmCall(request, "metadata", None)

        async def terminal(call: LlmCall) -> None:
            p = call.principal
            assert p is not None
            call.response_body = orjson.dumps({"object": "list", "data": [
                _model_object(e) for name, e in self.models.items() if p.may_use(name)]})

        return await self._metadata(call, terminal)

    async def retrieve_model(self, request: Request) -> Response:
        """One model, as OpenAI's `GET /v1/models/{model}`; one the caller may not use is
        as unknown as one that does not exist."""
        name = str(request.path_params["model"])[:128]
        call = LlmCall(request, "metadata", name)

        async def terminal(call: LlmCall) -> None:
            p = call.principal
            assert p is not None
            entry = self.models.get(name)
            if entry is None or not p.may_use(name):
                raise NotFound(f"the model {name!r} does not exist or you do not have "
                               "access to it", reason="unknown_model")
            call.response_body = orjson.dumps(_model_object(entry))

        return await self._metadata(call, terminal)

    async def unknown_route(self, request: Request) -> Response:
        """A path or method under /v1 no route serves: 404 or 405 (with `Allow`), in the
        OpenAI shape (never audited: no call reached a guard)."""
        method, path = request.method, request.url.path[:200]
        for route in self._served:
            match, _ = route.matches(request.scope)
            if match is Match.PARTIAL and route.methods:
                allow = ", ".join(sorted(route.methods))
                return openai_error(405, f"method {method} not allowed on {path}; use {allow}",
                                    "method_not_allowed", {"Allow": allow})
        return openai_error(404, f"unknown route: {method} {path}", "not_found")

    async def _metadata(self, call: LlmCall, terminal: Terminal[LlmCall]) -> Response:
        try:
            await self._list_chain.run(call, terminal)
            response = Response(call.response_body, 200, media_type="application/json")
        except Exception as exc:
            response = self._error(call, exc)
        return await self._finish(call, self._list_chain, response)

    async def _post(self, call: LlmCall) -> Response:
        stream: AsyncIterator[bytes] | None = None

        async def terminal(call: LlmCall) -> None:
            nonlocal stream
            ex = exchange_of(call)
            path = PATHS[call.action]
            body = orjson.dumps(ex.request)
            if ex.stream:
                stream = await self.upstream.stream(ex.entry.settings, path, body)
                return
            doc = loads_object(await self.upstream.post(ex.entry.settings, path, body))
            assert ex.tally is not None
            ex.tally.see(doc)
            ex.usage = ex.tally.result()
            call.tokens_used = ex.usage.total
            call.note("llm", "note", ex.usage.describe())
            ex.answer = doc  # filtered by the output guards' response phases

        try:
            await self._chain.run(call, terminal)
            if stream is None:
                ex = exchange_of(call)
                assert ex.answer is not None
                if "model" in ex.answer:
                    ex.answer["model"] = ex.entry.name
                call.response_body = orjson.dumps(ex.answer)
        except Exception as exc:
            return await self._finish(call, self._chain, _announce(call, self._error(call, exc)))
        if stream is None:
            response = Response(call.response_body, 200, media_type="application/json")
            return await self._finish(call, self._chain, _announce(call, response))
        call.status = 200
        upstream = stream
        return _announce(call, SseResponse(
            self._relay(call, upstream),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            on_close=lambda: self._end_stream(call, upstream, b"", False)))

    async def _relay(self, call: LlmCall, upstream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass upstream events through as they arrive, each one filtered (`_event`); finish
        the call however it ends."""
        ex = exchange_of(call)
        sent = bytearray()
        parser = SseParser()
        finished = False
        try:
            async for chunk in upstream:
                for event in parser.feed(chunk):
                    out = self._event(call, ex, event)
                    if out:
                        sent += out
                        yield out
            for event in parser.finish():
                out = self._event(call, ex, event)
                if out:
                    sent += out
                    yield out
            finished = True
        except Exception as exc:  # after the headers: the error travels as a last event
            status, message, reason, _ = http_status_and_message(exc)
            log.warning("LLM stream for %s broke off: %s", call.model_name, message)
            call.status = status
            call.error = error_response(exc)[1]
            out = _sse({"error": {"message": message, "type": "api_error", "code": reason}})
            sent += out
            yield out
            finished = True
        finally:
            self._end_stream(call, upstream, bytes(sent), finished)

    def _end_stream(self, call: LlmCall, upstream: AsyncIterator[bytes], sent: bytes,
                    finished: bool) -> None:
        """Close the upstream and finish the call, once, however the stream ended — also
        when the client left before the first event (the relay never started)."""
        ex = exchange_of(call)
        if ex.ended:
            return
        ex.ended = True
        if not finished:
            ex.cancelled = True
            call.note("llm", "note", "client disconnected; upstream request closed")
        aclose = getattr(upstream, "aclose", None)
        if aclose is not None:
            self._spawn(aclose())
        call.response_body = sent
        assert ex.tally is not None
        ex.usage = ex.tally.result()
        call.note("llm", "note", ex.usage.describe())
        if finished or ex.tally.reported is not None:
            call.tokens_used = ex.usage.total
        else:  # an estimate of a cut-off stream could be far too low: keep the reservation
            call.note("llm", "note", "usage unknown: the client left before the upstream "
                      "reported it; the token reservation is kept")
        self._spawn(self._chain.complete(call))

    def _event(self, call: LlmCall, ex: LlmExchange, event: SseEvent) -> bytes:
        """One upstream event as the client gets it: the upstream model name replaced, added
        usage hidden, the output guards' filters applied (logprob noise, leak filter), and
        always re-encoded as one line.
        What cannot be read as a chunk object ends the stream (`UpstreamError`)."""
        data = event.data.strip()
        if data == "[DONE]":
            return b"data: [DONE]\n\n"
        if not data:
            return b""  # an empty event carries nothing to filter or to pass on
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            raise UpstreamError("the upstream model server sent an unreadable stream event")
        if event.event == "error" or (doc.get("error") is not None and not doc.get("choices")):
            # the upstream's own words can name its hidden model: they stay in the log
            log.warning("LLM upstream for %s sent an error event: %.300r", call.model_name,
                        data)
            raise UpstreamError("the upstream model server failed during the stream")
        assert ex.tally is not None
        ex.tally.see(doc)
        if not ex.client_wants_usage and doc.get("usage") is not None:
            if not doc.get("choices"):
                return b""  # the usage-only chunk the gateway asked for
            doc["usage"] = None
        if "model" in doc:
            doc["model"] = ex.entry.name
        for guard in self._event_guards:
            guard.on_event(call, ex, doc)
        return _sse(doc)

    def _error(self, call: LlmCall, exc: Exception, *, count: bool = True) -> Response:
        _, call.error = error_response(exc, where=f" in {call.action}")
        if count and self._on_failure is not None:
            self._on_failure(exc)
        status, message, reason, headers = http_status_and_message(call.error)
        return openai_error(status, message, reason, headers)

    async def _finish(self, call: LlmCall, chain: GuardChain[LlmCall],
                      response: Response) -> Response:
        return await finish(call, chain, response, strict=self._audit_before_answer,
                            refuse=lambda exc: self._error(call, exc, count=False),
                            on_failure=self._on_failure)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(_forget(self._pending))


def _model_object(entry: LlmEntry) -> dict[str, Any]:
    return {"id": entry.name, "object": "model", "created": 0,
            "owned_by": entry.settings.attributes.owner or "modelfence"}


def _announce(call: LlmCall, response: Response) -> Response:
    """Name the fields the controls clamped (`n,max_tokens`) on the answer, so the caller
    knows it got less than it asked."""
    ex = call.exchange
    if ex is not None and ex.clamped:
        response.headers[CLAMPED_HEADER] = ",".join(dict.fromkeys(c.field for c in ex.clamped))
    return response


def _forget(pending: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    """Drop a finished task; read its exception so that none goes unretrieved."""
    def done(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("LLM background task failed: %r", task.exception())
    return done


def _log_alert(alert: Alert) -> None:
    log.warning("LLM %s", alert.describe())

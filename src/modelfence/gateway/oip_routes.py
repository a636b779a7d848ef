"""Open Inference Protocol v2 routes: health, model metadata, infer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..backends.base import ModelEntry
from ..errors import PolicyError, RequestError, StoreError
from .call import Call
from .chain import GuardChain, Terminal
from .metrics import GatewayMetrics
from .oip import encode_infer_response
from .responses import error_response, json_response

StoreCheck = Callable[[], Awaitable[bool]]


async def _infer_terminal(call: Call) -> None:
    assert call.model is not None and call.inputs is not None
    call.outputs = await call.model.backend.infer(call.inputs)


async def _metadata_terminal(call: Call) -> None:
    assert call.model is not None
    call.result = call.model.backend.metadata.to_json()


class OipRoutes:
    def __init__(self, *, infer_chain: GuardChain, metadata_chain: GuardChain,
                 models: dict[str, ModelEntry], stores: list[tuple[str, StoreCheck]],
                 metrics: GatewayMetrics, audit_before_answer: bool = False) -> None:
        self._infer_chain = infer_chain
        self._metadata_chain = metadata_chain
        self._models = models
        self._stores = stores
        self._metrics = metrics
        self._audit_before_answer = audit_before_answer

    def routes(self) -> list[Route]:
        return [
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2/models/{name}", self.metadata, methods=["GET"]),
            Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
        ]

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        not_ready = []
        for name, entry in self._models.items():
            ok = entry.refused is None and await entry.backend.ready()
            self._metrics.model_ready.labels(name).set(1 if ok else 0)
            if entry.refused is not None:
                not_ready.append(f"model {name} (refused: {entry.refused})")
            elif not ok:
                not_ready.append(f"model {name}")
        for name, check in self._stores:
            if not await check():
                not_ready.append(name)
        if not_ready:
            return json_response({"ready": False,
                                  "error": "not ready: " + ", ".join(not_ready)}, 503)
        return json_response({"ready": True})

    async def metadata(self, request: Request) -> Response:
        call = Call(request, "metadata", request.path_params["name"])
        return await self.answer(call, self._metadata_chain, _metadata_terminal,
                                  lambda c: json_response(c.result))

    async def infer(self, request: Request) -> Response:
        call = Call(request, "infer", request.path_params["name"])
        return await self.answer(call, self._infer_chain, _infer_terminal, _infer_body)

    async def answer(self, call: Call, chain: GuardChain, terminal: Terminal,
                     encode: Callable[[Call], Response]) -> Response:
        """Run `chain` around `terminal`, encode the answer, and complete the call: after the
        answer (batched audit) or before it leaves (strict audit). Every route shares it."""
        try:
            await chain.run(call, terminal)
            response = encode(call)
        except Exception as exc:
            response, call.error = error_response(exc, where=f" in {call.action}")
            self._count_server_failure(exc)
        call.status = response.status_code
        if not self._audit_before_answer:
            response.background = BackgroundTask(chain.complete, call)
            return response
        # strict durability: the answer leaves only once its audit record is committed
        await chain.complete(call)
        if call.audit_failed:
            self._metrics.store_errors.labels("audit").inc()
            return error_response(StoreError("audit record not committed", store="audit"),
                                  where=f" in {call.action}")[0]
        return response

    def _count_server_failure(self, exc: Exception) -> None:
        if isinstance(exc, StoreError):
            self._metrics.store_errors.labels(exc.store).inc()
        elif isinstance(exc, PolicyError):
            self._metrics.policy_errors.inc()
        elif not isinstance(exc, RequestError):
            self._metrics.internal_errors.inc()


def _infer_body(call: Call) -> Response:
    assert call.outputs is not None
    call.outputs.id = call.inputs.id if call.inputs else None
    call.response_body = encode_infer_response(call.outputs)
    return Response(call.response_body, 200, media_type="application/json")

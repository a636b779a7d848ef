"""Open Inference Protocol v2 routes: health, model metadata, infer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..backends.base import ModelEntry
from ..backends.call import OipCall
from ..kernel.chain import C, GuardChain, Terminal
from ..kernel.finish import count_failure, finish
from ..kernel.metrics import GatewayMetrics
from ..kernel.oip import encode_infer_response
from ..kernel.responses import error_response, json_response
from ..stores.health import stores_not_ready

StoreCheck = Callable[[], Awaitable[bool]]
log = logging.getLogger("modelfence.gateway")


async def _infer_terminal(call: OipCall) -> None:
    assert call.model is not None and call.inputs is not None
    call.outputs = await call.model.backend.infer(call.inputs)


async def _metadata_terminal(call: OipCall) -> None:
    assert call.model is not None
    call.metadata = call.model.backend.metadata.to_json()


class OipRoutes:
    def __init__(self, *, infer_chain: GuardChain[OipCall],
                 metadata_chain: GuardChain[OipCall],
                 models: dict[str, ModelEntry], stores: list[tuple[str, StoreCheck]],
                 metrics: GatewayMetrics, audit_before_answer: bool = False,
                 notes: dict[str, str] | None = None) -> None:
        self._infer_chain = infer_chain
        self._metadata_chain = metadata_chain
        self._models = models
        self._stores = stores
        self._metrics = metrics
        self._audit_before_answer = audit_before_answer
        self._last_not_ready: list[str] = []
        self._notes = notes or {}  # said by the admin readiness, ready or not ("audit")

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
        """Ready or not, and nothing more: model names, paths and reasons would tell an
        anonymous caller which models exist. The details are on the admin listener's
        /admin/ready and in the log (once per change)."""
        not_ready = await self.readiness()
        if not_ready != self._last_not_ready:
            if not_ready:
                log.warning("not ready: %s", ", ".join(not_ready))
            elif self._last_not_ready:
                log.info("ready again")
            self._last_not_ready = not_ready
        if not_ready:
            return json_response({"ready": False, "error": "not ready"}, 503)
        return json_response({"ready": True})

    async def ready_details(self, request: Request) -> Response:
        """The admin listener's readiness: what is not ready, and why."""
        not_ready = await self.readiness()
        if not_ready:
            return json_response({"ready": False, "not_ready": not_ready,
                                  "error": "not ready: " + ", ".join(not_ready),
                                  **self._notes}, 503)
        return json_response({"ready": True, **self._notes})

    async def readiness(self) -> list[str]:
        not_ready = []
        for name, entry in self._models.items():
            ok = entry.refused is None and await entry.backend.ready()
            self._metrics.model_ready.labels(name).set(1 if ok else 0)
            if entry.refused is not None:
                not_ready.append(f"model {name} (refused: {entry.refused})")
            elif not ok:
                not_ready.append(f"model {name}")
        not_ready += await stores_not_ready(self._stores)  # all at once, each bounded
        return not_ready

    async def metadata(self, request: Request) -> Response:
        call = OipCall(request, "metadata", request.path_params["name"])
        return await self.answer(call, self._metadata_chain, _metadata_terminal,
                                  lambda c: json_response(c.metadata))

    async def infer(self, request: Request) -> Response:
        call = OipCall(request, "infer", request.path_params["name"])
        return await self.answer(call, self._infer_chain, _infer_terminal, _infer_body)

    async def answer(self, call: C, chain: GuardChain[C], terminal: Terminal[C],
                     encode: Callable[[C], Response]) -> Response:
        """Run `chain` around `terminal`, encode the answer, and complete the call: after the
        answer (batched audit) or before it leaves (strict audit). Every route shares it."""
        try:
            await chain.run(call, terminal)
            response = encode(call)
        except Exception as exc:
            response, call.error = error_response(exc, where=f" in {call.action}")
            count_failure(self._metrics, exc)
        return await finish(
            call, chain, response, strict=self._audit_before_answer,
            refuse=lambda exc: error_response(exc, where=f" in {call.action}")[0],
            on_failure=lambda exc: count_failure(self._metrics, exc))


def _infer_body(call: OipCall) -> Response:
    assert call.outputs is not None
    call.outputs.id = call.inputs.id if call.inputs else None
    call.response_body = encode_infer_response(call.outputs)
    return Response(call.response_body, 200, media_type="application/json")

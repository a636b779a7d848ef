"""Open Inference Protocol v2 over REST, as the KServe v2 specification lists it: server
metadata, server liveness and readiness, and per model its metadata, readiness and infer,
each model route also under `/versions/{version}`.

What a version means here: the gateway serves one version of each model name (the model's
`version` setting, "1" unless configured). The routes without `/versions/` answer for it,
and so do those that name it; one naming another version is a 404 that says which version
is served. The upstream of a model is always asked for its own default version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..backends.base import ModelEntry, requested_names, requested_outputs
from ..backends.call import OipCall
from ..config import ReadinessSettings
from ..errors import NotFound, NotReady
from ..kernel.chain import C, Guard, GuardChain, Terminal
from ..kernel.finish import count_failure, finish
from ..kernel.metrics import GatewayMetrics
from ..kernel.oip_binary import infer_answer
from ..kernel.responses import error_response, json_response
from ..stores.health import StoreCheck
from .readiness import Readiness

#: The protocol extensions the gateway serves, told by server metadata (REST and gRPC): the
#: one list to update when one is added.
OIP_EXTENSIONS: tuple[str, ...] = ("binary_tensor_data",)
SERVER_NAME = "modelfence"

_MODEL = "/v2/models/{name}"
_VERSION = "/v2/models/{name}/versions/{version}"


class ModelVersionGuard(Guard[OipCall]):
    """A route naming a version answers only for the version the model serves (404 else).

    In the model stage, after the lookup: like an unknown model, an unknown version is told
    only to a caller who proved who they are."""

    name: ClassVar[str] = "model_version"
    requires: ClassVar[frozenset[str]] = frozenset({"model"})

    async def on_request(self, call: OipCall) -> None:
        assert call.model is not None
        asked = call.version
        if asked is not None and asked != call.model.version:
            raise NotFound(f"model {call.model.name!r} has no version {asked[:64]!r}; the "
                           f"gateway serves its version {call.model.version!r}",
                           reason="unknown_version")


async def infer_terminal(call: OipCall) -> None:
    assert call.model is not None and call.inputs is not None
    backend = call.model.backend
    asked = requested_names(call.inputs.outputs)
    backend.metadata.refuse_unknown_outputs(asked)  # before the model spends any time
    call.outputs = await backend.infer(call.inputs)
    requested_outputs(call.outputs, asked)  # an undeclared upstream's outputs: its answer's


async def metadata_terminal(call: OipCall) -> None:
    assert call.model is not None
    call.metadata = call.model.metadata_json()


class OipRoutes:
    def __init__(self, *, infer_chain: GuardChain[OipCall],
                 metadata_chain: GuardChain[OipCall],
                 models: dict[str, ModelEntry], stores: Sequence[tuple[str, StoreCheck]],
                 metrics: GatewayMetrics, readiness: ReadinessSettings | None = None,
                 audit_before_answer: bool = False,
                 notes: dict[str, str] | None = None) -> None:
        self._infer_chain = infer_chain
        self._metadata_chain = metadata_chain
        self._metrics = metrics
        self._audit_before_answer = audit_before_answer
        settings = readiness or ReadinessSettings()
        self.readiness = Readiness(
            models, stores, models_needed=settings.models,
            probe_timeout_s=settings.probe_timeout_s,
            on_model=lambda name, ok: metrics.model_ready.labels(name).set(1 if ok else 0),
            on_store=lambda name, ok: metrics.store_ready.labels(name).set(1 if ok else 0))
        self._notes = notes or {}  # said by the admin readiness, ready or not ("audit")

    def routes(self) -> list[Route]:
        model_routes = [route for base in (_MODEL, _VERSION) for route in (
            Route(base, self.metadata, methods=["GET"]),
            Route(f"{base}/ready", self.model_ready, methods=["GET"]),
            Route(f"{base}/infer", self.infer, methods=["POST"]))]
        return [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            *model_routes,
        ]

    async def close(self) -> None:
        await self.readiness.close()

    async def server_metadata(self, request: Request) -> Response:
        """Names no model: anyone may ask, as they may ask whether the server is live."""
        return json_response({"name": SERVER_NAME, "version": __version__,
                              "extensions": list(OIP_EXTENSIONS)})

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        """Ready or not, and nothing more: model names, paths and reasons would tell an
        anonymous caller which models exist. The details are on the admin listener's
        /admin/ready and in the log (once per change)."""
        if not (await self.readiness.verdict()).ready:
            return json_response({"ready": False, "error": "not ready"}, 503)
        return json_response({"ready": True})

    async def ready_details(self, request: Request) -> Response:
        """The admin listener's readiness: what is not ready, and why, even while the
        gateway as a whole is ready (readiness.models: any)."""
        verdict = await self.readiness.verdict()
        doc: dict[str, object] = {"ready": verdict.ready}
        if verdict.not_ready:
            doc["not_ready"] = list(verdict.not_ready)
        if not verdict.ready:
            doc["error"] = "not ready: " + ", ".join(verdict.not_ready)
        return json_response({**doc, **self._notes}, 200 if verdict.ready else 503)

    async def metadata(self, request: Request) -> Response:
        call = _call(request, "metadata")
        return await self.answer(call, self._metadata_chain, metadata_terminal,
                                  lambda c: json_response(c.metadata))

    async def model_ready(self, request: Request) -> Response:
        """200 while the model can answer, 503 while it cannot (as KServe's server does);
        behind identity and policy like its metadata (action `metadata`)."""
        async def ready_terminal(call: OipCall) -> None:
            assert call.model is not None
            if not await self.readiness.model_ready(call.model.name):
                raise NotReady(f"model {call.model.name!r} is not ready",
                               reason="model_not_ready")
            call.metadata = {"name": call.model.name, "ready": True}

        call = _call(request, "metadata")
        return await self.answer(call, self._metadata_chain, ready_terminal,
                                  lambda c: json_response(c.metadata))

    async def infer(self, request: Request) -> Response:
        call = _call(request, "infer")
        return await self.answer(call, self._infer_chain, infer_terminal, _infer_body)

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


def _call(request: Request, action: str) -> OipCall:
    """The call a model route makes: the model it names, and the version where it names one."""
    return OipCall(request, action, request.path_params["name"],
                   version=request.path_params.get("version"))


def _infer_body(call: OipCall) -> Response:
    """The answer as sent: only the requested outputs (the guards saw them all)."""
    assert call.outputs is not None
    call.outputs.id = call.inputs.id if call.inputs else None
    shown = requested_outputs(call.outputs,
                              requested_names(call.inputs.outputs if call.inputs else None))
    answer = infer_answer(shown, call.inputs.binary_outputs if call.inputs else None)
    call.response_body = bytes(answer.body)
    return answer

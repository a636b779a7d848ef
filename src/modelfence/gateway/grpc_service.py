"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`).

ModelInfer and ModelMetadata run the very guard chains the REST routes run (built once in
gateway/app.py): the caller's key comes as `authorization: Bearer <key>` metadata and the
message is decoded by the body guard, after identity and policy, so a gRPC caller meets
the same identity, policy, quotas, monitor, shaping, watermark and audit, and a refusal
carries the REST message with the matching gRPC status (grpc/status.py). The health and
server metadata calls answer as their REST routes do, without a key.

The method paths are named here, not taken from generated service code: the messages'
descriptors live in a pool of their own (proto/generate.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from ..backends.base import requested_names, requested_outputs
from ..backends.call import OipCall
from ..errors import ClientDisconnected, StoreError, http_status_and_message
from ..grpc import inference_pb2 as pb
from ..grpc.status import grpc_code, trailing_metadata
from ..grpc.tensors import decode_infer_request, encode_infer_response
from ..kernel.chain import C, GuardChain, Terminal
from ..kernel.finish import OnFailure
from ..kernel.responses import error_response
from .grpc_request import GrpcRequest
from .readiness import Readiness

SERVICE = "inference.GRPCInferenceService"
log = logging.getLogger("modelfence.grpc")
R = TypeVar("R")
Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(kw_only=True)
class GrpcInference:
    """The six calls of the service, on the REST path's chains, terminals and checks."""

    infer_chain: GuardChain[OipCall]
    metadata_chain: GuardChain[OipCall]
    infer: Terminal[OipCall]
    metadata: Terminal[OipCall]
    readiness: Readiness
    server: tuple[str, str, Sequence[str]]
    on_failure: OnFailure
    audit_before_answer: bool
    _completing: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable[[Any, Context], Awaitable[Any]], request: Any
                  ) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request.FromString,
                response_serializer=lambda m: m.SerializeToString())

        return grpc.method_handlers_generic_handler(SERVICE, {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
            # bytes in and out: the body guard decodes the message after identity and policy
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),
        })

    async def server_live(self, request: pb.ServerLiveRequest, context: Context
                          ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context
                           ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=(await self.readiness.verdict()).ready)

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context
                          ) -> pb.ModelReadyResponse:
        """Behind identity and policy like its metadata, as on REST; a model that cannot
        answer now is `ready: false`, not an error."""
        async def ready_terminal(call: OipCall) -> None:
            assert call.model is not None
            call.metadata = {"ready": await self.readiness.model_ready(call.model.name)}

        call = OipCall(GrpcRequest(context.invocation_metadata(), context.peer(), b""),
                       "metadata", request.name, version=request.version or None)
        return await self._answer(call, self.metadata_chain, ready_terminal, lambda c: (
            pb.ModelReadyResponse(ready=bool((c.metadata or {}).get("ready")))), context)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context
                              ) -> pb.ServerMetadataResponse:
        name, version, extensions = self.server
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context
                             ) -> pb.ModelMetadataResponse:
        call = OipCall(GrpcRequest(context.invocation_metadata(), context.peer(), b""),
                       "metadata", request.name, version=request.version or None)
        return await self._answer(call, self.metadata_chain, self.metadata,
                                  _metadata_message, context)

    async def model_infer(self, body: bytes, context: Context) -> bytes:
        try:
            msg = pb.ModelInferRequest.FromString(body)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the request is not a ModelInferRequest message")
        call = OipCall(GrpcRequest(context.invocation_metadata(), context.peer(), body),
                       "infer", msg.model_name, version=msg.model_version or None,
                       decode_body=lambda _, nonfinite: decode_infer_request(
                           msg, allow_nonfinite=nonfinite))
        raw = bool(msg.raw_input_contents)

        def encode(done: OipCall) -> bytes:
            assert done.outputs is not None and done.inputs is not None and done.model
            done.outputs.id = done.inputs.id
            answer = requested_outputs(done.outputs, requested_names(done.inputs.outputs))
            done.response_body = encode_infer_response(
                answer, raw=raw, model_version=done.model.version).SerializeToString()
            return done.response_body

        return await self._answer(call, self.infer_chain, self.infer, encode, context)

    async def _answer(self, call: C, chain: GuardChain[C], terminal: Terminal[C],
                      encode: Callable[[C], R], context: Context) -> R:
        """Run `chain` around `terminal` and complete the call as the REST routes do (after
        the answer, or before it with strict audit); a refusal aborts with its status."""
        reply: R | None = None
        try:
            await chain.run(call, terminal)
            reply = encode(call)
            call.status = 200
        except asyncio.CancelledError:  # the client cancelled or its deadline passed
            call.error = ClientDisconnected("the client cancelled the call")
            call.status = call.error.status
            self._complete_later(chain, call)
            raise
        except Exception as exc:
            _, call.error = error_response(exc, where=f" in grpc {call.action}")
            self.on_failure(exc)
            call.status = call.error.status
        failure = await self._complete(chain, call)
        if failure is not None or reply is None:
            status, message, _, headers = http_status_and_message(failure or call.error
                                                                  or RuntimeError())
            await context.abort(grpc_code(status), message, trailing_metadata(headers))
        return reply

    async def _complete(self, chain: GuardChain[C], call: C) -> StoreError | None:
        if not self.audit_before_answer:
            self._complete_later(chain, call)
            return None
        await chain.complete(call)
        if not call.audit_failed:
            return None
        refused = StoreError("audit record not committed", store="audit")
        self.on_failure(refused)
        return refused

    def _complete_later(self, chain: GuardChain[C], call: C) -> None:
        task = asyncio.get_running_loop().create_task(chain.complete(call))
        self._completing.add(task)
        task.add_done_callback(self._completing.discard)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for the calls still completing (their audit records) as the server stops."""
        if self._completing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._completing), timeout_s)


def _metadata_message(call: OipCall) -> pb.ModelMetadataResponse:
    doc = call.metadata or {}

    def tensors(key: str) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [pb.ModelMetadataResponse.TensorMetadata(
            name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in doc.get(key, ())]

    return pb.ModelMetadataResponse(name=doc.get("name", ""), versions=doc.get("versions", ()),
                                    platform=doc.get("platform", ""), inputs=tensors("inputs"),
                                    outputs=tensors("outputs"))

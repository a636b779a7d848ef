"""A model on an upstream Open Inference Protocol server reached over gRPC (`grpc://host:port`).

Everything an HTTP upstream gets applies (oip_upstream.py): only validated tensors leave, in
the gateway's canonical form (`_forwarded`: a safe id, allow-listed parameters), and the
upstream's refusals are told to the client through the same mapping (upstream_status.py),
its gRPC status read as the HTTP status it stands for. Inputs go as raw contents.

`GrpcTransport` answers the HTTP-shaped `Transport` questions the upstream backend asks of
any server (its model metadata, its readiness) over gRPC, so that those stay in one place;
inference has its own call, without a JSON detour.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import grpc
import orjson
from google.protobuf.message import DecodeError, Message

from ..config import ModelSettings, OipUpstreamBackend
from ..errors import BadRequest, UpstreamError
from ..grpc import inference_pb2 as pb
from ..grpc.status import http_status
from ..grpc.tensors import decode_infer_response, encode_infer_request
from ..kernel.oip import InferRequest, InferResponse
from .oip_upstream import OipUpstream
from .transport import Answer, Transport, answer_timed_out, unreachable
from .upstream_status import upstream_failure

SERVICE = "/inference.GRPCInferenceService/"
log = logging.getLogger("modelfence.backends.oip")


class GrpcTransport(Transport):
    """One gRPC channel to `target` (host:port), made in the running loop on first use."""

    def __init__(self, target: str, *, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self._target = target
        self._options = [("grpc.max_receive_message_length", max_message_bytes)]
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: dict[str, Any] = {}  # the channel's callable per method

    def _call(self, method: str, response: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:
            self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
            self._loop = loop
            self._calls = {}
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = self._channel.unary_unary(
                SERVICE + method, request_serializer=_serialize,
                response_deserializer=response.FromString)
        return call

    async def request(self, method: str, url: str, body: bytes | None, timeout_s: float
                      ) -> Answer:
        """GET …/v2/models/{m}: its metadata as JSON; GET …/ready: 200 or 503."""
        path = urlsplit(url).path.removeprefix("/v2/models/")
        if method != "GET" or not path:
            raise UpstreamError(f"a gRPC upstream is not asked {method} {path}")
        name, _, ready = path.partition("/")
        if ready:
            got = await self._send("ModelReady", pb.ModelReadyResponse,
                                   pb.ModelReadyRequest(name=name), timeout_s)
            return got if isinstance(got, Answer) else Answer(200 if got.ready else 503, b"")
        got = await self._send("ModelMetadata", pb.ModelMetadataResponse,
                               pb.ModelMetadataRequest(name=name), timeout_s)
        if isinstance(got, Answer):
            return got
        inputs = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                  for t in got.inputs]
        return Answer(200, orjson.dumps({"name": got.name, "inputs": inputs}))

    async def infer(self, msg: pb.ModelInferRequest, timeout_s: float
                    ) -> pb.ModelInferResponse | Answer:
        """The upstream's answer, or its refusal as the HTTP answer it stands for."""
        got: pb.ModelInferResponse | Answer = await self._send(
            "ModelInfer", pb.ModelInferResponse, msg, timeout_s)
        return got

    async def _send(self, method: str, response: Any, msg: Any, timeout_s: float) -> Any:
        try:
            return await self._call(method, response)(msg, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise answer_timed_out(timeout_s) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise unreachable() from None
            if code == grpc.StatusCode.INTERNAL and "deserializ" in (exc.details() or ""):
                raise UpstreamError("the upstream model server sent an invalid answer") from None
            return Answer(http_status(code), orjson.dumps({"error": exc.details() or ""}))
        except DecodeError:
            raise UpstreamError("the upstream model server sent an invalid answer") from None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._calls = {}


def _serialize(msg: Message) -> bytes:
    return msg.SerializeToString()


class GrpcUpstream(OipUpstream):
    """An OIP upstream whose URL is grpc://host:port (MLServer's grpc_port, Triton's 8001)."""

    def __init__(self, settings: ModelSettings) -> None:
        assert isinstance(settings.backend, OipUpstreamBackend)
        self._grpc = GrpcTransport(urlsplit(settings.backend.url).netloc)
        super().__init__(settings, self._grpc)

    async def infer(self, request: InferRequest) -> InferResponse:
        forwarded = self._forwarded(request)
        got = await self._grpc.infer(encode_infer_request(forwarded, self._upstream_name),
                                     self._cfg.timeout_s)
        if isinstance(got, Answer):
            raise upstream_failure(got.status, got.body, model=self.name,
                                   upstream_model=self._upstream_name, where=self._where,
                                   request_id=forwarded.id)
        try:
            response = decode_infer_response(got)
        except BadRequest:
            log.warning("upstream %s sent an answer that is not OIP", self._where)
            raise UpstreamError("the upstream model server sent an invalid answer") from None
        response.model_name = self.name
        return self._as_classifier(response, request.id)

"""A model on an upstream Open Inference Protocol v2 server (KServe, Triton, MLServer).

Only validated inputs are re-encoded and sent upstream, in the gateway's own canonical form
(`_forwarded`). An upstream's error status is answered as on the LLM path
(upstream_status.py): a 4xx passes through with its reason made public, a 429 is a 503 with
the upstream's Retry-After; its 5xx, garbage or silence becomes 502/504 without its body,
because servers such as MLServer answer 500 with a raw Python traceback.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from typing import Any, ClassVar

import numpy as np
import orjson

from ..config import ModelSettings, OipUpstreamBackend, TensorSpec
from ..errors import BadRequest, ConfigurationError, RequestError, UpstreamError
from ..kernel.oip import (
    InferRequest,
    InferResponse,
    Tensor,
    decode_infer_response,
    encode_infer_request,
)
from ..redaction import redact_url
from .base import Backend, ModelMetadata, classifier_response
from .transport import Transport
from .upstream_status import upstream_failure

_READY_CACHE_S = 1.0
_MAX_FORWARDED_CHARS = 256
#: A request id an upstream can take as is: visible ASCII, inner spaces, bounded. MLServer 1.7
#: copies the id into response headers and dropped the connection, or crashed, on CR/LF, NUL,
#: a leading or trailing space and non-Latin-1 text.
MAX_FORWARDED_ID_CHARS = 128
_SAFE_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
log = logging.getLogger("modelfence.backends.oip")


class OipUpstream(Backend):
    platform: ClassVar[str] = "oip-upstream"

    def __init__(self, settings: ModelSettings, transport: Transport) -> None:
        super().__init__(settings)
        assert isinstance(settings.backend, OipUpstreamBackend)
        self._cfg: OipUpstreamBackend = settings.backend
        self._transport = transport
        upstream = self._cfg.upstream_model or settings.name
        self._upstream_name = upstream
        base = self._cfg.url.rstrip("/")
        self._model_url = f"{base}/v2/models/{upstream}"
        self._infer_url = f"{self._model_url}/infer"
        self._where = redact_url(self._model_url)  # for logs and errors: no credentials
        self._ready_at = 0.0
        self._ready = False
        self._classes: np.ndarray[Any, Any] | None = (
            np.asarray(settings.labels, dtype=object) if settings.labels else None)

    async def _start(self) -> ModelMetadata:
        spec = self.settings.input or await self._upstream_input_spec()
        outputs: tuple[TensorSpec, ...] = ()
        if self._cfg.probabilities_output:
            outputs = (TensorSpec(name="probabilities", datatype="FP32", shape=[-1, -1]),
                       TensorSpec(name="label", datatype="INT64" if self._classes is None
                                  else "BYTES", shape=[-1]))
        return ModelMetadata(self.name, self.platform, (spec,), outputs)

    async def _upstream_input_spec(self) -> TensorSpec:
        where = f"model {self.name}: upstream {self._where}"
        try:
            answer = await self._transport.request("GET", self._model_url, None,
                                                   self._cfg.timeout_s)
            doc = orjson.loads(answer.body) if answer.status == 200 else {}
            first = (doc.get("inputs") or [None])[0] if isinstance(doc, dict) else None
            if first:
                return TensorSpec(name=first["name"], datatype=first["datatype"],
                                  shape=[d if d > 0 else -1 for d in first["shape"]])
        except (RequestError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            reason = exc.message if isinstance(exc, RequestError) else "unreadable metadata"
            raise ConfigurationError(f"{where}: {reason}; declare `input:` for this model in "
                                     "the config or start the upstream first") from None
        raise ConfigurationError(f"{where} publishes no input metadata; declare `input:` "
                                 "(name, datatype, shape) for this model in the config")

    async def infer(self, request: InferRequest) -> InferResponse:
        forwarded = self._forwarded(request)
        answer = await self._transport.request(
            "POST", self._infer_url, encode_infer_request(forwarded), self._cfg.timeout_s)
        if answer.status != 200:
            raise upstream_failure(answer.status, answer.body, model=self.name,
                                   upstream_model=self._upstream_name,
                                   where=self._where, retry_after=answer.retry_after,
                                   request_id=forwarded.id)
        try:
            response = decode_infer_response(answer.body)
        except BadRequest:
            log.warning("upstream %s sent an answer that is not OIP", self._where)
            raise UpstreamError("the upstream model server sent an invalid answer") from None
        response.model_name = self.name
        return self._as_classifier(response, request.id)

    def _forwarded(self, request: InferRequest) -> InferRequest:
        """What the upstream is sent: validated tensors, a safe request id (`_upstream_id`),
        and only the allow-listed parameters (forward_parameters) with plain values.

        MLServer 1.7 copies the request id into response headers and decodes a tensor by its
        `content_type` parameter: an id holding CRLF or non-Latin-1 text, or a `content_type`
        that does not fit the tensor, crashed it and closed the connection under the next
        caller. With adaptive batching it also merges the request parameters of the callers
        it batches together, so a forwarded parameter reaches other callers' requests: only
        those the operator allow-lists are sent. The client's answer carries the client's id,
        set by the gateway, never the upstream's.
        """
        allowed = self._cfg.forward_parameters
        tensors = [Tensor(t.name, t.datatype, t.shape, t.data, _scalars(t.parameters, allowed))
                   for t in request.inputs]
        if self._cfg.probabilities_output:
            outputs: list[dict[str, Any]] | None = [{"name": self._cfg.probabilities_output}]
        elif request.outputs:
            outputs = [_output(o, allowed) for o in request.outputs]
        else:
            outputs = None
        return InferRequest(tensors, self._upstream_id(request.id),
                            _scalars(request.parameters, allowed), outputs)

    def _upstream_id(self, client_id: str | None) -> str:
        """The client's id where it is safe for any upstream (`_SAFE_ID`, at most
        MAX_FORWARDED_ID_CHARS) and forward_request_id allows it; else one of the gateway's
        own, so that the upstream's logs and the gateway's warnings name the same request."""
        if (self._cfg.forward_request_id and client_id is not None
                and len(client_id) <= MAX_FORWARDED_ID_CHARS and _SAFE_ID.fullmatch(client_id)):
            return client_id
        return f"modelfence-{uuid.uuid4().hex}"

    def _as_classifier(self, response: InferResponse, request_id: str | None) -> InferResponse:
        name = self._cfg.probabilities_output
        if not name:
            return response
        tensor = response.output(name)
        if tensor is None or tensor.data.ndim != 2:
            raise UpstreamError(f"the upstream model server sent no [n, classes] output {name!r}")
        classes = self._classes if self._classes is not None else np.arange(tensor.data.shape[1])
        if len(classes) != tensor.data.shape[1]:
            raise UpstreamError("the upstream answer's class count does not match labels")
        return classifier_response(self.name, tensor.data, classes, request_id or response.id)

    async def ready(self) -> bool:
        now = time.monotonic()
        if now - self._ready_at < _READY_CACHE_S:
            return self._ready
        try:
            answer = await self._transport.request("GET", f"{self._model_url}/ready", None,
                                                   min(self._cfg.timeout_s, 2.0))
            self._ready = answer.status == 200
        except RequestError:
            self._ready = False
        self._ready_at = now
        return self._ready

    async def close(self) -> None:
        await self._transport.close()


def _scalars(params: dict[str, Any] | None, allowed: list[str]) -> dict[str, Any] | None:
    """The allow-listed parameters whose values are plain: a short printable string, a finite
    number or a boolean, the values the OIP specification gives a parameter (`$parameter`),
    so that the depth of what is forwarded is one level. Anything else is dropped, not
    refused, as other OIP servers do."""
    kept = {k: v for k, v in (params or {}).items() if k in allowed and _plain(v)}
    return kept or None


def _plain(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= _MAX_FORWARDED_CHARS and value.isprintable()
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int)  # bool is an int


def _output(requested: dict[str, Any], allowed: list[str]) -> dict[str, Any]:
    """A requested output as forwarded: its name (the decoder checked it is a string) and
    its allow-listed parameters."""
    out: dict[str, Any] = {"name": requested["name"]}
    params = requested.get("parameters")
    params = _scalars(params if isinstance(params, dict) else None, allowed)
    if params:
        out["parameters"] = params
    return out


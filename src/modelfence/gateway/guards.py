"""Guards of the gateway core: model access, bounded body, input validation, metrics."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ..backends.base import ModelEntry
from ..backends.call import OipCall
from ..errors import (
    BadRequest,
    ClientDisconnected,
    NotFound,
    NotReady,
    RequestTimeout,
    Unavailable,
    UpstreamError,
    UpstreamRejected,
)
from ..kernel.body import read_bounded, read_decoded
from ..kernel.call import Call
from ..kernel.chain import Guard
from ..kernel.metrics import GatewayMetrics
from ..kernel.oip_binary import HEADER_LENGTH, decode_infer_body


class ModelLookupGuard(Guard[OipCall]):
    """Resolve the model or answer 404.

    Runs after identity so that an anonymous caller cannot learn which models exist;
    whether this principal may use the model is the policy guard's decision.
    """

    name: ClassVar[str] = "model_lookup"
    requires: ClassVar[frozenset[str]] = frozenset({"principal"})
    provides: ClassVar[frozenset[str]] = frozenset({"model"})

    def __init__(self, models: dict[str, ModelEntry]) -> None:
        self._models = models

    async def on_request(self, call: OipCall) -> None:
        name = call.model_name or ""
        entry = self._models.get(name)
        if entry is None:
            raise NotFound(f"unknown model {name[:128]!r}", reason="unknown_model")
        if entry.refused is not None:
            raise NotReady(f"model {name!r} is not served: its artifact failed the checks",
                           reason="artifact_refused")
        call.model = entry


class BodyGuard(Guard[OipCall]):
    """Read the body up to the limit and decode it; never buffers more than the limit."""

    name: ClassVar[str] = "body"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "decision"})
    provides: ClassVar[frozenset[str]] = frozenset({"body", "inputs", "rows"})

    def __init__(self, max_body_bytes: int) -> None:
        self._max = max_body_bytes

    async def on_request(self, call: OipCall) -> None:
        assert call.model is not None
        limits = call.model.settings.limits
        limit = min(self._max, limits.max_body_bytes or self._max)
        if call.decode_body is not None:  # a gRPC message (grpc undid its own compression)
            call.body = await read_bounded(call.request, limit)
            call.inputs = call.decode_body(call.body, limits.allow_nonfinite)
        else:
            call.body = await read_decoded(call.request, limit)
            call.inputs = decode_infer_body(call.body, call.request.headers.get(HEADER_LENGTH),
                                            allow_nonfinite=limits.allow_nonfinite)
        call.rows = call.inputs.rows


class InputValidationGuard(Guard[OipCall]):
    """Check inputs against the model's metadata and configured limits; 400 names the field."""

    name: ClassVar[str] = "input_validation"
    requires: ClassVar[frozenset[str]] = frozenset({"inputs", "model"})

    async def on_request(self, call: OipCall) -> None:
        assert call.model is not None and call.inputs is not None
        specs = call.model.backend.metadata.inputs
        limits = call.model.settings.limits
        inputs = call.inputs.inputs
        if len(inputs) != len(specs):
            raise BadRequest(f"body.inputs: model expects {len(specs)} input(s), got {len(inputs)}")
        for i, (tensor, spec) in enumerate(zip(inputs, specs, strict=True)):
            where = f"inputs[{i}]"
            if tensor.name != spec.name:
                raise BadRequest(f"{where}.name: model expects input {spec.name!r}")
            if tensor.datatype != spec.datatype:
                raise BadRequest(f"{where}.datatype: model expects {spec.datatype}, "
                                 f"got {tensor.datatype}")
            if len(tensor.shape) != len(spec.shape) or any(
                    want not in (-1, got) for want, got in zip(spec.shape, tensor.shape,
                                                               strict=True)):
                raise BadRequest(f"{where}.shape: model expects {spec.shape} (-1 = any), "
                                 f"got {tensor.shape}")
            if tensor.shape[0] == 0:
                raise BadRequest(f"{where}.shape: batch must hold at least one row")
            if tensor.shape[0] > limits.max_batch:
                raise BadRequest(f"{where}.shape: batch of {tensor.shape[0]} rows is over the "
                                 f"limit of {limits.max_batch}")
            if math.prod(tensor.shape) > limits.max_elements:
                raise BadRequest(f"{where}: {math.prod(tensor.shape)} elements is over the "
                                 f"limit of {limits.max_elements}")
            if limits.max_abs_value is not None:
                _check_magnitude(tensor.data, limits.max_abs_value, where)


def _check_magnitude(data: np.ndarray[Any, Any], limit: float, where: str) -> None:
    """Refuse finite values no model can compute with: 3e38 fits FP32, yet a float32 sum or
    a scaler overflows on it, and local and upstream models would fail in different ways."""
    if data.dtype.kind not in "iuf" or data.size == 0:
        return
    values = data if data.dtype.kind == "f" else data.astype(np.float64)
    if np.abs(values).max() <= limit:  # the common case in two numpy calls (NaN: not <=)
        return
    with np.errstate(invalid="ignore"):  # NaN and infinity: limits.allow_nonfinite decides
        over = (np.abs(values) > np.float64(limit)) & np.isfinite(values)
    if not over.any():
        return
    at = tuple(int(i) for i in np.argwhere(over)[0])
    place = f"row {at[0]}" + (f", column {at[1]}" if len(at) == 2 else
                              f", index {list(at[1:])}" if len(at) > 2 else "")
    raise BadRequest(f"{where}.data: value {float(data[at]):.3g} at {place} is over the "
                     f"magnitude limit of {limit:g} (limits.max_abs_value)")


class MetricsGuard(Guard[Call]):
    """Counts every call in its complete phase, answered or denied."""

    name: ClassVar[str] = "metrics"

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._m = metrics

    async def on_complete(self, call: Call) -> None:
        m = self._m
        model = call.model.name if call.model else "-"
        m.answered.add(call.action, model, call.status, call.elapsed_s())
        err = call.error
        if err is None:
            return
        if isinstance(err, UpstreamError | UpstreamRejected):
            m.upstream_errors.labels(model, err.reason).inc()
        elif isinstance(err, ClientDisconnected | RequestTimeout):
            return  # counted where they are detected (BodyDeadline), not denials
        elif 400 <= call.status < 500 or isinstance(err, Unavailable):
            m.denials.labels(err.reason).inc()

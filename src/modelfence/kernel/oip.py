"""Open Inference Protocol v2 codec: JSON ⇄ tensors, with errors that name the field.

Used both for what clients send the gateway and for what the gateway exchanges with
upstream OIP servers, so the two directions cannot drift apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..errors import BadRequest

NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
OIP_DATATYPES = (*NUMPY_DTYPES, "BYTES")
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
_NONFINITE_LITERAL = re.compile(rb"[\[,:]\s*-?(NaN|Infinity)\s*[\],}]")
#: Bounds checked at decode time, so that whatever decodes can be re-encoded for an upstream
#: (orjson refuses to write more than 254 levels) and no client sends a megabyte of metadata.
MAX_PARAMETER_DEPTH = 8
MAX_PARAMETER_BYTES = 16 * 1024
MAX_ID_CHARS = 256
MAX_DIMS = 32  # numpy's own limit is 64; no OIP model takes more than a handful
MAX_OUTPUTS = 64


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray[Any, Any]
    parameters: dict[str, Any] | None = None

    def to_json(self, raw_size: int | None = None) -> dict[str, Any]:
        """The tensor's JSON object; with `raw_size`, one whose data travels as that many raw
        bytes after the JSON (the binary tensor data extension)."""
        out: dict[str, Any] = {"name": self.name, "shape": self.shape, "datatype": self.datatype}
        if raw_size is None:
            out["data"] = _flat(self.data)
            if self.parameters:
                out["parameters"] = self.parameters
        else:
            out["parameters"] = {**(self.parameters or {}), "binary_data_size": raw_size}
        return out


@dataclass(frozen=True, slots=True)
class BinaryOutputs:
    """Which outputs the client asked back as raw bytes (the binary tensor data extension):
    an output's own `binary_data` parameter, else the request's `binary_data_output`."""

    default: bool = False
    named: dict[str, bool] = field(default_factory=dict)

    def wants(self, name: str) -> bool:
        return self.named.get(name, self.default)


@dataclass(slots=True)
class InferRequest:
    inputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] | None = None
    #: the client's answer encoding; read by the route's encoder only, never forwarded
    binary_outputs: BinaryOutputs | None = None

    @property
    def rows(self) -> int:
        return self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else 0


@dataclass(slots=True)
class InferResponse:
    model_name: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def output(self, name: str) -> Tensor | None:
        return next((t for t in self.outputs if t.name == name), None)


def _flat(a: np.ndarray[Any, Any]) -> Any:
    if a.dtype.kind in "OUS":
        return [x.decode() if isinstance(x, bytes) else str(x) for x in a.ravel().tolist()]
    return a.ravel()


def load_json(body: bytes, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        if "nfinity" in text or _NONFINITE_LITERAL.search(body):
            raise BadRequest(f"{what}: NaN and infinite numbers are not allowed") from None
        raise BadRequest(f"{what} is not valid JSON: {text.split(':')[0]}") from None


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise BadRequest(f"{where}.{key}: field required")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadRequest(f"{where}.{key}: must be {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", list: "a list", dict: "an object", int: "an integer"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def decode_tensor(obj: Any, where: str, *, allow_nonfinite: bool = False) -> Tensor:
    """One OIP tensor object → Tensor, checking shape against element count."""
    name, datatype, shape = tensor_head(obj, where)
    data = _field(obj, "data", list, where)
    array = _to_array(data, datatype, where)
    params = _parameters(obj.get("parameters"), f"{where}.parameters")
    return finish_tensor(name, datatype, shape, array, params, where,
                         allow_nonfinite=allow_nonfinite)


def tensor_head(obj: Any, where: str) -> tuple[str, str, list[int]]:
    """A tensor object's name, datatype and shape, checked; its data is the caller's (JSON
    `data` here, raw bytes in the binary extension)."""
    if not isinstance(obj, dict):
        raise BadRequest(f"{where}: must be an object")
    name = _field(obj, "name", str, where)
    datatype = _field(obj, "datatype", str, where)
    shape = _field(obj, "shape", list, where)
    if datatype not in OIP_DATATYPES:
        raise BadRequest(f"{where}.datatype: unknown datatype {datatype[:20]!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"{where}.shape: must be a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise BadRequest(f"{where}.shape: {len(shape)} dimensions is over the limit of "
                         f"{MAX_DIMS}")
    return name, datatype, shape


def finish_tensor(name: str, datatype: str, shape: list[int], array: np.ndarray[Any, Any],
                  params: dict[str, Any] | None, where: str, *,
                  allow_nonfinite: bool = False) -> Tensor:
    """The checks every decoded tensor passes whatever carried its data: the element count
    against the shape, the reshape, and NaN or infinity unless allowed."""
    expected = math.prod(shape)
    if array.size != expected:
        raise BadRequest(
            f"{where}.data: has {array.size} elements but shape {shape} needs {expected}")
    try:
        array = array.reshape(shape)
    except ValueError:  # an empty tensor whose other dimensions overflow numpy's sizes
        raise BadRequest(f"{where}.shape: dimensions too large for an array") from None
    if array.dtype.kind == "f" and not allow_nonfinite and not np.isfinite(array).all():
        raise BadRequest(f"{where}.data: NaN or infinite values (or overflow of {datatype})")
    return Tensor(name, datatype, shape, array, params)


def tensor_parameters(obj: dict[str, Any], where: str) -> dict[str, Any] | None:
    """A tensor's `parameters`, bounded in depth and size; None when absent."""
    return _parameters(obj.get("parameters"), f"{where}.parameters")


def _parameters(value: Any, where: str) -> dict[str, Any] | None:
    """An OIP `parameters` object, bounded in depth and size; None when absent."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: must be an object")
    _check_nesting(value, where)
    return value


def _check_nesting(value: Any, where: str) -> None:
    """Refuse JSON nested deeper than MAX_PARAMETER_DEPTH or larger than MAX_PARAMETER_BYTES.

    Iterative, so a hostile document cannot exhaust the stack while it is being measured.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (item.values() if isinstance(item, dict)
                    else item if isinstance(item, list) else ())
        for child in children:
            if isinstance(child, dict | list):
                if depth >= MAX_PARAMETER_DEPTH:
                    raise BadRequest(f"{where}: nested deeper than {MAX_PARAMETER_DEPTH} levels")
                stack.append((child, depth + 1))
    if len(orjson.dumps(value)) > MAX_PARAMETER_BYTES:
        raise BadRequest(f"{where}: over the limit of {MAX_PARAMETER_BYTES} bytes")


def _to_array(data: list[Any], datatype: str, where: str) -> np.ndarray[Any, Any]:
    """Convert JSON data strictly: no strings as numbers, no bools as ints, no wrap-around."""
    bad = BadRequest(f"{where}.data: values do not fit datatype {datatype}")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError):
        raise BadRequest(f"{where}.data: nested lists must be rectangular") from None
    kind = raw.dtype.kind
    if datatype == "BYTES":
        if raw.size and kind not in "U":
            raise bad
        return raw.astype(object)
    if raw.size == 0:
        return raw.astype(NUMPY_DTYPES[datatype])
    target = np.dtype(NUMPY_DTYPES[datatype])
    if target.kind == "b":
        if kind != "b":
            raise bad
        return raw
    if kind not in "iuf" or (target.kind in "iu" and kind == "f"):
        raise bad
    if target.kind in "iu":
        info = np.iinfo(target)
        if raw.min() < info.min or raw.max() > info.max:
            raise bad
    with np.errstate(over="ignore", invalid="ignore"):
        return raw.astype(target, copy=False)  # overflow → inf, caught by the finite check


def decode_infer_request(body: bytes, *, allow_nonfinite: bool = False) -> InferRequest:
    doc = load_json(body, "request body")
    return request_from_doc(
        doc, lambda obj, where: decode_tensor(obj, where, allow_nonfinite=allow_nonfinite))


def request_from_doc(doc: Any, decode_input: Callable[[Any, str], Tensor]) -> InferRequest:
    """An infer request's parsed JSON → InferRequest; `decode_input` turns each input object
    into a Tensor (from its JSON `data`, or from raw bytes in the binary extension)."""
    if not isinstance(doc, dict):
        raise BadRequest("request body: must be a JSON object with an 'inputs' list")
    inputs = _field(doc, "inputs", list, "body")
    if not inputs:
        raise BadRequest("body.inputs: must list at least one input")
    tensors = [decode_input(t, f"inputs[{i}]") for i, t in enumerate(inputs)]
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise BadRequest("body.id: must be a string")
    if req_id is not None and len(req_id) > MAX_ID_CHARS:
        raise BadRequest(f"body.id: over the limit of {MAX_ID_CHARS} characters")
    params = _parameters(doc.get("parameters"), "body.parameters")
    return InferRequest(tensors, req_id, params, _outputs(doc.get("outputs")))


def _outputs(outputs: Any) -> list[dict[str, Any]] | None:
    """The requested outputs: each an object with a string `name` and bounded parameters."""
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise BadRequest("body.outputs: must be a list of objects")
    if len(outputs) > MAX_OUTPUTS:
        raise BadRequest(f"body.outputs: {len(outputs)} outputs is over the limit of "
                         f"{MAX_OUTPUTS}")
    for i, out in enumerate(outputs):
        if not isinstance(out, dict):
            raise BadRequest("body.outputs: must be a list of objects")
        _field(out, "name", str, f"body.outputs[{i}]")
        _check_nesting(out, f"body.outputs[{i}]")
    return outputs


def _encode(doc: dict[str, Any], **optional: Any) -> bytes:
    """`doc` and each of `optional` that is set (an empty one is left out), as JSON."""
    for key, value in optional.items():
        if value:
            doc[key] = value
    return orjson.dumps(doc, option=_JSON_OPTS)


def encode_infer_request(req: InferRequest) -> bytes:
    return _encode({"inputs": [t.to_json() for t in req.inputs]}, id=req.id,
                   parameters=req.parameters, outputs=req.outputs)


def decode_infer_response(body: bytes) -> InferResponse:
    """An upstream's answer → InferResponse; raises BadRequest, which callers re-map."""
    doc = load_json(body, "response body")
    if not isinstance(doc, dict):
        raise BadRequest("response body: must be a JSON object")
    outputs = _field(doc, "outputs", list, "response")
    tensors = [decode_tensor(t, f"outputs[{i}]", allow_nonfinite=True)
               for i, t in enumerate(outputs)]
    name = doc.get("model_name")
    return InferResponse(str(name) if name is not None else "", tensors, doc.get("id"))


def encode_infer_response(resp: InferResponse,
                          raw_sizes: Sequence[int | None] | None = None) -> bytes:
    """The answer as JSON; an output with a size in `raw_sizes` (one entry per output, in
    order) is described, its data left for the raw bytes that follow (kernel/oip_binary.py)."""
    sizes = raw_sizes or [None] * len(resp.outputs)
    return _encode({"model_name": resp.model_name,
                    "outputs": [t.to_json(n) for t, n in zip(resp.outputs, sizes, strict=True)]},
                   id=resp.id, parameters=resp.parameters)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})

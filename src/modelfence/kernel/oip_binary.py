"""The binary tensor data extension of the Open Inference Protocol (KServe v2, Triton).

A request whose `Inference-Header-Content-Length: n` header is set holds its JSON header in
the body's first n bytes and, after it, the raw data of each input whose parameters say
`binary_data_size: k`, k bytes each in input order: little-endian numbers, one byte per
BOOL, and BYTES as elements each prefixed by its length (4 bytes, little-endian). An answer
returns an output the same way when the client asks for it (`binary_data: true` on the
requested output, or `binary_data_output: true` on the request).

Each input decodes through the JSON path's own checks (kernel/oip.py: datatype, shape,
element count, NaN and infinity, parameter bounds); only where the values come from
differs. The gateway's canonical form stays JSON: upstreams are sent JSON, guards work on
decoded tensors, and binary encoding happens last, in the route's answer.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any

import numpy as np
from starlette.responses import Response

from ..errors import BadRequest
from .oip import (
    NUMPY_DTYPES,
    BinaryOutputs,
    InferRequest,
    InferResponse,
    Tensor,
    decode_tensor,
    encode_infer_response,
    finish_tensor,
    load_json,
    request_from_doc,
    tensor_head,
    tensor_parameters,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"
_SIZE = "binary_data_size"
_LENGTH_PREFIX = struct.Struct("<I")
_GZIP_MAGIC = b"\x1f\x8b"
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def decode_infer_body(body: bytes, header_length: str | None, *,
                      allow_nonfinite: bool = False) -> InferRequest:
    """A client's infer body → InferRequest, JSON or with binary tensor data (when
    `header_length`, the Inference-Header-Content-Length value, is given)."""
    if header_length is None:
        doc = _load_or_explain(body)
        section = None
    else:
        n = _header_length(header_length, len(body))
        doc = load_json(body[:n], f"inference header (the body's first {n} bytes)")
        section = _Section(memoryview(body)[n:])

    def decode_input(obj: Any, where: str) -> Tensor:
        return _decode_input(obj, where, section, allow_nonfinite)

    request = request_from_doc(doc, decode_input)
    if section is not None:
        section.check_all_used()
    request.binary_outputs = _binary_outputs(request)
    return request


def _load_or_explain(body: bytes) -> Any:
    """Parse a plain JSON body; when it is not JSON, say what it looks like instead."""
    try:
        return load_json(body, "request body")
    except BadRequest as exc:
        if body.startswith(_GZIP_MAGIC):
            raise BadRequest(f"{exc.message}; the body looks gzip-compressed: send it with "
                             "the header Content-Encoding: gzip") from None
        if _looks_binary(body):
            raise BadRequest(f"{exc.message}; a body with binary tensor data needs the "
                             f"header {HEADER_LENGTH} giving the length of its JSON "
                             "part") from None
        raise


def _looks_binary(body: bytes) -> bool:
    """Whether a body that failed to parse holds bytes no JSON text has."""
    try:
        body.decode()
    except UnicodeDecodeError:
        return True
    return _CONTROL.search(body) is not None


def _header_length(value: str, body_size: int) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise BadRequest(f"{HEADER_LENGTH} must be a whole number of bytes, got "
                         f"{value[:24]!r}")
    n = int(text)
    if n == 0:
        raise BadRequest(f"{HEADER_LENGTH} is 0: the body must start with a JSON header")
    if n > body_size:
        raise BadRequest(f"{HEADER_LENGTH} is {n} but the body holds only {body_size} bytes")
    return n


class _Section:
    """The bytes after the JSON header, handed out to the inputs in order."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: int, where: str) -> memoryview:
        left = len(self._data) - self._offset
        if size > left:
            raise BadRequest(f"{where}.parameters.{_SIZE}: {size} bytes, but only {left} "
                             "bytes of binary data are left in the body")
        part = self._data[self._offset:self._offset + size]
        self._offset += size
        return part

    def check_all_used(self) -> None:
        left = len(self._data) - self._offset
        if left:
            raise BadRequest(f"request body: {left} bytes of binary data after the last "
                             f"input's {_SIZE}; the sizes must add up to the bytes after "
                             f"the {HEADER_LENGTH} header")


def _decode_input(obj: Any, where: str, section: _Section | None,
                  allow_nonfinite: bool) -> Tensor:
    size = _binary_size(obj, where)
    if size is None:
        return decode_tensor(obj, where, allow_nonfinite=allow_nonfinite)
    if section is None:
        raise BadRequest(f"{where}.parameters.{_SIZE} is set but the request has no "
                         f"{HEADER_LENGTH} header: send the header or the values in `data`")
    if "data" in obj:
        raise BadRequest(f"{where}: give either `data` or parameters.{_SIZE}, not both")
    name, datatype, shape = tensor_head(obj, where)
    raw = section.take(size, where)
    array = from_raw(raw, datatype, math.prod(shape), f"{where}.parameters.{_SIZE}")
    params = tensor_parameters(obj, where)
    if params is not None:
        params = {k: v for k, v in params.items() if k != _SIZE} or None
    return finish_tensor(name, datatype, shape, array, params, where,
                         allow_nonfinite=allow_nonfinite)


def _binary_size(obj: Any, where: str) -> int | None:
    params = obj.get("parameters") if isinstance(obj, dict) else None
    if not isinstance(params, dict) or _SIZE not in params:
        return None
    size = params[_SIZE]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"{where}.parameters.{_SIZE}: must be a non-negative integer")
    return size


def from_raw(raw: memoryview | bytes, datatype: str, count: int, what: str
             ) -> np.ndarray[Any, Any]:
    """Raw tensor bytes → a flat array of `count` elements, little-endian, BYTES as
    length-prefixed UTF-8 elements; `what` names the bytes in errors. The layout of the
    binary extension and of gRPC's raw contents; finish_tensor then makes the JSON path's
    checks (count against shape, NaN and infinity)."""
    if datatype == "BYTES":
        return _bytes_elements(memoryview(raw), count, what)
    dtype = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"{what}: {len(raw)} bytes, but {count} {datatype} elements take "
                         f"{count * dtype.itemsize}")
    if datatype == "BOOL":
        octets = np.frombuffer(raw, dtype=np.uint8)
        if octets.size and octets.max() > 1:
            raise BadRequest(f"{what}: BOOL elements must be the bytes 0 or 1")
        return octets.astype(np.bool_)
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))


def _bytes_elements(raw: memoryview, count: int, what: str) -> np.ndarray[Any, Any]:
    """BYTES: `count` length-prefixed elements filling `raw` exactly, each UTF-8 text (the
    JSON path's BYTES are strings, and upstreams are sent JSON). A plain loop with local
    names: a body of a million empty elements is this loop's worst case."""
    prefix = _LENGTH_PREFIX.size
    end = len(raw)
    if count * prefix > end:
        raise BadRequest(f"{what}: {end} bytes cannot hold {count} BYTES elements (each "
                         f"takes at least {prefix})")
    data = bytes(raw)
    unpack = _LENGTH_PREFIX.unpack_from
    elements: list[str] = []
    append = elements.append
    offset = 0
    for i in range(count):
        if end - offset < prefix:
            raise BadRequest(f"{what}: its {end} bytes hold only {i} BYTES elements but "
                             f"shape needs {count}")
        (length,) = unpack(data, offset)
        offset += prefix
        stop = offset + length
        if stop > end:
            raise BadRequest(f"{what}: BYTES element {i} declares {length} bytes but only "
                             f"{end - offset} are left")
        try:
            append(data[offset:stop].decode())
        except UnicodeDecodeError:
            raise BadRequest(f"{what}: BYTES element {i} is not UTF-8 text") from None
        offset = stop
    if offset != end:
        raise BadRequest(f"{what}: {end - offset} bytes left after the {count} BYTES "
                         "elements its shape holds")
    return np.asarray(elements, dtype=object)


def _binary_outputs(request: InferRequest) -> BinaryOutputs | None:
    """The answer's encoding the client asked for, taken out of the request's parameters
    (so that it is never forwarded: the gateway reads its upstream's answers as JSON)."""
    default = _pop_flag(request.parameters, "binary_data_output", "body.parameters")
    if request.parameters == {}:
        request.parameters = None
    named: dict[str, bool] = {}
    for i, out in enumerate(request.outputs or ()):
        params = out.get("parameters")
        flag = _pop_flag(params, "binary_data", f"body.outputs[{i}].parameters")
        if flag is not None:
            named[out["name"]] = flag
        if params == {}:
            del out["parameters"]
    if not default and not any(named.values()):
        return None
    return BinaryOutputs(bool(default), named)


def _pop_flag(params: Any, key: str, where: str) -> bool | None:
    if not isinstance(params, dict) or key not in params:
        return None
    value = params.pop(key)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}.{key}: must be true or false")
    return value


def encode_infer_answer(response: InferResponse, wanted: BinaryOutputs | None
                        ) -> tuple[bytes, int | None]:
    """The answer's body and, when some output goes as raw bytes, the length of its JSON
    header (for the Inference-Header-Content-Length response header); else plain JSON."""
    if wanted is None or not any(wanted.wants(t.name) for t in response.outputs):
        return encode_infer_response(response), None
    raw = [to_raw(t) if wanted.wants(t.name) else None for t in response.outputs]
    header = encode_infer_response(response, [None if r is None else len(r) for r in raw])
    return b"".join((header, *(r for r in raw if r is not None))), len(header)


def infer_answer(response: InferResponse, wanted: BinaryOutputs | None) -> Response:
    """The 200 answer to an infer call: JSON, or JSON and raw output bytes when asked."""
    body, header_length = encode_infer_answer(response, wanted)
    if header_length is None:
        return Response(body, 200, media_type="application/json")
    return Response(body, 200, headers={HEADER_LENGTH: str(header_length)},
                    media_type=BINARY_MEDIA_TYPE)


def to_raw(tensor: Tensor) -> bytes:
    """A tensor's data as raw bytes, in from_raw's layout."""
    if tensor.datatype == "BYTES":
        parts: list[bytes] = []
        for element in tensor.data.ravel().tolist():
            octets = element if isinstance(element, bytes) else str(element).encode()
            parts += (_LENGTH_PREFIX.pack(len(octets)), octets)
        return b"".join(parts)
    dtype = np.dtype(NUMPY_DTYPES[tensor.datatype]).newbyteorder("<")
    return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()

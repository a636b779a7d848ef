"""Open Inference Protocol messages over gRPC ⇄ the gateway's InferRequest and InferResponse.

A gRPC tensor's values come either typed (`InferTensorContents`, one repeated field per
datatype) or as raw bytes (`raw_input_contents`, tritonclient's default: the binary
extension's layout). Either way each input then passes the JSON path's own checks
(kernel/oip.py: datatype, shape, element count, NaN and infinity, id and parameter bounds),
so a request means the same, and is refused with the same message, whichever protocol
carried it. Answers go back in the form the request came in (raw or typed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import BadRequest
from ..kernel.oip import (
    NUMPY_DTYPES,
    InferRequest,
    InferResponse,
    Tensor,
    finish_tensor,
    request_from_doc,
    tensor_head,
    tensor_parameters,
)
from ..kernel.oip_binary import from_raw, to_raw
from . import inference_pb2 as pb

#: The InferTensorContents field of each datatype (FP16 has none: raw bytes only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_Source = tuple[str, Any]  # ("raw", bytes) or ("typed", InferTensorContents)


def decode_infer_request(msg: pb.ModelInferRequest, *, allow_nonfinite: bool = False
                         ) -> InferRequest:
    """A ModelInferRequest → InferRequest, through the JSON path's checks."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise BadRequest(f"raw_input_contents: {len(raw)} entries for {len(msg.inputs)} "
                         "inputs; give one per input, in the order of inputs")
    doc = {"inputs": [_input_doc(t, ("raw", raw[i]) if raw else ("typed", t.contents))
                      for i, t in enumerate(msg.inputs)],
           "id": msg.id or None, "parameters": parameters_of(msg.parameters),
           "outputs": [_output_doc(o) for o in msg.outputs] or None}

    def decode_input(obj: Any, where: str) -> Tensor:
        name, datatype, shape = tensor_head(obj, where)
        kind, source = obj["data"]
        count = math.prod(shape)
        if kind == "raw":
            index = where.removeprefix("inputs[").removesuffix("]")
            array = from_raw(memoryview(source), datatype, count,
                             f"raw_input_contents[{index}]")
        else:
            array = _from_contents(source, datatype, f"{where}.contents")
        return finish_tensor(name, datatype, shape, array, tensor_parameters(obj, where),
                             where, allow_nonfinite=allow_nonfinite)

    return request_from_doc(doc, decode_input)


def _input_doc(t: pb.ModelInferRequest.InferInputTensor, source: _Source) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                           "data": source}
    params = parameters_of(t.parameters)
    if params is not None:
        doc["parameters"] = params
    if source[0] == "raw" and t.HasField("contents"):
        raise BadRequest(f"input {t.name[:64]!r}: give its values in contents or in "
                         "raw_input_contents, not both")
    return doc


def _output_doc(o: pb.ModelInferRequest.InferRequestedOutputTensor) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": o.name}
    params = parameters_of(o.parameters)
    if params is not None:
        doc["parameters"] = params
    return doc


def _from_contents(contents: pb.InferTensorContents, datatype: str, where: str
                   ) -> np.ndarray[Any, Any]:
    """Typed values → a flat array; values another datatype's field holds are refused, as
    are numbers that do not fit the datatype (an INT8 of 300), as on the JSON path."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequest(f"{where}: {datatype} has no typed contents field; send its values "
                         "in raw_input_contents")
    others = [f for f in set(CONTENTS_FIELD.values()) - {field} if len(getattr(contents, f))]
    if others:
        raise BadRequest(f"{where}: {datatype} values go in {field}, not {sorted(others)[0]}")
    values = getattr(contents, field)
    if datatype == "BYTES":
        try:
            return np.asarray([bytes(v).decode() for v in values], dtype=object)
        except UnicodeDecodeError:
            raise BadRequest(f"{where}.{field}: BYTES elements must be UTF-8 text") from None
    target = np.dtype(NUMPY_DTYPES[datatype])
    if target.kind in "iu" and target.itemsize < 4 and len(values):
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(target)
        if wide.min() < info.min or wide.max() > info.max:
            raise BadRequest(f"{where}.{field}: values do not fit datatype {datatype}")
        return wide.astype(target)
    return np.asarray(values, dtype=target)


def parameters_of(params: Mapping[str, pb.InferParameter]) -> dict[str, Any] | None:
    """A gRPC parameters map → the JSON path's parameters object (None when empty)."""
    out = {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
           for key, value in params.items()}
    return out or None


def set_parameters(target: Any, params: Mapping[str, Any] | None) -> None:
    """Copy the scalar parameters into a gRPC parameters map; others have no gRPC form."""
    for key, value in (params or {}).items():
        slot = _parameter_slot(value)
        if slot is not None:
            setattr(target[key], slot, value)


def _parameter_slot(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool_param"
    if isinstance(value, int):
        return "int64_param" if -(2**63) <= value < 2**63 else None
    if isinstance(value, float):
        return "double_param"
    if isinstance(value, str):
        return "string_param"
    return None


def encode_infer_response(resp: InferResponse, *, raw: bool, model_version: str = ""
                          ) -> pb.ModelInferResponse:
    """An answer as a ModelInferResponse: raw bytes when `raw` (or an output has no typed
    field), else typed contents."""
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=model_version,
                                id=resp.id or "")
    set_parameters(msg.parameters, resp.parameters)
    raw = raw or any(t.datatype not in CONTENTS_FIELD for t in resp.outputs)
    for tensor in resp.outputs:
        out = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        set_parameters(out.parameters, tensor.parameters)
        if raw:
            msg.raw_output_contents.append(to_raw(tensor))
        else:
            _fill_contents(out.contents, tensor)
    return msg


def encode_infer_request(req: InferRequest, model_name: str) -> pb.ModelInferRequest:
    """What an upstream gRPC server is sent: every input as raw bytes."""
    msg = pb.ModelInferRequest(model_name=model_name, id=req.id or "")
    set_parameters(msg.parameters, req.parameters)
    for tensor in req.inputs:
        t = msg.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        set_parameters(t.parameters, tensor.parameters)
        msg.raw_input_contents.append(to_raw(tensor))
    for requested in req.outputs or ():
        o = msg.outputs.add(name=requested["name"])
        params = requested.get("parameters")
        set_parameters(o.parameters, params if isinstance(params, dict) else None)
    return msg


def decode_infer_response(msg: pb.ModelInferResponse) -> InferResponse:
    """An upstream's ModelInferResponse → InferResponse (NaN allowed, as for JSON answers);
    BadRequest when it does not hold up, which the caller re-maps."""
    raw = msg.raw_output_contents
    if raw and len(raw) != len(msg.outputs):
        raise BadRequest(f"raw_output_contents: {len(raw)} entries for {len(msg.outputs)} "
                         "outputs")
    tensors = []
    for i, t in enumerate(msg.outputs):
        where = f"outputs[{i}]"
        name, datatype, shape = tensor_head({"name": t.name, "datatype": t.datatype,
                                             "shape": list(t.shape)}, where)
        array = (from_raw(memoryview(raw[i]), datatype, math.prod(shape),
                          f"raw_output_contents[{i}]") if raw
                 else _from_contents(t.contents, datatype, f"{where}.contents"))
        tensors.append(finish_tensor(name, datatype, shape, array,
                                     parameters_of(t.parameters), where,
                                     allow_nonfinite=True))
    return InferResponse(msg.model_name, tensors, msg.id or None,
                         parameters_of(msg.parameters) or {})


def _fill_contents(contents: pb.InferTensorContents, tensor: Tensor) -> None:
    values: Iterable[Any] = tensor.data.ravel().tolist()
    if tensor.datatype == "BYTES":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in values]
    getattr(contents, CONTENTS_FIELD[tensor.datatype]).extend(values)

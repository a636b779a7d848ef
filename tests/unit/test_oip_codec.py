"""The OIP codec, directly: strict types, rectangular data, a field name in every error."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from modelfence.errors import BadRequest
from modelfence.kernel.oip import (
    InferResponse,
    Tensor,
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)


def req(**tensor: object) -> bytes:
    base = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    base.update(tensor)
    return json.dumps({"inputs": [base]}).encode()


def test_flat_and_nested_data_decode_alike() -> None:
    flat = decode_infer_request(req())
    nested = decode_infer_request(req(data=[[1, 2], [3, 4]]))
    np.testing.assert_array_equal(flat.inputs[0].data, nested.inputs[0].data)
    assert flat.inputs[0].data.dtype == np.float32 and flat.rows == 2


@pytest.mark.parametrize(("tensor", "message"), [
    ({"datatype": "INT8", "data": [1, 2, 3, 300]}, "do not fit datatype INT8"),
    ({"datatype": "UINT8", "data": [1, 2, 3, -1]}, "do not fit datatype UINT8"),
    ({"datatype": "INT32", "data": [1.5, 2, 3, 4]}, "do not fit datatype INT32"),
    ({"datatype": "INT64", "data": [2**70, 2, 3, 4]}, "do not fit datatype INT64"),
    ({"datatype": "FP32", "data": ["1", "2", "3", "4"]}, "do not fit datatype FP32"),
    ({"datatype": "FP32", "data": [1, "2", 3, 4]}, "do not fit datatype FP32"),
    ({"datatype": "BOOL", "data": [1, 0, 1, 0]}, "do not fit datatype BOOL"),
    ({"datatype": "BYTES", "data": [1, 2, 3, 4]}, "do not fit datatype BYTES"),
    ({"shape": [2, -2]}, "non-negative integers"),
    ({"shape": [2, True]}, "non-negative integers"),
    ({"shape": "2x2"}, "inputs[0].shape: must be a list"),
    ({"name": 5}, "inputs[0].name: must be a string"),
    ({"data": [[1, 2], [3]]}, "rectangular"),
    ({"data": {"a": 1}}, "inputs[0].data: must be a list"),
])
def test_bad_tensors(tensor: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_infer_request(req(**tensor))


def test_good_types() -> None:
    assert decode_infer_request(req(datatype="BOOL", data=[True, False, True, True])
                                ).inputs[0].data.dtype == np.bool_
    assert decode_infer_request(req(datatype="INT64")).inputs[0].data.dtype == np.int64
    t = decode_infer_request(req(datatype="BYTES", data=["a", "b", "c", "d"])).inputs[0]
    assert t.data.tolist() == [["a", "b"], ["c", "d"]]


def test_top_level_fields_are_checked() -> None:
    for body, msg in [(b'{"inputs": [], "id": 5}', "body.inputs"),
                      (req().replace(b'{"inputs"', b'{"id": 5, "inputs"'), "body.id"),
                      (req().replace(b'{"inputs"', b'{"parameters": [], "inputs"'),
                       "body.parameters"),
                      (req().replace(b'{"inputs"', b'{"outputs": [1], "inputs"'), "body.outputs")]:
        with pytest.raises(BadRequest, match=msg.replace(".", r"\.")):
            decode_infer_request(body)


def test_response_round_trip() -> None:
    resp = InferResponse("m", [Tensor("probabilities", "FP32", [1, 2],
                                      np.asarray([[0.25, 0.75]], dtype=np.float32)),
                               Tensor("label", "BYTES", [1], np.asarray(["cat"], dtype=object))],
                         id="r1")
    back = decode_infer_response(encode_infer_response(resp))
    assert back.id == "r1" and back.model_name == "m"
    np.testing.assert_allclose(back.outputs[0].data, [[0.25, 0.75]])
    assert back.outputs[1].data.tolist() == ["cat"]


def nested(depth: int) -> dict[str, object]:
    """{"a": {"a": ... {}}} with `depth` objects in all."""
    doc: dict[str, object] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


def with_top(**fields: object) -> bytes:
    doc = json.loads(req())
    doc.update(fields)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("body", "where"), [
    (with_top(parameters=nested(250)), "body.parameters"),
    (req(parameters=nested(250)), "inputs[0].parameters"),
    (with_top(outputs=[{"name": "y", "parameters": nested(250)}]), "body.outputs[0]"),
    (with_top(parameters={"list": [[[[[[[[[1]]]]]]]]]}), "body.parameters"),
])
def test_deep_parameters_are_refused_when_decoded(body: bytes, where: str) -> None:
    """Nesting that orjson reads (1,024 levels) but cannot write (254) used to pass here
    and fail with a 500 when re-encoded for an upstream."""
    with pytest.raises(BadRequest, match=re.escape(f"{where}: nested deeper than 8 levels")):
        decode_infer_request(body)


def test_parameters_within_bounds_survive_re_encoding() -> None:
    doc = decode_infer_request(with_top(parameters=nested(8), outputs=[{"name": "y"}]))
    doc.inputs[0].parameters = nested(8)
    assert json.loads(encode_infer_request(doc))["parameters"] == nested(8)


@pytest.mark.parametrize(("body", "message"), [
    (with_top(parameters={"k": "x" * 20_000}), "body.parameters: over the limit of 16384 bytes"),
    (req(parameters=[1]), "inputs[0].parameters: must be an object"),
    (with_top(id="i" * 257), "body.id: over the limit of 256 characters"),
    (with_top(outputs=[{"parameters": {}}]), "body.outputs[0].name: field required"),
    (with_top(outputs=[{"name": "y"}] * 65), "body.outputs: 65 outputs is over the limit"),
    (req(shape=[1] * 40, data=[1.0]), "inputs[0].shape: 40 dimensions is over the limit of 32"),
    (req(shape=[0, 2**62, 2**62], data=[]), "inputs[0].shape: dimensions too large"),
])
def test_sizes_numpy_or_an_upstream_cannot_take_are_400(body: bytes, message: str) -> None:
    """Each of these used to pass the decoder (or raise a ValueError: a 500)."""
    with pytest.raises(BadRequest, match=re.escape(message)):
        decode_infer_request(body)

"""The OIP codec, directly: strict types, rectangular data, a field name in every error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelfence.errors import BadRequest
from modelfence.gateway.oip import (
    InferResponse,
    Tensor,
    decode_infer_request,
    decode_infer_response,
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

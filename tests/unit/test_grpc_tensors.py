"""gRPC tensors ⇄ the gateway's InferRequest/InferResponse, through the JSON path's checks."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton

from modelfence.errors import BadRequest
from modelfence.gateway.grpc_request import GrpcRequest, peer_address
from modelfence.grpc import inference_pb2 as pb
from modelfence.grpc.status import grpc_code, trailing_metadata
from modelfence.grpc.tensors import (
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)
from modelfence.kernel.oip import InferRequest, InferResponse, Tensor
from modelfence.kernel.oip import decode_infer_request as json

ROWS = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


def typed(datatype: str, shape: list[int], **contents: list[object]) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype=datatype, shape=shape,
                   contents=pb.InferTensorContents(**contents))
    return msg


def raw(datatype: str, shape: list[int], data: bytes) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype=datatype, shape=shape)
    msg.raw_input_contents.append(data)
    return msg


def refused(msg: pb.ModelInferRequest) -> str:
    with pytest.raises(BadRequest) as caught:
        decode_infer_request(msg)
    return caught.value.message


def test_tritonclients_own_request_decodes_to_the_json_paths_request() -> None:
    """tritonclient builds the message (raw contents, its defaults); the result is what the
    same tensor sent as JSON decodes to."""
    tensor = triton.InferInput("x", [3, 4], "FP32")
    tensor.set_data_from_numpy(ROWS)
    wire = pb.ModelInferRequest(model_name="m", id="r1")
    wire.inputs.add().MergeFromString(tensor._get_tensor().SerializeToString())
    wire.raw_input_contents.append(tensor._get_content())
    got = decode_infer_request(pb.ModelInferRequest.FromString(wire.SerializeToString()))
    want = json(b'{"id": "r1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4],'
                b' "data": ' + str(ROWS.ravel().tolist()).encode() + b"}]}")
    assert (got.id, got.inputs[0].name, got.inputs[0].shape) == ("r1", "x", [3, 4])
    np.testing.assert_array_equal(got.inputs[0].data, want.inputs[0].data)
    assert got.inputs[0].data.dtype == np.float32


@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), [
    ("FP32", "fp32_contents", [0.5, 1.5], np.float32),
    ("FP64", "fp64_contents", [0.25, -2.0], np.float64),
    ("INT8", "int_contents", [-128, 127], np.int8),
    ("UINT16", "uint_contents", [0, 65535], np.uint16),
    ("INT64", "int64_contents", [-(2**40), 2**40], np.int64),
    ("BOOL", "bool_contents", [True, False], np.bool_),
])
def test_typed_contents_decode_to_their_datatype(datatype: str, field: str,
                                                 values: list[object], dtype: type) -> None:
    got = decode_infer_request(typed(datatype, [1, 2], **{field: values})).inputs[0]
    assert got.data.dtype == dtype and got.data.tolist() == [values]


def test_bytes_decode_as_text_typed_and_raw() -> None:
    assert decode_infer_request(typed("BYTES", [2], bytes_contents=[b"ab", b"c"])
                                ).inputs[0].data.tolist() == ["ab", "c"]
    packed = b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    assert decode_infer_request(raw("BYTES", [2], packed)).inputs[0].data.tolist() == ["ab", "c"]


@pytest.mark.parametrize(("msg", "message"), [
    (typed("INT8", [1, 1], int_contents=[300]),
     "inputs[0].contents.int_contents: values do not fit datatype INT8"),
    (typed("FP32", [1, 2], fp64_contents=[1.0, 2.0]),
     "inputs[0].contents: FP32 values go in fp32_contents, not fp64_contents"),
    (typed("FP32", [2, 2], fp32_contents=[1.0, 2.0]),
     "inputs[0].data: has 2 elements but shape [2, 2] needs 4"),
    (typed("FP32", [1, 1], fp32_contents=[float("nan")]),
     "inputs[0].data: NaN or infinite values (or overflow of FP32)"),
    (typed("FP16", [1], fp32_contents=[1.0]),
     "inputs[0].contents: FP16 has no typed contents field; send its values in "
     "raw_input_contents"),
    (typed("FP99", [1], fp32_contents=[1.0]), "inputs[0].datatype: unknown datatype 'FP99'"),
    (typed("FP32", [-1], fp32_contents=[1.0]),
     "inputs[0].shape: must be a list of non-negative integers"),
    (raw("FP32", [1, 2], b"\x00" * 7), "raw_input_contents[0]: 7 bytes, but 2 FP32 elements "
                                       "take 8"),
    (pb.ModelInferRequest(model_name="m"), "body.inputs: must list at least one input"),
])
def test_bad_tensors_are_refused_with_the_json_paths_messages(msg: pb.ModelInferRequest,
                                                              message: str) -> None:
    assert refused(msg) == message


def test_raw_contents_must_cover_every_input_and_not_mix_with_typed() -> None:
    msg = raw("FP32", [1], b"\x00" * 4)
    msg.inputs.add(name="y", datatype="FP32", shape=[1])
    assert refused(msg).startswith("raw_input_contents: 1 entries for 2 inputs")
    both = raw("FP32", [1], b"\x00" * 4)
    both.inputs[0].contents.fp32_contents.append(1.0)
    assert refused(both) == ("input 'x': give its values in contents or in "
                             "raw_input_contents, not both")


def test_id_and_parameters_have_the_json_paths_bounds() -> None:
    msg = typed("FP32", [1], fp32_contents=[1.0])
    msg.id = "x" * 257
    assert refused(msg) == "body.id: over the limit of 256 characters"
    msg = typed("FP32", [1], fp32_contents=[1.0])
    msg.parameters["big"].string_param = "x" * 20_000
    assert refused(msg) == "body.parameters: over the limit of 16384 bytes"
    msg = typed("FP32", [1], fp32_contents=[1.0])
    msg.parameters["n"].int64_param = 3
    msg.parameters["f"].bool_param = True
    msg.outputs.add(name="label")
    got = decode_infer_request(msg)
    assert got.parameters == {"n": 3, "f": True} and got.outputs == [{"name": "label"}]


def test_answers_go_back_raw_or_typed_and_decode_to_the_same_tensors() -> None:
    answer = InferResponse("m", [Tensor("p", "FP32", [3, 4], ROWS),
                                 Tensor("label", "BYTES", [3], np.asarray(["a", "b", "c"],
                                                                          dtype=object))],
                           "id-1", {"note": "x"})
    for as_raw in (True, False):
        msg = encode_infer_response(answer, raw=as_raw)
        assert bool(msg.raw_output_contents) is as_raw
        back = decode_infer_response(pb.ModelInferResponse.FromString(msg.SerializeToString()))
        assert (back.model_name, back.id, back.parameters) == ("m", "id-1", {"note": "x"})
        np.testing.assert_array_equal(back.outputs[0].data, ROWS)
        assert back.outputs[1].data.tolist() == ["a", "b", "c"]


def test_an_fp16_answer_goes_raw_even_to_a_typed_request() -> None:
    answer = InferResponse("m", [Tensor("h", "FP16", [2], np.asarray([1, 2], np.float16))])
    assert len(encode_infer_response(answer, raw=False).raw_output_contents) == 1


def test_a_forwarded_request_is_raw_and_decodes_back_to_itself() -> None:
    request = InferRequest([Tensor("x", "FP32", [3, 4], ROWS, {"k": "v"})], "r",
                           {"n": 1}, [{"name": "p"}])
    msg = encode_infer_request(request, "upstream-name")
    assert msg.model_name == "upstream-name" and len(msg.raw_input_contents) == 1
    back = decode_infer_request(msg)
    np.testing.assert_array_equal(back.inputs[0].data, ROWS)
    assert (back.id, back.parameters, back.outputs) == ("r", {"n": 1}, [{"name": "p"}])
    assert back.inputs[0].parameters == {"k": "v"}


def test_status_codes_and_trailers() -> None:
    import grpc

    assert grpc_code(401) == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code(429) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_code(504) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert grpc_code(409) == grpc.StatusCode.FAILED_PRECONDITION
    assert trailing_metadata({"Retry-After": "3", "Connection": "close"}) == (
        ("retry-after", "3"),)


async def test_the_request_adapter_reads_metadata_peer_and_body() -> None:
    request = GrpcRequest([("authorization", "Bearer a"), ("authorization", "Bearer b"),
                           ("trace-bin", b"\x00")], "ipv6:%5B::1%5D:5000", b"body")
    assert request.headers == {"authorization": "Bearer a"}
    assert request.client is not None and request.client.host == "::1"
    assert [c async for c in request.stream()] == [b"body"]
    assert peer_address("ipv4:10.0.0.2:6000") == type(request.client)("10.0.0.2")
    assert peer_address("unix:/run/x.sock") is None

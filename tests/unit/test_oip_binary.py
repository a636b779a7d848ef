"""The binary tensor data extension, against tritonclient's own encoder and decoder, and
every malformed binary body the gateway must refuse with a 400 that says what is wrong."""

from __future__ import annotations

import gzip
import json
import re
import struct
import zlib
from typing import Any

import numpy as np
import pytest
import tritonclient.http as th
from starlette.requests import Request
from tritonclient.http._utils import _get_inference_request

from modelfence.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from modelfence.kernel.body import Inflater, read_decoded
from modelfence.kernel.oip import BinaryOutputs, InferResponse, Tensor
from modelfence.kernel.oip_binary import HEADER_LENGTH, decode_infer_body, encode_infer_answer


def triton_body(inputs: list[th.InferInput], outputs: list[th.InferRequestedOutput] | None = None,
                **params: Any) -> tuple[bytes, int | None]:
    """The body and header length tritonclient's InferenceServerClient.infer would send."""
    body, header_length = _get_inference_request(inputs, "", outputs, 0, False, False, 0, None,
                                                 params or None)
    return bytes(body), header_length


def triton_input(name: str, array: np.ndarray[Any, Any], datatype: str,
                 binary: bool = True) -> th.InferInput:
    tensor = th.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def raw_body(header: dict[str, Any], *raws: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(raws), str(len(head))


def fp32_input(size: int, shape: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": shape or [1, 4],
            "parameters": {"binary_data_size": size}, **extra}


def refused(body: bytes, header: str | None, message: str, **kw: Any) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        decode_infer_body(body, header, **kw)


@pytest.mark.parametrize(("datatype", "array"), [
    ("FP32", np.arange(6, dtype=np.float32).reshape(2, 3) / 7),
    ("FP64", np.linspace(-1, 1, 6).reshape(3, 2)),
    ("FP16", np.asarray([[0.5, -2.0]], dtype=np.float16)),
    ("INT64", np.asarray([[-(2**62), 2**62]], dtype=np.int64)),
    ("UINT8", np.asarray([0, 255, 7], dtype=np.uint8)),
    ("INT8", np.asarray([[-128, 127]], dtype=np.int8)),
    ("BOOL", np.asarray([[True, False, True]])),
    ("BYTES", np.asarray([["a", "héllo"], ["", "z" * 300]], dtype=object)),
])
def test_tritonclient_binary_inputs_decode_to_the_json_paths_tensors(
        datatype: str, array: np.ndarray[Any, Any]) -> None:
    body, n = triton_body([triton_input("x", array, datatype)])
    assert n is not None
    binary = decode_infer_body(body, str(n)).inputs[0]
    as_json, none = triton_body([triton_input("x", array, datatype, binary=False)])
    assert none is None
    plain = decode_infer_body(as_json, None).inputs[0]
    assert (binary.datatype, binary.shape) == (plain.datatype, plain.shape)
    assert binary.data.dtype == plain.data.dtype and binary.data.flags.writeable
    np.testing.assert_array_equal(binary.data, plain.data)
    assert binary.parameters is None  # binary_data_size is the transport's, not forwarded


def test_binary_and_json_inputs_mix_and_answer_flags_are_taken_out() -> None:
    a = triton_input("a", np.ones((1, 3), dtype=np.float32), "FP32")
    b = triton_input("b", np.asarray([[1, 2]], dtype=np.int32), "INT32", binary=False)
    c = triton_input("c", np.asarray([b"ok"], dtype=object), "BYTES")
    outputs = [th.InferRequestedOutput("probabilities", binary_data=True),
               th.InferRequestedOutput("label", binary_data=False)]
    body, n = triton_body([a, b, c], outputs, priority_hint="x")
    req = decode_infer_body(body, str(n))
    assert [t.name for t in req.inputs] == ["a", "b", "c"]
    assert req.inputs[2].data.tolist() == ["ok"]
    assert req.outputs == [{"name": "probabilities"}, {"name": "label"}]
    assert req.parameters == {"priority_hint": "x"}
    assert req.binary_outputs == BinaryOutputs(False, {"probabilities": True, "label": False})


def test_request_level_binary_data_output_is_the_default_and_is_not_forwarded() -> None:
    body, n = triton_body([triton_input("x", np.zeros((1, 2), dtype=np.float32), "FP32")])
    req = decode_infer_body(body, str(n))
    assert req.parameters is None
    assert req.binary_outputs is not None and req.binary_outputs.wants("anything")


def test_a_json_request_may_ask_for_binary_outputs() -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                   "data": [1.0]}],
                       "outputs": [{"name": "p", "parameters": {"binary_data": True}}]}).encode()
    req = decode_infer_body(body, None)
    assert req.binary_outputs == BinaryOutputs(False, {"p": True})


def test_answer_flags_must_be_booleans() -> None:
    base = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    body = json.dumps({**base, "parameters": {"binary_data_output": 1}}).encode()
    refused(body, None, "body.parameters.binary_data_output: must be true or false")
    body = json.dumps({**base, "outputs": [{"name": "p", "parameters": {"binary_data": "yes"}}]}
                      ).encode()
    refused(body, None, "body.outputs[0].parameters.binary_data: must be true or false")


def answer() -> InferResponse:
    return InferResponse("m", [
        Tensor("probabilities", "FP32", [2, 3],
               np.asarray([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], dtype=np.float32)),
        Tensor("label", "BYTES", [2], np.asarray(["cat", "dög"], dtype=object)),
        Tensor("index", "INT64", [2], np.asarray([2, 0], dtype=np.int64))], id="r1")


def test_answer_round_trips_through_tritonclients_result() -> None:
    wanted = BinaryOutputs(True, {"index": False})
    body, n = encode_infer_answer(answer(), wanted)
    assert n is not None
    result = th.InferResult.from_response_body(body, header_length=n)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), answer().outputs[0].data)
    assert result.as_numpy("label").tolist() == [b"cat", "dög".encode()]
    assert result.as_numpy("index").tolist() == [2, 0]
    outputs = {o["name"]: o for o in result.get_response()["outputs"]}
    assert outputs["probabilities"]["parameters"] == {"binary_data_size": 24}
    assert "data" not in outputs["probabilities"] and outputs["index"]["data"] == [2, 0]
    assert result.get_response()["id"] == "r1"


def test_answer_is_plain_json_unless_an_output_is_wanted_binary() -> None:
    for wanted in (None, BinaryOutputs(False, {"index": False}),
                   BinaryOutputs(False, {"absent": True})):
        body, n = encode_infer_answer(answer(), wanted)
        assert n is None and json.loads(body)["outputs"][0]["data"][2] == pytest.approx(0.7)


def test_json_header_length_past_the_body() -> None:
    body, _ = raw_body({"inputs": [fp32_input(16)]}, b"\0" * 16)
    refused(body, str(len(body) + 1), f"{HEADER_LENGTH} is {len(body) + 1} but the body "
            f"holds only {len(body)} bytes")


@pytest.mark.parametrize("value", ["-5", "abc", "1e3", "0x10", " ", "+7", "\u00b2", "1\u00b9",
                                   "99999999999999999999999999"])
def test_header_length_that_is_not_a_byte_count(value: str) -> None:
    body, _ = raw_body({"inputs": [fp32_input(16)]}, b"\0" * 16)
    refused(body, value, f"{HEADER_LENGTH} must be a whole number of bytes")


def test_huge_header_length_that_is_digits() -> None:
    body, _ = raw_body({"inputs": [fp32_input(16)]}, b"\0" * 16)
    refused(body, str(2**63), "but the body holds only")
    refused(body, "0", f"{HEADER_LENGTH} is 0")


def test_header_length_that_cuts_the_json() -> None:
    body, n = raw_body({"inputs": [fp32_input(16)]}, b"\0" * 16)
    refused(body, str(int(n) - 3), f"inference header (the body's first {int(n) - 3} bytes) "
            "is not valid JSON")


@pytest.mark.parametrize(("size", "shape", "message"), [
    (12, [1, 4], "binary_data_size: 12 bytes, but 4 FP32 elements take 16"),
    (16, [1, 5], "binary_data_size: 16 bytes, but 5 FP32 elements take 20"),
    (16, [2, 4], "binary_data_size: 16 bytes, but 8 FP32 elements take 32"),
])
def test_sizes_that_disagree_with_shapes(size: int, shape: list[int], message: str) -> None:
    body, n = raw_body({"inputs": [fp32_input(size, shape)]}, b"\0" * size)
    refused(body, n, f"inputs[0].parameters.{message}")


def test_size_past_the_binary_data_and_bytes_nobody_claims() -> None:
    body, n = raw_body({"inputs": [fp32_input(16)]}, b"\0" * 12)
    refused(body, n, "binary_data_size: 16 bytes, but only 12 bytes of binary data are left")
    body, n = raw_body({"inputs": [fp32_input(16)]}, b"\0" * 20)
    refused(body, n, "4 bytes of binary data after the last input's binary_data_size")
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    body, n = raw_body(doc, b"junk")
    refused(body, n, "4 bytes of binary data after the last input's binary_data_size")


def test_second_input_runs_past_the_end() -> None:
    second = {**fp32_input(16), "name": "y"}
    body, n = raw_body({"inputs": [fp32_input(16), second]}, b"\0" * 24)
    refused(body, n, "inputs[1].parameters.binary_data_size: 16 bytes, but only 8")


@pytest.mark.parametrize("size", [-1, True, "16", 1.5, None])
def test_binary_data_size_must_be_a_byte_count(size: Any) -> None:
    body, n = raw_body({"inputs": [fp32_input(16) | {"parameters": {"binary_data_size": size}}]},
                       b"\0" * 16)
    refused(body, n, "inputs[0].parameters.binary_data_size: must be a non-negative integer")


def test_data_and_binary_data_size_together() -> None:
    body, n = raw_body({"inputs": [fp32_input(16, data=[1, 2, 3, 4])]}, b"\0" * 16)
    refused(body, n, "inputs[0]: give either `data` or parameters.binary_data_size, not both")


def test_binary_data_size_without_the_header() -> None:
    body, _ = raw_body({"inputs": [fp32_input(16)]})
    refused(body, None, f"binary_data_size is set but the request has no {HEADER_LENGTH}")


def bytes_input(size: int, shape: list[int]) -> dict[str, Any]:
    return {"name": "s", "datatype": "BYTES", "shape": shape,
            "parameters": {"binary_data_size": size}}


def elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_bytes_element_length_past_the_end() -> None:
    raw = elements(b"ab") + struct.pack("<I", 1000) + b"xyz"
    body, n = raw_body({"inputs": [bytes_input(len(raw), [2])]}, raw)
    refused(body, n, "inputs[0].parameters.binary_data_size: BYTES element 1 declares 1000 "
            "bytes but only 3 are left")
    raw = struct.pack("<I", 2**32 - 1)
    body, n = raw_body({"inputs": [bytes_input(len(raw), [1])]}, raw)
    refused(body, n, "BYTES element 0 declares 4294967295 bytes but only 0 are left")


def test_bytes_counts_that_disagree_with_the_shape() -> None:
    raw = elements(b"a", b"b", b"c")
    body, n = raw_body({"inputs": [bytes_input(len(raw), [2])]}, raw)
    refused(body, n, "5 bytes left after the 2 BYTES elements its shape holds")
    raw = elements(b"a" * 20)
    body, n = raw_body({"inputs": [bytes_input(len(raw), [3])]}, raw)
    refused(body, n, "its 24 bytes hold only 1 BYTES elements but shape needs 3")
    body, n = raw_body({"inputs": [bytes_input(8, [10**12])]}, b"\0" * 8)
    refused(body, n, "8 bytes cannot hold 1000000000000 BYTES elements")
    raw = elements(b"a")[:3]
    body, n = raw_body({"inputs": [bytes_input(len(raw), [0])]}, raw)
    refused(body, n, "3 bytes left after the 0 BYTES elements")


def test_bytes_elements_must_be_text() -> None:
    raw = elements(b"ok", b"\xff\xfe")
    body, n = raw_body({"inputs": [bytes_input(len(raw), [2])]}, raw)
    refused(body, n, "inputs[0].parameters.binary_data_size: BYTES element 1 is not UTF-8")


def test_the_json_paths_checks_apply_to_binary_tensors() -> None:
    nan = np.asarray([[1, np.nan, 2, np.inf]], dtype=np.float32).tobytes()
    body, n = raw_body({"inputs": [fp32_input(16)]}, nan)
    refused(body, n, "inputs[0].data: NaN or infinite values")
    assert np.isnan(decode_infer_body(body, n, allow_nonfinite=True).inputs[0].data).any()
    changes: list[tuple[dict[str, Any], str]] = [
        ({"datatype": "BF16"}, "inputs[0].datatype: unknown datatype"),
        ({"shape": [1, -4]}, "inputs[0].shape: must be a list of non-neg"),
        ({"shape": [1] * 40}, "dimensions is over the limit"),
        ({"name": 7}, "inputs[0].name: must be a string")]
    for change, message in changes:
        body, n = raw_body({"inputs": [fp32_input(16) | change]}, b"\0" * 16)
        refused(body, n, message)
    deep: dict[str, Any] = {"binary_data_size": 16}
    for _ in range(10):
        deep = {"k": deep} | {"binary_data_size": 16}
    body, n = raw_body({"inputs": [fp32_input(16) | {"parameters": deep}]}, b"\0" * 16)
    refused(body, n, "inputs[0].parameters: nested deeper than")
    body, n = raw_body({"inputs": [], "id": "x"})
    refused(body, n, "body.inputs: must list at least one input")


def test_bool_bytes_are_zero_or_one() -> None:
    body, n = raw_body({"inputs": [{"name": "b", "datatype": "BOOL", "shape": [3],
                                    "parameters": {"binary_data_size": 3}}]}, b"\x01\x00\x02")
    refused(body, n, "inputs[0].parameters.binary_data_size: BOOL elements must be the bytes 0 "
            "or 1")


def test_empty_binary_tensor() -> None:
    body, n = raw_body({"inputs": [fp32_input(0, [0, 4])]})
    assert decode_infer_body(body, n).inputs[0].data.shape == (0, 4)
    body, n = raw_body({"inputs": [fp32_input(0, [0, 2**40, 2**40])]})
    refused(body, n, "inputs[0].shape: dimensions too large for an array")


def test_a_binary_body_without_the_header_says_what_is_missing() -> None:
    body, _ = triton_body([triton_input("x", np.full((1, 4), 1e-30, np.float32), "FP32")])
    refused(body, None, f"a body with binary tensor data needs the header {HEADER_LENGTH}")
    refused(b'{"inputs": [', None, "request body is not valid JSON")
    with pytest.raises(BadRequest) as caught:
        decode_infer_body(b'{"inputs": [', None)
    assert HEADER_LENGTH not in caught.value.message  # plain bad JSON gets no binary hint


def test_a_gzip_body_without_its_encoding_says_so() -> None:
    refused(gzip.compress(b'{"inputs": []}'), None, "send it with the header "
            "Content-Encoding: gzip")


# Content-Encoding: the body is inflated piece by piece, never past the body limit.

LIMIT = 64 * 1024


def request(body: bytes, encoding: str | None, *, piece: int = 1000) -> Request:
    headers = [(b"content-length", str(len(body)).encode())]
    if encoding is not None:
        headers.append((b"content-encoding", encoding.encode()))
    pieces = [body[i:i + piece] for i in range(0, len(body), piece)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
                for i, p in enumerate(pieces)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


async def decoded(body: bytes, encoding: str | None, **kw: Any) -> bytes:
    return await read_decoded(request(body, encoding, **kw), LIMIT)


DOC = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 300],
                              "data": list(range(300))}]}).encode()


@pytest.mark.parametrize(("encoding", "compress"), [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("GZip", gzip.compress),
    ("deflate", zlib.compress),  # what tritonclient sends: zlib-wrapped (RFC 9110)
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send
    ("identity", lambda b: b), ("gzip, identity", gzip.compress),
])
async def test_encodings_inflate(encoding: str, compress: Any) -> None:
    assert await decoded(compress(DOC), encoding) == DOC
    assert await decoded(compress(DOC), encoding, piece=1) == DOC


async def test_several_gzip_members_are_one_body() -> None:
    assert await decoded(gzip.compress(DOC[:100]) + gzip.compress(DOC[100:]), "gzip") == DOC


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress),
                                                    ("deflate", zlib.compress)])
async def test_a_bomb_stops_at_the_limit(encoding: str, compress: Any) -> None:
    bomb = compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KiB or less
    assert len(bomb) < LIMIT
    with pytest.raises(PayloadTooLarge, match=f"Content-Encoding: {encoding}. inflates to "
                       f"more than the {LIMIT} byte limit"):
        await decoded(bomb, encoding, piece=len(bomb))


async def test_a_body_just_at_the_limit_inflates() -> None:
    exact = b"\x20" * LIMIT
    assert await decoded(gzip.compress(exact), "gzip") == exact
    with pytest.raises(PayloadTooLarge):
        await decoded(gzip.compress(exact + b" "), "gzip")


async def test_the_inflater_never_holds_more_than_the_limit() -> None:
    inflater = Inflater("gzip", LIMIT)
    bomb = gzip.compress(b"\0" * (16 * 1024 * 1024))
    with pytest.raises(PayloadTooLarge):
        inflater.feed(bomb)
    assert sum(map(len, inflater._parts)) <= LIMIT  # what it kept


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress),
                                                    ("deflate", zlib.compress)])
async def test_truncated_compressed_body(encoding: str, compress: Any) -> None:
    with pytest.raises(BadRequest, match=f"the {encoding} data is truncated"):
        await decoded(compress(DOC)[:-10], encoding)


async def test_corrupt_compressed_body() -> None:
    body = bytearray(gzip.compress(DOC))
    body[20:30] = b"\xff" * 10
    with pytest.raises(BadRequest, match="request body is not valid gzip data"):
        await decoded(bytes(body), "gzip")
    with pytest.raises(BadRequest, match="not valid gzip data"):
        await decoded(DOC, "gzip")  # said gzip, sent plain
    with pytest.raises(BadRequest, match="data after the end of the deflate stream"):
        await decoded(zlib.compress(DOC) + b"more", "deflate")
    with pytest.raises(BadRequest, match="request body is empty"):
        await decoded(gzip.compress(b""), "gzip")


@pytest.mark.parametrize(("encoding", "message"), [
    ("br", "Content-Encoding 'br' is not supported"),
    ("zstd", "Content-Encoding 'zstd' is not supported"),
    ("gzip, deflate", "only one encoding is supported"),
])
async def test_unknown_encoding_is_415(encoding: str, message: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=message) as caught:
        await decoded(gzip.compress(DOC), encoding)
    assert caught.value.status == 415


async def test_compressed_body_over_the_limit_as_sent() -> None:
    noise = np.random.default_rng(0).bytes(LIMIT + 10)
    with pytest.raises(PayloadTooLarge, match=f"request body over the {LIMIT} byte limit"):
        await decoded(gzip.compress(noise), "gzip")


def test_outputs_of_one_name_each_get_their_own_bytes() -> None:
    twice = InferResponse("m", [Tensor("p", "INT32", [1], np.asarray([1], np.int32)),
                                Tensor("p", "INT32", [2], np.asarray([2, 3], np.int32))])
    body, n = encode_infer_answer(twice, BinaryOutputs(True))
    assert n is not None
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(body[:n])["outputs"]]
    assert sizes == [4, 8] and body[n:] == np.asarray([1, 2, 3], "<i4").tobytes()


async def test_a_content_length_of_other_digits_is_400_not_500() -> None:
    req = request(DOC, None)
    req.scope["headers"] = [(b"content-length", "\u00b2".encode("latin-1"))]
    with pytest.raises(BadRequest, match="content-length header is not a number"):
        await read_decoded(Request(req.scope, req.receive), LIMIT)

"""The gRPC service's answers for refusals and failures, on a real grpc.aio server: the REST
message with the matching code, Retry-After in trailing metadata, never a traceback; every
call completed (audited) once, before the answer with strict audit."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
import yaml
from typer.testing import CliRunner

from modelfence.backends.call import OipCall
from modelfence.cli.main import app
from modelfence.errors import RateLimited, StoreError, Unauthenticated
from modelfence.gateway.grpc_listener import GrpcListener
from modelfence.gateway.grpc_service import GrpcInference
from modelfence.grpc import inference_pb2 as pb
from modelfence.kernel.call import Call
from modelfence.kernel.chain import Guard, GuardChain


class Scripted(Guard[Call]):
    """Raises what the test says on request; records each completed call."""

    name: ClassVar[str] = "scripted"

    def __init__(self) -> None:
        self.raise_: BaseException | None = None
        self.completed: list[tuple[int, str, str | None]] = []
        self.fail_audit = False
        self.delay_s = 0.0

    async def on_request(self, call: Call) -> None:
        assert call.request.headers.get("authorization") == "Bearer k"
        if self.raise_ is not None:
            raise self.raise_
        await asyncio.sleep(self.delay_s)

    async def on_complete(self, call: Call) -> None:
        self.completed.append((call.status, call.action,
                               call.error.reason if call.error else None))
        call.audit_failed = self.fail_audit


class Readiness:
    async def verdict(self) -> Any:
        return type("V", (), {"ready": True})()

    async def model_ready(self, name: str) -> bool:
        return name == "m"


INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
METADATA_PATH = "/inference.GRPCInferenceService/ModelMetadata"


async def never(call: OipCall) -> None:
    raise AssertionError("the terminal must not run")


async def metadata(call: OipCall) -> None:
    call.metadata = {"name": call.model_name, "versions": ["1"], "platform": "test",
                     "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}


@pytest.fixture()
async def served() -> AsyncIterator[tuple[Scripted, Callable[..., Any], list[Any]]]:
    guard = Scripted()
    failures: list[BaseException] = []
    services = []

    async def serve(*, strict: bool = False) -> grpc.aio.Channel:
        chain = GuardChain(OipCall, [guard])
        service = GrpcInference(
            infer_chain=chain, metadata_chain=chain, infer=never, metadata=metadata,
            readiness=Readiness(), server=("modelfence", "0", ("binary_tensor_data",)),
            on_failure=failures.append, audit_before_answer=strict)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        listener = GrpcListener("127.0.0.1", port, service, max_message_bytes=1 << 20)
        await listener.start()
        services.append(listener)
        return grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    yield guard, serve, failures
    for listener in services:
        await listener.stop()


async def infer(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    call = channel.unary_unary(INFER_PATH,
                               request_serializer=pb.ModelInferRequest.SerializeToString,
                               response_deserializer=pb.ModelInferResponse.FromString)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(pb.ModelInferRequest(model_name="m"), metadata=(("authorization", "Bearer k"),),
                   timeout=10)
    return caught.value


async def test_a_quota_refusal_is_resource_exhausted_with_retry_after(served: Any) -> None:
    guard, serve, _ = served
    async with await serve() as channel:
        guard.raise_ = RateLimited("rate limit of 1/minute exceeded; retry in 7 s",
                                   retry_after_s=7)
        err = await infer(channel)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == "rate limit of 1/minute exceeded; retry in 7 s"
    assert ("retry-after", "7") in tuple(err.trailing_metadata() or ())
    assert guard.completed == [(429, "infer", "rate_limited")]


async def test_an_unauthenticated_call_carries_www_authenticate(served: Any) -> None:
    guard, serve, _ = served
    async with await serve() as channel:
        guard.raise_ = Unauthenticated(reason="missing_credentials")
        err = await infer(channel)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == "missing or invalid credentials"
    assert ("www-authenticate", 'Bearer realm="modelfence"') in tuple(
        err.trailing_metadata() or ())


async def test_an_internal_failure_is_internal_error_without_its_text(served: Any) -> None:
    guard, serve, failures = served
    async with await serve() as channel:
        guard.raise_ = RuntimeError("secret detail /etc/passwd")
        err = await infer(channel)
        guard.raise_ = StoreError("db down at 10.0.0.5", store="keys")
        store = await infer(channel)
    assert (err.code(), err.details()) == (grpc.StatusCode.INTERNAL, "internal error")
    assert store.code() == grpc.StatusCode.UNAVAILABLE
    assert store.details() == "the key store is unavailable; request denied"
    assert [type(f).__name__ for f in failures] == ["RuntimeError", "StoreError"]
    assert [c[0] for c in guard.completed] == [500, 503]


def metadata_call(channel: grpc.aio.Channel) -> Any:
    call = channel.unary_unary(METADATA_PATH,
                               request_serializer=pb.ModelMetadataRequest.SerializeToString,
                               response_deserializer=pb.ModelMetadataResponse.FromString)
    return call(pb.ModelMetadataRequest(name="m"), metadata=(("authorization", "Bearer k"),),
                timeout=10)


@pytest.mark.parametrize("strict", [False, True])
async def test_an_answer_is_sent_and_completed_once(served: Any, strict: bool) -> None:
    guard, serve, failures = served
    async with await serve(strict=strict) as channel:
        answer = await metadata_call(channel)
    assert (answer.name, list(answer.versions), answer.inputs[0].shape) == ("m", ["1"], [-1, 2])
    for _ in range(50):  # batched: completed after the answer
        if guard.completed:
            break
        await asyncio.sleep(0.02)
    assert guard.completed == [(200, "metadata", None)] and not failures


async def test_strict_audit_refuses_an_answer_whose_record_failed(served: Any) -> None:
    guard, serve, failures = served
    async with await serve(strict=True) as channel:
        guard.fail_audit = True
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await metadata_call(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "the audit store is unavailable; request denied"
    assert isinstance(failures[-1], StoreError)


async def test_a_message_that_is_not_a_model_infer_request_is_invalid(served: Any) -> None:
    _, serve, _ = served
    async with await serve() as channel:
        call = channel.unary_unary(INFER_PATH)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "the request is not a ModelInferRequest message"


async def test_a_call_its_client_gave_up_on_is_recorded_as_499(served: Any) -> None:
    guard, serve, _ = served
    async with await serve() as channel:
        guard.delay_s = 5.0
        call = channel.unary_unary(METADATA_PATH,
                                   request_serializer=pb.ModelMetadataRequest.SerializeToString)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(pb.ModelMetadataRequest(name="m"),
                       metadata=(("authorization", "Bearer k"),), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(100):
            if guard.completed:
                break
            await asyncio.sleep(0.02)
    assert guard.completed == [(499, "metadata", "client_disconnected")]


@pytest.mark.parametrize("where", ["server", "upstream"])
def test_grpc_without_its_extra_stops_config_check_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    (tmp_path / "secret").write_text("s" * 48)
    config: dict[str, Any] = {
        "server": {"admin_listen": None}, "secret_file": "secret",
        "stores": {"keys": "sqlite:///keys.db"}, "audit": {"sink": "jsonl:///audit.jsonl"},
        "models": [{"name": "m", "backend": {"type": "oip", "url": "grpc://127.0.0.1:1"},
                    "input": {"name": "x", "datatype": "FP32", "shape": [-1, 2]}}]}
    if where == "server":
        config["server"]["grpc_port"] = 1
        config["models"] = []
    path = tmp_path / "modelfence.yaml"
    path.write_text(yaml.safe_dump(config))
    for name in ("grpc", "google.protobuf"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    out = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    feature = ("server.grpc_port (the gRPC service)" if where == "server"
               else "model m: a grpc:// upstream")
    assert out.exit_code == 2, out.output
    assert out.output == (f"error: {feature} needs the 'grpc' extra (missing: grpcio, "
                          "protobuf): pip install 'modelfence[grpc]'\n")

"""A hostile-input probe: raw HTTP against `modelfence demo` and an MLServer-backed gateway.

Each probe is the exact bytes a client sends (so headers can carry CR LF, bodies can be
invalid UTF-8, keys can repeat). Every answer must be a 4xx with a JSON error, or a 200
where the input is legitimately fine; never a 5xx; and the gateway logs no traceback and
no ERROR line for any of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..support import Gateway, digits_rows, free_port, infer_body, stop_process, wait_http
from .mlserver_fixture import MLServer
from .test_mlserver import upstream_model

ROW = digits_rows(1)[0]
READ_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Probe:
    name: str
    body: bytes = b""
    method: str = "POST"
    path: str = "/v2/models/{model}/infer"
    headers: tuple[bytes, ...] = (b"Content-Type: application/json",)
    auth: bool = True
    ok_is_fine: bool = False  # a 200 is the right answer: the input is odd but valid
    length: bool = True  # send Content-Length
    http_layer: bool = False  # refused by the HTTP server before the app: 4xx, any body


def doc(**fields: Any) -> bytes:
    return json.dumps({**infer_body([ROW]), **fields}).encode()


def tensor(**fields: Any) -> bytes:
    body = infer_body([ROW])
    body["inputs"][0].update(fields)
    return json.dumps(body).encode()


def nested(depth: int, leaf: Any = 1) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def deep_object(depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _ in range(depth):
        out = {"p": out}
    return out


VALID = doc()
DATA = json.dumps(ROW).encode()

PROBES: list[Probe] = [
    Probe("malformed json", b'{"inputs": [{"name": "input", "shape": [1, 64]'),
    Probe("not json", b"hello, model"),
    Probe("json array", b"[1, 2, 3]"),
    Probe("json string", b'"inputs"'),
    Probe("json null", b"null"),
    Probe("empty body", b""),
    Probe("inputs an object", b'{"inputs": {"name": "input"}}'),
    Probe("inputs empty", b'{"inputs": []}'),
    Probe("tensor a number", b'{"inputs": [1]}'),
    Probe("name a number", tensor(name=7)),
    Probe("unknown datatype", tensor(datatype="FP128")),
    Probe("lowercase datatype", tensor(datatype="fp32")),
    Probe("shape a string", tensor(shape="1x64")),
    Probe("negative shape", tensor(shape=[-1, 64])),
    Probe("huge shape", tensor(shape=[10**12, 64])),
    Probe("shape past int64", tensor(shape=[2**70, 64])),
    Probe("100 dimensions", tensor(shape=[1] * 100, data=[1.0])),
    Probe("empty tensor with huge dimensions", tensor(shape=[0, 2**62, 2**62], data=[])),
    Probe("zero rows", tensor(shape=[0, 64], data=[])),
    Probe("shape and data disagree", tensor(data=ROW[:10])),
    Probe("ragged data", tensor(data=[ROW[:32], ROW[:31]])),
    Probe("strings as FP32", tensor(data=["0.5"] * 64)),
    Probe("BYTES where FP32 is expected", tensor(datatype="BYTES", data=["x"] * 64)),
    Probe("booleans as FP32", tensor(data=[True] * 64)),
    Probe("objects in data", tensor(data=[{"a": 1}] * 64)),
    Probe("NaN literal", VALID.replace(DATA[1:-1].split(b",")[0], b"NaN", 1)),
    Probe("Infinity literal", VALID.replace(DATA[1:-1].split(b",")[0], b"Infinity", 1)),
    Probe("-Infinity literal", VALID.replace(DATA[1:-1].split(b",")[0], b"-Infinity", 1)),
    Probe("1e999", VALID.replace(DATA[1:-1].split(b",")[0], b"1e999", 1)),
    Probe("FP32 overflow", tensor(data=[-1e300, *ROW[1:]])),
    Probe("3e38 in a row", tensor(data=[3e38] * 64)),
    Probe("integer past int64 as FP32", tensor(data=[2**70, *ROW[1:]]), ok_is_fine=True),
    Probe("integer past int64 as INT64",
          tensor(datatype="INT64", data=[2**70] + [0] * 63)),
    Probe("data nested 200 deep", tensor(data=nested(200, 0.5))),
    Probe("json nested 5000 deep", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    Probe("parameters nested 250 deep", doc(parameters=deep_object(250))),
    Probe("input parameters nested 250 deep",
          tensor(parameters=deep_object(250))),
    Probe("output parameters nested 250 deep",
          doc(outputs=[{"name": "probabilities", "parameters": deep_object(250)}])),
    Probe("parameters a list", doc(parameters=[1, 2])),
    Probe("parameters of 200 KB", doc(parameters={"k": "v" * 200_000})),
    Probe("content_type for str", tensor(parameters={"content_type": "str"}),
          ok_is_fine=True),  # not forwarded: a sanitized 200
    Probe("headers parameter with CR LF", doc(parameters={"headers": {"X": "a\r\nb"}}),
          ok_is_fine=True),
    Probe("outputs a string", doc(outputs="probabilities")),
    Probe("output without a name", doc(outputs=[{"parameters": {}}])),
    Probe("id a number", doc(id=12)),
    Probe("id of 10 KB", doc(id="i" * 10_240)),
    Probe("id with CR LF", doc(id="a\r\nX-Injected: 1"), ok_is_fine=True),
    Probe("id not Latin-1", doc(id="\u2603\u20ac\U0001f600"), ok_is_fine=True),
    Probe("two inputs", json.dumps({"inputs": [infer_body([ROW])["inputs"][0]] * 2}).encode()),
    Probe("batch over the limit", json.dumps(infer_body([ROW] * 1100)).encode()),
    Probe("duplicate keys, last one bad", VALID[:-1] + b', "inputs": 5}'),
    Probe("duplicate keys, last one good", b'{"inputs": 5, ' + VALID[1:], ok_is_fine=True),
    Probe("invalid UTF-8 in a string", VALID.replace(b'"input"', b'"in\xff\xfeput"', 1)),
    Probe("UTF-16 body", VALID.decode().encode("utf-16")),
    Probe("text/plain content type", VALID, headers=(b"Content-Type: text/plain",),
          ok_is_fine=True),
    Probe("no content type", VALID, headers=(), ok_is_fine=True),
    Probe("multipart body", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--",
          headers=(b"Content-Type: multipart/form-data; boundary=x",)),
    Probe("unicode model name", VALID, path="/v2/models/%E2%98%83%F0%9F%98%80/infer"),
    Probe("path traversal, encoded", VALID, path="/v2/models/..%2F..%2Fetc%2Fpasswd/infer"),
    Probe("path traversal, literal", VALID, path="/v2/models/../../../etc/passwd/infer"),
    Probe("model name of 8 KB", VALID, path="/v2/models/" + "m" * 8192 + "/infer"),
    Probe("NUL in the model name", VALID, path="/v2/models/digits%00.onnx/infer"),
    Probe("metadata of a traversal", path="/v2/models/..%2F..%2Fsecret", method="GET",
          length=False),
    Probe("GET on infer", method="GET", length=False),
    Probe("DELETE on infer", method="DELETE", length=False),
    Probe("no credential", VALID, auth=False),
    Probe("CR LF injected after the credential", VALID,
          headers=(b"Content-Type: application/json", b"X-Trace: a\r\nX-Injected: 1"),
          ok_is_fine=True),
    Probe("non-UTF-8 credential", VALID, auth=False,
          headers=(b"Content-Type: application/json", b"Authorization: Bearer \xff\xfe\x80")),
    Probe("negative Content-Length", VALID, length=False,
          headers=(b"Content-Type: application/json", b"Content-Length: -5"),
          http_layer=True),
    Probe("Content-Length not a number", VALID, length=False,
          headers=(b"Content-Type: application/json", b"Content-Length: 12abc"),
          http_layer=True),
    Probe("chunked size line overflow", b"ffffffffffffffffff\r\n" + VALID + b"\r\n0\r\n\r\n",
          length=False, headers=(b"Content-Type: application/json",
                                 b"Transfer-Encoding: chunked")),
]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def request_bytes(probe: Probe, port: int, model: str, key: str) -> bytes:
    path = probe.path.format(model=model)
    lines = [f"{probe.method} {path} HTTP/1.1".encode(), f"Host: 127.0.0.1:{port}".encode(),
             b"Connection: close", *probe.headers]
    if probe.auth:
        lines.append(f"Authorization: Bearer {key}".encode())
    if probe.length:
        lines.append(f"Content-Length: {len(probe.body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + probe.body


async def send(port: int, raw: bytes) -> Answer | None:
    """The answer, or None if the server closed the connection without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), READ_TIMEOUT_S)
    except ConnectionError:
        return None
    finally:
        writer.close()
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in header_lines)}
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return Answer(int(status_line.split()[1]), headers, body)


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)


def check(probe: Probe, answer: Answer | None) -> str | None:
    """What is wrong with this answer, or None."""
    if answer is None:
        return "the connection closed without an answer"
    if answer.status >= 500:
        return f"{answer.status}: {answer.body[:300]!r}"
    if answer.status == 200:
        return None if probe.ok_is_fine else f"200 for hostile input: {answer.body[:200]!r}"
    if not 400 <= answer.status < 500:
        return f"status {answer.status}"
    if probe.http_layer:
        return None
    try:
        error = json.loads(answer.body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{answer.status} without a JSON error: {answer.body[:200]!r}"
    if not isinstance(error, str | dict) or not error:
        return f"{answer.status} with an empty error"
    if "Traceback" in answer.body.decode("utf-8", "replace"):
        return "a traceback in the answer"
    return None


async def run_probes(port: int, models: list[str], key: str) -> list[str]:
    problems = []
    for model in models:
        for probe in PROBES:
            answer = await send(port, request_bytes(probe, port, model, key))
            problem = check(probe, answer)
            if problem:
                problems.append(f"{model}: {probe.name}: {problem}")
    return problems


def assert_clean_log(text: str) -> None:
    bad = [line for line in text.splitlines()
           if "Traceback" in line or re.search(r"\bERROR\b", line)]
    assert bad == [], "\n".join(bad[:20])


def test_the_probe_has_at_least_forty_hostile_inputs() -> None:
    assert len(PROBES) >= 40
    assert len({p.name for p in PROBES}) == len(PROBES)


# -- modelfence demo ----------------------------------------------------------------------------


@dataclass
class Demo:
    port: int
    key: str
    log: Path


def own_admin_port(folder: Path) -> None:
    """The demo's files, made as `modelfence demo` makes them, with an admin listener on a
    free port, so that a demo another process runs cannot keep this one from starting."""
    from modelfence.config import ServerSettings
    from modelfence.demo import prepare

    config = prepare(folder).config
    if "admin_listen" in ServerSettings.model_fields:
        doc = yaml.safe_load(config.read_text())
        doc["server"]["admin_listen"] = f"127.0.0.1:{free_port()}"
        config.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    home = tmp_path_factory.mktemp("demo-home")
    log = home / "demo.log"
    port = free_port()
    own_admin_port(home / "demo")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelfence", "demo", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "MODELFENCE_HOME": str(home), "COLUMNS": "400",
                 "PYTHONUNBUFFERED": "1"})
    try:
        key = ""
        deadline = time.monotonic() + 120
        while not key and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"Bearer (mf_[A-Za-z0-9_\-]+)", log.read_text(errors="replace"))
            key = found.group(1) if found else ""
            time.sleep(0.2)
        assert key, log.read_text(errors="replace")[-3000:]
        wait_http(f"http://127.0.0.1:{port}/v2/health/live", proc=None)
        yield Demo(port, key, log)
    finally:
        stop_process(proc)


async def test_hostile_inputs_against_the_demo(demo: Demo) -> None:
    problems = await run_probes(demo.port, ["digits"], demo.key)
    assert problems == [], "\n".join(problems)
    answer = await send(demo.port, request_bytes(Probe("valid", VALID), demo.port, "digits",
                                                 demo.key))
    assert answer is not None and answer.status == 200  # still serving
    assert_clean_log(demo.log.read_text(errors="replace"))


# -- a gateway in front of MLServer -------------------------------------------------------------


@pytest.mark.mlserver
async def test_hostile_inputs_against_a_gateway_in_front_of_mlserver(
        tmp_path: Path, mlserver: MLServer) -> None:
    logged_before = mlserver.log_size()  # the server is shared: read only this test's share
    raw = upstream_model("digits-raw", mlserver.url, upstream="digits")
    raw["backend"].pop("probabilities_output")
    gw = Gateway(tmp_path / "gw", [upstream_model("digits", mlserver.url), raw]).start()
    try:
        problems = await run_probes(gw.port, ["digits", "digits-raw"], gw.key())
        assert problems == [], "\n".join(problems)
        for model in ("digits", "digits-raw"):
            answer = await send(gw.port, request_bytes(Probe("valid", VALID), gw.port, model,
                                                       gw.key()))
            assert answer is not None and answer.status == 200
    finally:
        gw.stop()
    assert_clean_log(gw.log.read_text(errors="replace"))
    assert "Traceback" not in mlserver.log_since(logged_before)  # nothing crashed it

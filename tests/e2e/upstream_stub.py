"""A tiny, controllable Open Inference Protocol v2 server for end-to-end tests.

It runs aiohttp.web on its own event loop in a thread, on a free loopback port, so a
test can look at what the gateway actually sent. The behaviour is chosen by the
*upstream model name* in the URL, so one stub serves every failure at once and a
gateway points a model at a mode with `backend.upstream_model`:

==============  ===================================================================
``ok``          a normal answer; ``predict_proba`` [n, 10] FP64 if asked for, else ``predict``
``slow``        answers normally, but only after `slow_s` seconds
``reject``      422 ``{"error": REJECT_MESSAGE}`` (MLServer's style)
``detail``      400 ``{"detail": [...]}`` (FastAPI's validation style)
``missing``     404 ``{"error": "Model missing not found"}``
``internals``   404 naming its own model name, address and files (``INTERNALS_MESSAGE``)
``overloaded``  429 with ``Retry-After: 7``
``crash``       500 with a raw Python traceback as a text body (as MLServer does)
``garbage``     200 with an HTML body, not JSON
``not-oip``     200 with JSON that is not an inference response
``no-proba``    200 with a valid response lacking the requested output
``big``         a normal answer padded to about 1 MiB, sent chunked in pieces a little apart
``redirect``    307 to ``ok``'s infer URL (a gateway must not follow it)
==============  ===================================================================

``GET /v2/models/{mode}`` publishes input metadata (64 FP32 features), and
``GET /v2/models/{mode}/ready`` is always 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

REJECT_MESSAGE = "input-0: the upstream refuses this tensor"
#: What mode ``internals`` says: its model name (``{mode}``), address and files.
INTERNALS_MESSAGE = ("Model {mode} not found at http://10.20.30.40:8080/v2/models/{mode} "
                     "(repository /srv/models/{mode}/model.onnx on node triton-7.cluster.local"
                     ":8001)")
#: Text of the crash body that must never reach a gateway client.
TRACEBACK_SECRETS = ("Traceback (most recent call last)", "/srv/internal/models/digits.py",
                     "SECRET_INTERNAL_DETAIL", "db_password")
CRASH_BODY = (
    "Traceback (most recent call last):\n"
    '  File "/srv/internal/models/digits.py", line 42, in predict\n'
    "    conn = connect(db_password='hunter2')\n"
    "ValueError: SECRET_INTERNAL_DETAIL: X has 63 features, but LogisticRegression "
    "is expecting 64 features as input.\n"
)
FEATURES = 64
BIG_PADDING = 1024 * 1024
CLASSES = 10


def stub_probabilities(rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The probabilities mode ``ok`` answers for `rows` [n, 64]: deterministic, rows sum to 1."""
    raw: np.ndarray[Any, Any] = np.asarray(rows, dtype=np.float64)[:, :CLASSES] + 0.05
    return np.asarray(raw / raw.sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class Received:
    """One request as the stub saw it."""

    method: str
    path: str
    content_type: str
    body: Any  # decoded JSON, or None
    traceparent: str | None = None  # the W3C trace context the gateway sent, if any


class UpstreamStub:
    """Start with `start()` (or as a context manager); `url` is its base address."""

    def __init__(self, *, slow_s: float = 3.0) -> None:
        self.slow_s = slow_s
        self.received: list[Received] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def infer_requests(self, mode: str) -> list[Received]:
        path = f"/v2/models/{mode}/infer"
        return [r for r in list(self.received) if r.path == path]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, timeout_s: float = 10.0) -> UpstreamStub:
        self._thread = threading.Thread(target=self._run, name="upstream-stub", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise TimeoutError(f"upstream stub did not start within {timeout_s} s")
        if self._error is not None:
            raise RuntimeError("upstream stub failed to start") from self._error
        return self

    def stop(self, *, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"upstream stub did not stop within {timeout_s} s")
        self._sock.close()

    def __enter__(self) -> UpstreamStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start() or visible through stop()
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v2/health/live", self._live)
        app.router.add_get("/v2/health/ready", self._live)
        app.router.add_get("/v2/models/{mode}", self._metadata)
        app.router.add_get("/v2/models/{mode}/ready", self._live)
        app.router.add_post("/v2/models/{mode}/infer", self._infer)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.SockSite(runner, self._sock).start()
            self._started.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    # -- handlers ----------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.received.append(Received(request.method, request.path,
                                      request.headers.get("Content-Type", ""), body,
                                      request.headers.get("traceparent")))
        return body

    async def _live(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"live": True, "ready": True})

    async def _metadata(self, request: web.Request) -> web.Response:
        await self._record(request)
        mode = request.match_info["mode"]
        return web.json_response({
            "name": mode, "versions": [], "platform": "stub",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}],
            "outputs": [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, CLASSES]}],
        })

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        mode = request.match_info["mode"]
        if mode == "slow":
            assert self._stopping is not None
            # released early when the stub stops, so shutdown never waits on it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.slow_s)
            return _answer(mode, body)
        if mode == "reject":
            return web.json_response({"error": REJECT_MESSAGE}, status=422)
        if mode == "detail":
            return web.json_response({"detail": [{"loc": ["body", "inputs"],
                                                  "msg": "field required"}]}, status=400)
        if mode == "missing":
            return web.json_response({"error": "Model missing not found"}, status=404)
        if mode == "unauthorized":
            return web.json_response({"error": "invalid upstream token"}, status=401)
        if mode == "internals":
            return web.json_response({"error": INTERNALS_MESSAGE.format(mode=mode)}, status=404)
        if mode == "overloaded":
            return web.json_response({"error": "too many requests"}, status=429,
                                     headers={"Retry-After": "7"})
        if mode == "crash":
            return web.Response(text=CRASH_BODY, status=500, content_type="text/plain")
        if mode == "redirect":
            raise web.HTTPTemporaryRedirect("/v2/models/ok/infer")
        if mode == "garbage":
            return web.Response(text="<html><body>502 Bad Gateway (nginx)</body></html>",
                                status=200, content_type="text/html")
        if mode == "not-oip":
            return web.json_response({"hello": "world", "outputs": "none"})
        if mode == "no-proba":
            return _answer(mode, body, proba=False)
        if mode == "big":
            return await _in_pieces(request, _answer(mode, body, padding=BIG_PADDING))
        return _answer(mode, body)


async def _in_pieces(request: web.Request, answer: web.Response, pieces: int = 4
                    ) -> web.StreamResponse:
    """Send `answer` with chunked encoding, in `pieces` writes 20 ms apart (as a slow network
    or a streaming server would), so a client must read to the end to get it whole."""
    body = answer.body
    assert isinstance(body, bytes)
    out = web.StreamResponse(status=answer.status, headers={"Content-Type": "application/json"})
    out.enable_chunked_encoding()
    await out.prepare(request)
    step = -(-len(body) // pieces)
    for i in range(0, len(body), step):
        await out.write(body[i:i + step])
        await asyncio.sleep(0.02)
    await out.write_eof()
    return out


def _answer(mode: str, body: Any, *, proba: bool = True, padding: int = 0) -> web.Response:
    """An MLServer-like answer: `predict_proba` if asked for (and allowed), else `predict`."""
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    p = stub_probabilities(x)
    asked = {o.get("name") for o in body.get("outputs") or []}
    if proba and "predict_proba" in asked:
        out = {"name": "predict_proba", "shape": list(p.shape), "datatype": "FP64",
               "parameters": {"content_type": "np"}, "data": p.ravel().tolist()}
    else:
        out = {"name": "predict", "shape": [len(p)], "datatype": "INT64",
               "data": np.argmax(p, axis=1).tolist()}
    params = {"padding": "x" * padding} if padding else {}
    return web.json_response({"model_name": mode, "id": "stub-id", "parameters": params,
                              "outputs": [out]})

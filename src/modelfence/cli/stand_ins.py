"""Stand-in model servers for `modelfence example`: what an example's upstream would be.

An example that fronts a KServe/MLServer model or a vLLM endpoint needs that server to
answer; a newcomer has neither. These speak just enough of each protocol for the gateway
(health, metadata, infer; chat and text completions, streamed or not), on loopback, in a
thread of the example's own process. The OIP one answers a fixed random linear model's
softmax, the OpenAI one a canned sentence: they show the gateway at work, nothing more.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

ANSWER = "This answer comes from the example's stand-in model server."


@dataclass(frozen=True)
class OipModel:
    """One model of the OIP stand-in: its name there, input width, classes, output name."""

    name: str
    features: int
    classes: int
    output: str = "predict_proba"

    def probabilities(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        weights = np.random.default_rng(len(self.name)).normal(size=(self.features,
                                                                     self.classes))
        z = np.asarray(x, dtype=np.float64).reshape(-1, self.features) @ weights
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return np.asarray(p / p.sum(axis=1, keepdims=True))


class StandIn:
    """An aiohttp app on a free loopback port, served from a daemon thread."""

    def __init__(self, app: web.Application, description: str) -> None:
        self.description = description
        self._app = app
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True,
                                        name=f"stand-in {description}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StandIn:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the stand-in {self.description} did not start")
        return self

    async def _serve(self) -> None:
        runner = web.AppRunner(self._app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, self._sock).start()
        self._ready.set()
        await asyncio.Event().wait()  # until the process ends (a daemon thread)


def oip_stand_in(models: list[OipModel]) -> StandIn:
    by_name = {m.name: m for m in models}

    def model_of(request: web.Request) -> OipModel:
        model = by_name.get(request.match_info["model"])
        if model is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "model not found"}),
                                   content_type="application/json")
        return model

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True, "ready": True})

    async def metadata(request: web.Request) -> web.Response:
        m = model_of(request)
        return web.json_response({
            "name": m.name, "versions": [], "platform": "stand-in",
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, m.features]}],
            "outputs": [{"name": m.output, "datatype": "FP64", "shape": [-1, m.classes]}]})

    async def infer(request: web.Request) -> web.Response:
        m = model_of(request)
        body = await request.json()
        tensor = body["inputs"][0]
        p = m.probabilities(np.asarray(tensor["data"], dtype=np.float64))
        return web.json_response({"model_name": m.name, "outputs": [{
            "name": m.output, "datatype": "FP64", "shape": list(p.shape),
            "data": p.ravel().tolist()}]})

    app = web.Application()
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", live)
    app.router.add_get("/v2/models/{model}", metadata)
    app.router.add_get("/v2/models/{model}/ready", live)
    app.router.add_post("/v2/models/{model}/infer", infer)
    return StandIn(app, "OIP model server (" + ", ".join(sorted(by_name)) + ")")


def openai_stand_in(api_key: str | None) -> StandIn:
    """Chat and text completions with a canned answer; refuses a wrong upstream key."""

    def usage(body: dict[str, Any]) -> dict[str, int]:
        prompt = len(json.dumps(body.get("messages") or body.get("prompt") or "").split())
        done = len(ANSWER.split())
        return {"prompt_tokens": prompt, "completion_tokens": done,
                "total_tokens": prompt + done}

    async def complete(request: web.Request) -> web.StreamResponse:
        if api_key is not None and request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": {"message": "invalid api key",
                                                "type": "invalid_request_error",
                                                "code": "invalid_api_key"}}, status=401)
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        head = {"id": "stand-in", "created": int(time.time()), "model": body.get("model")}
        if not body.get("stream"):
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": ANSWER},
                 "finish_reason": "stop"} if chat else
                {"index": 0, "text": ANSWER, "finish_reason": "stop"})
            return web.json_response({**head, "object": "chat.completion" if chat else
                                      "text_completion", "choices": [choice],
                                      "usage": usage(body)})
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        words = ANSWER.split(" ")
        for i, word in enumerate(words):
            text = word if i == 0 else f" {word}"
            last = i == len(words) - 1
            choice = ({"index": 0, "delta": {"content": text}} if chat else
                      {"index": 0, "text": text})
            choice["finish_reason"] = "stop" if last else None
            chunk: dict[str, Any] = {**head, "object": "chat.completion.chunk" if chat else
                                     "text_completion", "choices": [choice]}
            if last:
                chunk["usage"] = usage(body)
            await out.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_post("/v1/completions", complete)
    return StandIn(app, "OpenAI-compatible LLM server")

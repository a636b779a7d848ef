"""An OpenAI-speaking upstream stub on loopback, for the LLM routes' end-to-end tests
(the `stub` fixture in conftest.py starts one per test module)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

from aiohttp import web

WORDS = ["Hello", " from", " the", " stub", " model", "."]


# -- the upstream stub --------------------------------------------------------------------------

class OpenAiStub:
    """An OpenAI-speaking upstream on loopback; the `model` field picks its behaviour.

    `slow`: a stream of 200 chunks 0.1 s apart (to see a cancel); `fail`: 400 error;
    `no-usage`: never reports usage; anything else: a normal answer (streams 0.15 s apart).
    """

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.cancelled = threading.Event()
        self.slow_chunks_sent = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAiStub:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._sock.close()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embed)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, self._sock).start()
        self._started.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        body["_path"] = request.path
        body["_auth"] = request.headers.get("Authorization")
        self.received.append(body)
        model = body["model"]
        if model == "fail":
            return web.json_response({"error": {"message": "prompt too long for stub",
                                                "type": "invalid_request_error",
                                                "code": None}}, status=400)
        chat = request.path.endswith("/chat/completions")
        usage = {"prompt_tokens": 11, "completion_tokens": len(WORDS), "total_tokens": 17}
        answer = "".join(WORDS)
        if model == "leaky":  # a model talked into reciting its instructions
            system = " ".join(str(m["content"]) for m in body["messages"]
                              if m["role"] == "system")
            answer = f"Sure! My instructions are: {system} Anything else?"
        if not body.get("stream"):
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": answer},
                 "finish_reason": "stop"} if chat else
                {"index": 0, "text": "".join(WORDS), "finish_reason": "stop"})
            doc = {"id": "x1", "object": "chat.completion" if chat else "text_completion",
                   "created": 1, "model": model, "choices": [choice]}
            if model != "no-usage":
                doc["usage"] = usage
            return web.json_response(doc)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        words = WORDS * 40 if model == "slow" else WORDS
        if model == "leaky":  # 3-character deltas: leaks split across chunks
            words = [answer[i:i + 3] for i in range(0, len(answer), 3)]
        try:
            for i, word in enumerate(words):
                chunk = {"id": "x1", "object": "chat.completion.chunk", "created": 1,
                         "model": model, "choices": [
                             {"index": 0, "delta": {"content": word},
                              "finish_reason": "stop" if i == len(words) - 1 else None}]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if model == "slow":
                    self.slow_chunks_sent += 1
                await asyncio.sleep(0.1 if model == "slow" else 0.01 if model == "leaky"
                                    else 0.15)
            options = body.get("stream_options") or {}
            if options.get("include_usage") and model != "no-usage":
                last = {"id": "x1", "object": "chat.completion.chunk", "created": 1,
                        "model": model, "choices": [], "usage": usage}
                await resp.write(b"data: " + json.dumps(last).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.cancelled.set()
            raise
        return resp

    async def _embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                     for i in range(len(inputs))],
            "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}})


SYSTEM = ("You are the billing assistant of Example Corp. Refund limit is 250 euros; escalate "
          "anything larger to the finance team without telling the customer the limit.")

"""A fast fake OpenAI-compatible upstream for the LLM benchmark, on loopback.

A bare asyncio `Protocol` speaking just enough HTTP/1.1 (keep-alive, Content-Length or
chunked request bodies): no framework, so that its own cost stays far below what the
gateways under test add.

- `POST /v1/chat/completions` (and `/v1/completions`): a fixed small completion with
  `usage`; with `"stream": true`, `--chunks` SSE events of one word each, `--interval-ms`
  apart (the first one at once), then a usage-only event and `data: [DONE]`, sent as a
  chunked response, one HTTP chunk per event.
- `GET /v1/models`, `GET /health`: 200, for readiness probes.

Run: ``python bench/llm_upstream.py --port 9000 --chunks 20 --interval-ms 1``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from typing import Any

import orjson

WORDS = [" lorem", " ipsum", " dolor", " sit", " amet", ",", " consectetur", " adipiscing",
         " elit", "."]
ANSWER = "The quick brown fox jumps over the lazy dog."
USAGE = {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22}
MAX_BODY = 1 << 20


def _completion(model: str, chat: bool) -> bytes:
    choice: dict[str, Any] = (
        {"index": 0, "message": {"role": "assistant", "content": ANSWER},
         "finish_reason": "stop", "logprobs": None} if chat else
        {"index": 0, "text": ANSWER, "finish_reason": "stop", "logprobs": None})
    return orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion" if chat
                         else "text_completion", "created": int(time.time()), "model": model,
                         "choices": [choice], "usage": USAGE})


def _event(doc: Any) -> bytes:
    data = b"data: " + orjson.dumps(doc) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)  # one HTTP chunk per SSE event


def _stream_events(model: str, chat: bool, chunks: int) -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk" if chat
            else "text_completion", "created": int(time.time()), "model": model}
    out = []
    for i in range(chunks):
        word = WORDS[i % len(WORDS)]
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        choice: dict[str, Any] = {"index": 0, **({"delta": delta} if chat else {"text": word}),
                                  "finish_reason": "stop" if i == chunks - 1 else None}
        out.append(_event({**base, "choices": [choice]}))
    out.append(_event({**base, "choices": [], "usage": USAGE}))
    out.append(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
    return out


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")


def _response(status: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype
            + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


NOT_FOUND = _response(b"404 Not Found", b'{"error":{"message":"not found","type":"x"}}')
BAD = _response(b"400 Bad Request", b'{"error":{"message":"bad request","type":"x"}}')
MODELS = _response(b"200 OK", b'{"object":"list","data":[]}')


class Upstream(asyncio.Protocol):
    """One connection: requests handled one at a time, in order (keep-alive)."""

    def __init__(self, chunks: int, interval_s: float) -> None:
        self.chunks = chunks
        self.interval_s = interval_s
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a stream is being written: later requests wait in the buffer
        self.answers: dict[tuple[str, bool], bytes] = {}  # (model, chat): a whole response
        self.streams: dict[tuple[str, bool], list[bytes]] = {}  # (model, chat): its events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        while self.transport is not None and not self.busy:
            request = self._next_request()
            if request is None:
                return
            method, path, body, close = request
            self._answer(method, path, body)
            if close and not self.busy:
                self.transport.close()

    def _next_request(self) -> tuple[bytes, bytes, bytes, bool] | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).split(b"\r\n")
        method, path, _ = [*head[0].split(b" ", 2), b"", b""][:3]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = bytearray()
            pos = start
            while True:
                eol = self.buffer.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(self.buffer[pos:eol]).split(b";")[0], 16)
                if len(self.buffer) < eol + 2 + size + 2:
                    return None
                body += self.buffer[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            consumed = pos
        else:
            length = int(headers.get(b"content-length", b"0"))
            if length > MAX_BODY:
                length = 0
            if len(self.buffer) < start + length:
                return None
            body = self.buffer[start:start + length]
            consumed = start + length
        del self.buffer[:consumed]
        close = headers.get(b"connection", b"").lower() == b"close"
        return method, path.split(b"?")[0], bytes(body), close

    def _answer(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        if method == b"GET" and path in (b"/v1/models", b"/health", b"/"):
            self.transport.write(MODELS)
            return
        if method != b"POST" or path not in (b"/v1/chat/completions", b"/v1/completions"):
            self.transport.write(NOT_FOUND)
            return
        try:
            doc = orjson.loads(body)
            model = str(doc.get("model", "model"))
            stream = bool(doc.get("stream"))
        except (orjson.JSONDecodeError, AttributeError):
            self.transport.write(BAD)
            return
        chat = path == b"/v1/chat/completions"
        if not stream:
            answer = self.answers.get((model, chat))
            if answer is None:
                answer = self.answers[model, chat] = _response(b"200 OK",
                                                               _completion(model, chat))
            self.transport.write(answer)
            return
        events = self.streams.get((model, chat))
        if events is None:
            events = self.streams[model, chat] = _stream_events(model, chat, self.chunks)
        self.busy = True
        task = asyncio.ensure_future(self._stream(events))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _stream(self, events: list[bytes]) -> None:
        try:
            if self.transport is None:
                return
            self.transport.write(STREAM_HEAD + events[0])
            for event in events[1:]:
                if self.interval_s > 0:
                    await asyncio.sleep(self.interval_s)
                if self.transport is None:
                    return  # the client went away
                self.transport.write(event)
        finally:
            self.busy = False
        if self.buffer:
            self._serve()


async def serve(host: str, port: int, chunks: int, interval_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(chunks, interval_s), host, port,
                                      backlog=2048, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--chunks", type=int, default=20, help="content events per stream")
    p.add_argument("--interval-ms", type=float, default=1.0,
                   help="pause between stream events (0: all at once)")
    args = p.parse_args(argv)
    if args.chunks < 1:
        p.error("--chunks must be >= 1")
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.host, args.port, args.chunks, args.interval_ms / 1000))


if __name__ == "__main__":
    main()

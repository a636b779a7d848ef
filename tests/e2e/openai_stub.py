"""An OpenAI-speaking upstream stub on loopback, for the LLM routes' end-to-end tests
(the `stub` fixture in conftest.py starts one per test module)."""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import re
import socket
import threading
from typing import Any

from aiohttp import web

WORDS = ["Hello", " from", " the", " stub", " model", "."]


# -- the upstream stub --------------------------------------------------------------------------

class OpenAiStub:
    """An OpenAI-speaking upstream on loopback; the `model` field picks its behaviour.

    `slow`: a stream of 200 chunks 0.1 s apart (to see a cancel); `fail`: 400 error;
    `no-usage`: never reports usage; `leaky` recites its system prompt (`leaky-if-asked`: when
    the last message mentions "instructions"); `recite-FORM` recites it
    disguised (`recite`); anything else: a normal answer (streams 0.15 s apart).
    A suffix picks how stream events are framed (all legal SSE): `+multiline` (the JSON
    indented over several `data:` lines), `+cr` (bare CR line endings), `+crlf`; `+raw`
    sends one event of data that is not JSON, `+error` an error event after the first chunk.
    A stream asked for `logprobs` carries them.
    """

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.cancelled = threading.Event()
        self.slow_chunks_sent = 0
        self.redirected = 0  # redirects answered
        self.elsewhere = 0   # requests that followed one
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
        app.router.add_post("/v1/elsewhere", self._elsewhere)
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
        body["_traceparent"] = request.headers.get("traceparent")
        # the gateway's end of the connection: the same port twice is one reused connection
        body["_peer"] = request.transport.get_extra_info("peername") if request.transport else None
        self.received.append(body)
        model, _, framing = body["model"].partition("+")
        if model == "fail":
            return web.json_response({"error": {"message": "prompt too long for stub",
                                                "type": "invalid_request_error",
                                                "code": None}}, status=400)
        if model.startswith("fail-"):  # fail-<status>: an error naming the upstream model
            status = int(model.removeprefix("fail-"))  # its address and files (429: Retry-After)
            return web.json_response(
                {"error": {"message": f"model {body['model']} at {request.url} failed "
                                      f"(weights /srv/models/{body['model']}/model.safetensors)",
                           "type": "server_error", "code": None}},
                status=status, headers={"Retry-After": "7"} if status == 429 else None)
        if model == "redirect":  # somewhere else: a gateway must not follow
            self.redirected += 1
            raise web.HTTPTemporaryRedirect(f"{request.url.with_path('/v1/elsewhere')}")
        chat = request.path.endswith("/chat/completions")
        usage = {"prompt_tokens": 11, "completion_tokens": len(WORDS), "total_tokens": 17}
        answer = "".join(WORDS)
        if model == "leaky-if-asked" and "instructions" in str(body["messages"][-1]["content"]):
            model = "leaky"  # recites only when the last message asks for its instructions
        if model == "leaky":  # a model talked into reciting its instructions
            system = " ".join(str(m["content"]) for m in body["messages"]
                              if m["role"] == "system")
            answer = f"Sure! My instructions are: {system} Anything else?"
        if model.startswith("recite-"):  # ... in a disguise: recite-base64, recite-leet, ...
            system = " ".join(str(m["content"]) for m in body["messages"]
                              if m["role"] == "system")
            answer = recite(model.removeprefix("recite-"), system)
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
        if model == "leaky" or model.startswith("recite-"):  # 3-character deltas: leaks
            words = [answer[i:i + 3] for i in range(0, len(answer), 3)]  # split over chunks
        try:
            for i, word in enumerate(words):
                chunk = {"id": "x1", "object": "chat.completion.chunk", "created": 1,
                         "model": body["model"], "choices": [
                             {"index": 0, "delta": {"content": word},
                              "finish_reason": "stop" if i == len(words) - 1 else None}]}
                if not chat:  # a completions stream: each chunk's choice carries `text`
                    chunk["object"] = "text_completion"
                    chunk["choices"][0]["text"] = chunk["choices"][0].pop("delta")["content"]
                if body.get("logprobs"):
                    chunk["choices"][0]["logprobs"] = {"content": [
                        {"token": word, "logprob": -0.5, "top_logprobs": []}]}
                if framing == "raw" and i == 1:
                    await resp.write(b"data: " + word.encode() + b" <not json>\n\n")
                if framing == "error" and i == 1:  # as vLLM reports a failure mid-stream
                    await resp.write(_frame({"error": {
                        "message": f"model {body['model']} ran out of memory",
                        "type": "internal_error", "code": 500}}, ""))
                    return resp
                await resp.write(_frame(chunk, framing))
                if model == "slow":
                    self.slow_chunks_sent += 1
                await asyncio.sleep(0.1 if model == "slow" else 0.01 if model == "leaky"
                                    else 0.002 if model.startswith("recite-") else 0.15)
            options = body.get("stream_options") or {}
            if options.get("include_usage") and model != "no-usage":
                last = {"id": "x1", "object": "chat.completion.chunk", "created": 1,
                        "model": model, "choices": [], "usage": usage}
                await resp.write(_frame(last, framing))
            await resp.write(_frame("[DONE]", framing))
        except (ConnectionResetError, asyncio.CancelledError):
            self.cancelled.set()
            raise
        return resp

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.elsewhere += 1
        return web.json_response({"id": "x1", "object": "chat.completion", "created": 1,
                                  "model": "elsewhere", "choices": [
                                      {"index": 0, "finish_reason": "stop", "message": {
                                          "role": "assistant", "content": "followed"}}]})

    async def _embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                     for i in range(len(inputs))],
            "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)}})


_FRENCH = {"you": "vous", "are": "êtes", "the": "le", "of": "de", "and": "et", "never": "jamais",
           "code": "code", "is": "est", "give": "donnez", "this": "ce", "to": "à", "a": "un",
           "customer": "client", "internal": "interne", "reference": "référence",
           "reveal": "révélez", "or": "ou", "these": "ces", "instructions": "instructions"}


_PARAPHRASE = {  # tests/e2e/test_llm_leaks.py's RULES, retold
    "Send hardware problems to the support team.":
        "I should forward any hardware issue to the support group.",
    "Do not install software for staff under any circumstances.":
        "I am not allowed to set up programs for employees.",
    "Never discuss the salaries of employees.": "Staff pay is a topic I must avoid.",
    "Keep every answer brief and friendly.": "My replies ought to be short and warm.",
}


def recite(form: str, system: str) -> str:
    """The system prompt as a model talked into disguising it writes it (`form`: base64,
    hex, rot13, reversed, spaced, leet, french, acrostic (of the prompt's code), paraphrase,
    persona
    (only its "You are" sentence, as a model asked who it is answers)), the reference line
    the gateway puts first left out: the gateway must see through the disguise itself."""
    body = re.sub(r"^Internal reference: \S+ Never reveal[^\n]*\n*", "", system)
    if form == "base64":
        text = base64.b64encode(body.encode()).decode()
    elif form == "hex":
        text = body.encode().hex()
    elif form == "rot13":
        text = codecs.encode(body, "rot13")
    elif form == "reversed":
        text = body[::-1]
    elif form == "spaced":
        text = " ".join(body)
    elif form == "leet":
        text = body.lower().translate(str.maketrans("aeiost", "431057"))
    elif form == "french":
        text = re.sub(r"[A-Za-z]+", lambda m: _FRENCH.get(m.group().lower(), m.group()), body)
    elif form == "acrostic":
        code = re.search(r"\b[A-Z]+-\d+\b", body)
        text = "\n".join(f"{c} is how this line starts"
                         for c in (code.group() if code else "").replace("-", ""))
    elif form == "paraphrase":  # a retelling in other words, sentence by sentence
        text = " ".join(_PARAPHRASE.get(sentence.strip(), sentence.strip())
                        for sentence in re.split(r"(?<=[.!?])\s+", body))
    elif form == "persona":
        who = re.search(r"You are [^.]*\.", body)
        return (who.group().replace("You are", "I am", 1) if who else "I am a bot.") + \
            " How can I help you today?"
    else:
        raise ValueError(f"unknown form {form!r}")
    return f"Sure, here it is:\n\n{text}\n\nAnything else?"


def _frame(doc: Any, framing: str) -> bytes:
    """One SSE event carrying `doc` (or the literal [DONE]), framed as `framing` says."""
    data = doc if isinstance(doc, str) else json.dumps(doc)
    if framing == "multiline":  # each line of indented JSON its own data: line
        text = data if isinstance(doc, str) else json.dumps(doc, indent=1)
        return "".join(f"data: {line}\n" for line in text.split("\n")).encode() + b"\n"
    if framing == "cr":
        return f"data: {data}\r\r".encode()
    if framing == "crlf":
        return f": keep-alive\r\ndata: {data}\r\n\r\n".encode()
    return f"data: {data}\n\n".encode()


SYSTEM = ("You are the billing assistant of Example Corp. Refund limit is 250 euros; escalate "
          "anything larger to the finance team without telling the customer the limit.")

"""The LLM corpus's in-process harness agrees with a real gateway: a slice of the DEV half
(honest users, one of them asking who the assistant is, every verbatim system-prompt thief,
the fast prober) replayed with the official `openai` client through `modelfence serve` in
the recommended configuration (llm/recommended.py, examples/llm-policy.cedar) against the
corpus's complying upstream on loopback, and through `modelfence.llm.corpus`'s in-process
gateway: same status per request, same answers, same leaks stopped, same bands, same alerts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from modelfence.llm import recommended
from modelfence.llm.corpus import Caller, ComplyingUpstream, Judge, build, cut, tokens
from modelfence.llm.corpus.engine import CachingEmbedder, Outcome
from modelfence.llm.corpus.engine import Gateway as InProcess
from modelfence.llm.corpus.harness import replay

from ..support import Gateway

pytest.importorskip("transformers")  # similarity screening and distillation: the `llm` extra
ROOT = Path(__file__).parents[2]


class ComplyingStub:
    """The corpus's complying upstream behind the OpenAI API, streaming in 5-character
    deltas (or answering whole), with usage."""

    def __init__(self, upstream: ComplyingUpstream) -> None:
        self.up = upstream
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def start(self) -> ComplyingStub:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._sock.close()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._answer)
        app.router.add_post("/v1/completions", self._answer)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, self._sock).start()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        n, cap = int(body.get("n") or 1), int(body.get("max_tokens") or 1024)
        texts = [cut(self.up.answer(body["messages"], choice=i) if chat else
                     self.up.complete(body["prompt"], choice=i), cap)[0] for i in range(n)]
        usage = {"prompt_tokens": 10, "completion_tokens": sum(tokens(t) for t in texts),
                 "total_tokens": 10 + sum(tokens(t) for t in texts)}
        if not body.get("stream"):
            choices = [({"index": i, "message": {"role": "assistant", "content": t},
                         "finish_reason": "stop"} if chat else
                        {"index": i, "text": t, "finish_reason": "stop"})
                       for i, t in enumerate(texts)]
            return web.json_response({"id": "c", "object": "chat.completion", "created": 1,
                                      "model": body["model"], "choices": choices,
                                      "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, text in enumerate(texts):
            pieces = [text[k:k + 5] for k in range(0, len(text), 5)] or [""]
            for k, piece in enumerate(pieces):
                last = k == len(pieces) - 1
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                         "model": body["model"], "choices": [
                             {"index": i, "delta": {"content": piece},
                              "finish_reason": "stop" if last else None}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            tail = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                    "model": body["model"], "choices": [], "usage": usage}
            await resp.write(f"data: {json.dumps(tail)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


def _slice() -> tuple[Any, list[Caller]]:
    """A few honest single-user tenants (one asks who the assistant is), every verbatim
    thief and the fast prober's first 12 probes, re-timed one second apart in one order
    (the gateway runs them in real time; evidence half-lives are hours, so seconds match)."""
    half = build("dev")
    honest = [c for c in half.of("honest") if c.group == "tenant-1"
              and c.family in ("short", "self")][:3]
    thieves = [c for c in half.of("thief") if c.form == "verbatim"]
    prober = next(c for c in half.of("prober") if c.family == "fast")
    chosen = [*(dataclasses.replace(c, requests=c.requests[:4]) for c in honest), *thieves,
              dataclasses.replace(prober, requests=prober.requests[:12])]
    order = sorted((r for c in chosen for r in c.requests), key=lambda r: (r.t, r.caller))
    at = {id(r): 9 * 3600.0 + i for i, r in enumerate(order)}
    out = []
    for c in chosen:
        name = c.name.replace("/", ".")
        tenant = (c.tenant or name).replace("/", ".")
        reqs = tuple(dataclasses.replace(r, t=at[id(r)], caller=name,
                                         principal=r.principal.replace("/", "."),
                                         tenant=tenant, conversation=r.conversation)
                     for r in c.requests)
        out.append(dataclasses.replace(c, name=name, tenant=tenant, requests=reqs))
    return half, out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    half, callers = _slice()
    stub = ComplyingStub(ComplyingUpstream({s.text: s.secret for s in half.systems})).start()
    folder = tmp_path_factory.mktemp("llmcorpus")
    shutil.copy(ROOT / "examples" / "llm-policy.cedar", folder / "policy.cedar")
    models = [recommended.llm_model(s.name, stub.url, public=s.persona).model_dump(
        mode="json", exclude_none=True) for s in half.systems]
    llm = {"models": models, "monitor": recommended.MONITOR}
    gw = Gateway(folder, [], extra={"llm": llm, "policy": {"files": ["policy.cedar"]}}).start()
    try:
        yield {"half": half, "callers": callers, "gw": gw}
    finally:
        gw.stop()
        stub.stop()


def _key(gw: Gateway, c: Caller) -> str:
    """A key minted through the admin API (the CLI would start a process per key)."""
    doc = json.dumps({"principal": c.principals[0], "tenant": c.tenant,
                      "models": [c.model]}).encode()
    req = urllib.request.Request(f"{gw.admin_url}/admin/keys", data=doc, method="POST",  # noqa: S310
                                 headers={"Authorization": f"Bearer {gw.admin_token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 (loopback)
        return str(json.loads(r.read())["key"])


def _through_gateway(gw: Gateway, half: Any, callers: list[Caller]
                     ) -> dict[tuple[str, int], dict[str, Any]]:
    """Every request with the openai client, in the slice's order; per (caller, index):
    status, what the client received, and whether the answer was stopped."""
    import openai

    keys = {c.name: _key(gw, c) for c in callers}
    order = sorted(((r, i) for c in callers for i, r in enumerate(c.requests)),
                   key=lambda ri: ri[0].t)
    history: dict[str, list[tuple[str, str]]] = {}
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for r, i in order:
        system = half.system(r.model).text if r.kind == "chat" else None
        conv = history.setdefault(r.conversation, []) if r.conversation else []
        body = r.body(system, conv)
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=keys[r.caller],
                               max_retries=0, timeout=30)
        got: dict[str, Any] = {"status": 200, "text": "", "stopped": False}
        try:
            if r.kind == "chat":
                extra = {k: v for k, v in body.items() if k not in ("model", "messages")}
                stream = client.chat.completions.create(model=r.model,
                                                        messages=body["messages"],
                                                        stream=True, **extra)
                for chunk in stream:
                    for choice in chunk.choices:
                        if choice.index == 0:
                            got["text"] += choice.delta.content or ""
                            got["stopped"] |= choice.finish_reason == "content_filter"
            else:
                extra = {k: v for k, v in body.items() if k not in ("model", "prompt")}
                done = client.completions.create(model=r.model, prompt=body["prompt"], **extra)
                got["text"] = done.choices[0].text
        except openai.APIStatusError as exc:
            got["status"] = exc.status_code
        finally:
            client.close()
        if got["status"] == 200 and r.conversation:
            conv.append((r.text, got["text"]))
        out[(r.caller, i)] = got
    return out


def test_the_gateway_agrees_with_the_in_process_harness(world: dict[str, Any]) -> None:
    half, callers, gw = world["half"], world["callers"], world["gw"]
    trace: list[Outcome] = []
    inproc = InProcess(half.systems, embedder=CachingEmbedder())
    harness = replay(half, gateway=inproc, callers=callers, trace=trace)
    index: dict[str, int] = {}
    expected: dict[tuple[str, int], Outcome] = {}
    for o in trace:
        i = index[o.request.caller] = index.get(o.request.caller, -1) + 1
        expected[(o.request.caller, i)] = o
    real = _through_gateway(gw, half, callers)
    assert real.keys() == expected.keys()
    for key, o in expected.items():
        got = real[key]
        assert got["status"] == o.status, (key, o.reason, got)
        if o.status != 200:
            continue
        assert got["stopped"] == o.leaked, (key, got["text"][:200])
        if not o.leaked:
            assert got["text"] == o.delivered[0], key
    by = {c.name: c for c in harness.callers}
    thieves = [c for c in callers if c.population == "thief"]
    for c in thieves:
        judge = Judge(str(c.notes["secret"]), tuple(c.notes["fragments"]), c.form)
        texts = [real[(c.name, i)]["text"] for i in range(len(c.requests))]
        assert judge.found(texts).any is bool(by[c.name].secret_any), c.name
    # the real gateway's bands and alerts are the harness's
    records = gw.audit_records()
    for c in callers:
        bands = [r.get("shaping") for r in records if r.get("principal") == c.principals[0]
                 and r["action"] in ("chat", "completion") and r.get("status") == 200]
        want = [o.band for o in trace if o.request.caller == c.name and o.status == 200]
        assert bands == want, c.name
    alerted = {r.get("principal") for r in records if r["action"] == "alert:monitor"
               and r.get("principal")}
    assert alerted == {c.principals[0] for c in callers if by[c.name].alerts}
    honest = [by[c.name] for c in callers if c.population == "honest"]
    assert honest and not any(h.alerts or h.band_changes or h.refused for h in honest)
    assert any(by[c.name].alerts for c in thieves) and by[callers[-1].name].alerts

"""The LLM benchmark's targets (bench/llm.py): start them, and time requests against them.

- the fake OpenAI-compatible upstream (bench/llm_upstream.py), called directly;
- `modelfence serve` with an `llm:` section at that upstream (one model plain, one with the
  system-prompt canary), a key minted with the CLI, the default SQLite audit log;
- LiteLLM Proxy from its own venv, at the same upstream, with a master_key.

Every server runs one worker and is stopped by the caller's ExitStack (bench/servers.py).
Requests go through aiohttp with keep-alive, one connection, sequentially.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llm_upstream import ANSWER, WORDS
from loadgen import LoadError
from servers import HOST, free_port, spawn, wait_http

MODEL = "bench-llm"
CANARY_MODEL = "bench-llm-canary"
LITELLM_DEFAULT = Path("/tmp/litellm-venv/bin/litellm")  # noqa: S108 (a venv, read only)
SYSTEM_PROMPT = ("You are the support assistant of ACME Corp. Answer politely, in English, and "
                 "never discuss competitor pricing, unreleased products or the internal "
                 "roadmap. Escalate refunds above 500 dollars to a human agent.")
_CONTENT = re.compile(rb'"content": ?"[^"]')  # a delta with some text in it


# -- servers --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where to send the request, with which credentials; `pgid`: the server's processes."""

    name: str
    base: str  # ends in /v1
    headers: dict[str, str]
    model: str
    pgid: int
    log: Path


def start_upstream(stack: ExitStack, folder: Path, chunks: int, interval_ms: float) -> Target:
    port = free_port()
    log = folder / "upstream.log"
    proc = spawn(stack, [sys.executable, str(Path(__file__).with_name("llm_upstream.py")),
                         "--host", HOST, "--port", str(port), "--chunks", str(chunks),
                         "--interval-ms", str(interval_ms)], log)
    url = f"http://{HOST}:{port}"
    wait_http(f"{url}/health", proc, log)
    return Target("direct", f"{url}/v1", {"Authorization": "Bearer sk-unused"}, MODEL,
                  proc.pid, log)


def _src_env(src: Path | None) -> dict[str, str]:
    return {} if src is None else {"PYTHONPATH": str(src)}


def _modelfence(src: Path | None, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "modelfence", *args], capture_output=True,
                            text=True, timeout=120, check=False,
                            env={**os.environ, **_src_env(src)})
    if result.returncode != 0:
        raise RuntimeError(f"modelfence {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stdout}\n{result.stderr}")
    return result.stdout


def start_modelfence(stack: ExitStack, folder: Path, upstream: str, src: Path | None,
                     extra: dict[str, Any] | None = None) -> tuple[Target, Target]:
    """`modelfence serve` with the product's defaults (SQLite audit log, default controls);
    `extra`: top-level config sections added (e.g. `quotas`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "secret").write_text(secrets.token_urlsafe(48))
    port = free_port()
    config = folder / "modelfence.yaml"
    config.write_text(yaml.safe_dump({**(extra or {}),
        "server": {"host": HOST, "port": port, "workers": 1, "admin_listen": None},
        "secret_file": "secret",
        "stores": {"keys": "sqlite:///keys.db"},
        "models": [],
        "llm": {"models": [
            {"name": MODEL, "upstream": upstream},
            {"name": CANARY_MODEL, "upstream": upstream, "upstream_model": MODEL,
             "canary": {"mode": "block"}},
        ]},
    }, sort_keys=False))
    key = json.loads(_modelfence(src, "keys", "create", "--config", str(config), "--principal",
                                 "bench", "--tenant", "bench", "--model", MODEL, "--model",
                                 CANARY_MODEL, "--json"))["key"]
    log = folder / "gateway.log"
    proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config", str(config)],
                 log, _src_env(src))
    url = f"http://{HOST}:{port}"
    wait_http(f"{url}/v2/health/live", proc, log)
    headers = {"Authorization": f"Bearer {key}"}
    return (Target("modelfence", f"{url}/v1", headers, MODEL, proc.pid, log),
            Target("mf+canary", f"{url}/v1", headers, CANARY_MODEL, proc.pid, log))


def start_litellm(stack: ExitStack, folder: Path, litellm: Path, upstream: str) -> Target:
    """LiteLLM Proxy, one worker, master key on, no database, telemetry and callbacks off."""
    folder.mkdir(parents=True, exist_ok=True)
    master_key = "sk-bench-" + secrets.token_hex(16)
    config = folder / "litellm.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": MODEL, "litellm_params": {
            "model": f"openai/{MODEL}", "api_base": upstream, "api_key": "sk-unused"}}],
        "litellm_settings": {"telemetry": False, "set_verbose": False, "drop_params": True},
        "general_settings": {"master_key": master_key, "disable_spend_logs": True},
    }, sort_keys=False))
    port = free_port()
    log = folder / "litellm.log"
    env = {"LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "DISABLE_ADMIN_UI": "True",
           "NO_DOCS": "True", "STORE_MODEL_IN_DB": "False"}  # and no DATABASE_URL
    proc = spawn(stack, [str(litellm), "--config", str(config), "--host", HOST, "--port",
                         str(port), "--num_workers", "1"], log, env)
    url = f"http://{HOST}:{port}"
    wait_http(f"{url}/health/liveliness", proc, log, timeout_s=180)
    return Target("litellm", f"{url}/v1", {"Authorization": f"Bearer {master_key}"}, MODEL,
                  proc.pid, log)


def litellm_version(litellm: Path) -> str:
    out = subprocess.run([str(litellm.parent / "python"), "-c",
                          "from importlib.metadata import version; print(version('litellm'))"],
                         capture_output=True, text=True, check=False, timeout=60)
    return out.stdout.strip() or "unknown"


# -- requests -------------------------------------------------------------------------------

def request_body(model: str, stream: bool) -> bytes:
    doc: dict[str, Any] = {"model": model, "max_tokens": 32, "messages": [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Where is my order?"}]}
    if stream:
        doc["stream"] = True
    return json.dumps(doc, separators=(",", ":")).encode()


def _session(target: Target, connections: int) -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, force_close=False),
        headers={**target.headers, "Content-Type": "application/json"},
        skip_auto_headers=("User-Agent",), timeout=aiohttp.ClientTimeout(total=30))


def streamed_text(data: bytes) -> str:
    """The content deltas of an SSE chat stream, joined; raises unless it ends with [DONE]."""
    text = []
    events = [e for e in data.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
    if not events or events[-1].strip() != b"data: [DONE]":
        raise LoadError(f"the stream did not end with [DONE]: {data[-200:]!r}")
    for event in events[:-1]:
        doc = json.loads(event.removeprefix(b"data:"))
        if "error" in doc:
            raise LoadError(f"error event in the stream: {doc['error']}")
        for choice in doc.get("choices") or ():
            text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


async def check_answers(target: Target, chunks: int) -> None:
    """Both kinds of answer must be right before anything is timed."""
    url = target.base + "/chat/completions"
    async with _session(target, 1) as s:
        async with s.post(url, data=request_body(target.model, False)) as r:
            data = await r.read()
            if r.status != 200:
                raise LoadError(f"{target.name}: {r.status} {data[:300]!r}")
        got = json.loads(data)["choices"][0]["message"]["content"]
        if got != ANSWER:
            raise LoadError(f"{target.name} answered {got!r}, the upstream {ANSWER!r}")
        async with s.post(url, data=request_body(target.model, True)) as r:
            data = await r.read()
            if r.status != 200:
                raise LoadError(f"{target.name} (stream): {r.status} {data[:300]!r}")
        want = "".join(WORDS[i % len(WORDS)] for i in range(chunks))
        if (got := streamed_text(data)) != want:
            raise LoadError(f"{target.name} streamed {got!r}, the upstream {want!r}")


async def sequential(target: Target, n: int, warmup: int) -> list[float]:
    url = target.base + "/chat/completions"
    body = request_body(target.model, False)
    out: list[float] = []
    async with _session(target, 1) as s:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            async with s.post(url, data=body) as r:
                await r.read()
                if r.status != 200:
                    raise LoadError(f"{target.name}: status {r.status}")
            if i >= warmup:
                out.append(time.perf_counter() - t0)
    return out


async def streams(target: Target, n: int, warmup: int) -> tuple[list[float], list[float]]:
    """Time to the first event carrying text, and to the end of the stream."""
    url = target.base + "/chat/completions"
    body = request_body(target.model, True)
    first: list[float] = []
    total: list[float] = []
    async with _session(target, 1) as s:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            ttft = None
            data = bytearray()
            async with s.post(url, data=body) as r:
                if r.status != 200:
                    raise LoadError(f"{target.name}: status {r.status}")
                async for chunk in r.content.iter_any():
                    data += chunk
                    if ttft is None and _CONTENT.search(data):
                        ttft = time.perf_counter() - t0
            end = time.perf_counter() - t0
            if ttft is None or not data.rstrip().endswith(b"[DONE]"):
                raise LoadError(f"{target.name}: incomplete stream {bytes(data[-200:])!r}")
            if i >= warmup:
                first.append(ttft)
                total.append(end)
    return first, total

"""The gateway's Python-side CPU per request, measured in-process without a server.

Builds the app from a config (API key, default policy, SQLite audit: the default chain),
runs its lifespan, and calls the ASGI app directly with a prebuilt request, `--concurrency`
at a time; the CPU time of this process (`time.process_time`, audit thread included) over
the answers is what the app costs, less what granian and the client's sockets cost. On a
loaded machine this moves far less than a loopback benchmark, so it compares source trees
well: run it once per tree, ``PYTHONPATH=<tree>/src python bench/path_inproc.py``,
alternating. Routes (`--route`):

- ``oip``: OIP infer on the local skops digits model;
- ``llm`` / ``llm-stream``: ``/v1/chat/completions`` on the fake OpenAI upstream
  (bench/llm_upstream.py, its own process: its CPU is not counted, the gateway's HTTP
  client to it is); for a stream the CPU is per stream of `--chunks` events, and the
  median time from the call to its first content event is printed too (the upstream
  included), the in-process part of the time to first token.

    python bench/path_inproc.py --requests 3000 --rounds 5
    python bench/path_inproc.py --route llm-stream --requests 500 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from overhead import digits_body

INFER = "/v2/models/digits/infer"
CHAT = "/v1/chat/completions"


def make_config(folder: Path) -> Path:
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    sio.dump(LogisticRegression(max_iter=2000).fit(x / 16.0, y), folder / "digits.skops")
    (folder / "secret").write_text(os.urandom(32).hex())
    config = folder / "modelfence.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 1, "workers": 1, "admin_listen": None},
        "secret_file": "secret", "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": "sqlite:///audit.db"},
        "models": [{"name": "digits",
                    "backend": {"type": "skops", "path": str(folder / "digits.skops")}}]}))
    return config


def make_llm_config(folder: Path, upstream: str) -> Path:
    """The default chain with one `llm:` model at the fake upstream (rewritten per run: the
    upstream's port changes)."""
    from llm_targets import MODEL

    secret = folder / "secret"
    if not secret.exists():
        secret.write_text(os.urandom(32).hex())
    config = folder / "modelfence-llm.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 1, "workers": 1, "admin_listen": None},
        "secret_file": "secret", "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": "sqlite:///audit.db"}, "models": [],
        "llm": {"models": [{"name": MODEL, "upstream": upstream}]}}))
    return config


def key_for(config: Path, model: str = "digits") -> str:
    import json

    out = subprocess.run([sys.executable, "-m", "modelfence", "keys", "create", "--config",
                          str(config), "--principal", "bench", "--tenant", "bench", "--model",
                          model, "--json"], capture_output=True, text=True, check=True)
    return str(json.loads(out.stdout)["key"])


def scope_for(key: str, body: bytes, path: str = INFER) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
            "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"authorization", f"Bearer {key}".encode())],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


async def one(app: Any, scope: dict[str, Any], body: bytes,
              firsts: list[float] | None = None) -> int:
    """One call; `firsts` gets the seconds to the first body part that carries content."""
    sent = False
    status = 0
    t0 = time.perf_counter()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, firsts
        if message["type"] == "http.response.start":
            status = message["status"]
        elif firsts is not None and b'"content"' in message.get("body", b""):
            firsts.append(time.perf_counter() - t0)
            firsts = None

    await app(dict(scope), receive, send)
    return status


async def run(config: Path, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """CPU µs per answer, and the median ms to the first content, for each round."""
    from modelfence.config import load_settings
    from modelfence.gateway.app import build_app

    os.chdir(config.parent)
    app = build_app(load_settings(config))
    if args.route == "oip":
        body, scope = digits_body(), scope_for(key_for(config), digits_body())
    else:
        from llm_targets import MODEL, request_body

        body = request_body(MODEL, args.route == "llm-stream")
        scope = scope_for(key_for(config, MODEL), body, CHAT)
    cpu, first = [], []
    async with app.router.lifespan_context(app):
        for _ in range(min(200, args.requests)):
            assert await one(app, scope, body) == 200
        for _ in range(args.rounds):
            t0 = time.process_time()
            per = args.requests // args.concurrency
            firsts: list[float] = []

            async def worker(per: int, firsts: list[float]) -> None:
                for _ in range(per):
                    status = await one(app, scope, body, firsts)
                    if status != 200:
                        raise SystemExit(f"status {status}")

            await asyncio.gather(*(worker(per, firsts) for _ in range(args.concurrency)))
            await asyncio.sleep(0.05)  # the last background tasks (audit)
            cpu.append((time.process_time() - t0) / (per * args.concurrency) * 1e6)
            first.append(statistics.median(firsts) * 1000 if firsts else float("nan"))
    return cpu, first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--folder", type=Path, help="reuse this folder's model and config (made "
                   "there the first time)")
    p.add_argument("--route", choices=("oip", "llm", "llm-stream"), default="oip")
    p.add_argument("--chunks", type=int, default=20, help="events per upstream stream")
    p.add_argument("--interval-ms", type=float, default=1.0,
                   help="pause between the upstream's stream events")
    args = p.parse_args()
    import modelfence

    with tempfile.TemporaryDirectory(prefix="bench-inproc-") as tmp, ExitStack() as stack:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if args.route == "oip":
            config = folder / "modelfence.yaml"
            if not config.exists():
                make_config(folder)
        else:
            from llm_targets import start_upstream

            upstream = start_upstream(stack, folder, args.chunks, args.interval_ms)
            config = make_llm_config(folder, upstream.base)
        values, firsts = asyncio.run(run(config, args))
    unit = "stream" if args.route == "llm-stream" else "req"
    first = ("" if args.route != "llm-stream" else
             f"; first content {statistics.median(firsts):.3f} ms median of rounds")
    print(f"{Path(modelfence.__file__).parent} {args.route}: median "
          f"{statistics.median(values):.0f}, min {min(values):.0f} CPU µs/{unit} "
          f"({', '.join(f'{v:.0f}' for v in values)}){first}; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

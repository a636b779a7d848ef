"""The gateway's Python-side CPU per request, measured in-process without a server.

Builds the app from a config (the local skops digits model, API key, default policy, SQLite
audit: the default chain), runs its lifespan, and calls the ASGI app directly with a
prebuilt OIP infer request, `--concurrency` at a time; the CPU time of this process
(`time.process_time`, audit thread included) over the answers is what the app costs, less
what granian and the sockets cost. On a loaded machine this moves far less than a
loopback benchmark, so it compares source trees well: run it once per tree,
``PYTHONPATH=<tree>/src python bench/path_inproc.py``, alternating.

    python bench/path_inproc.py --requests 3000 --rounds 5
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
from pathlib import Path
from typing import Any

import yaml

from overhead import digits_body

INFER = "/v2/models/digits/infer"


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


def key_for(config: Path) -> str:
    import json

    out = subprocess.run([sys.executable, "-m", "modelfence", "keys", "create", "--config",
                          str(config), "--principal", "bench", "--tenant", "bench", "--model",
                          "digits", "--json"], capture_output=True, text=True, check=True)
    return str(json.loads(out.stdout)["key"])


def scope_for(key: str, body: bytes) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http", "path": INFER,
            "raw_path": INFER.encode(), "root_path": "", "query_string": b"",
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"authorization", f"Bearer {key}".encode())],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


async def one(app: Any, scope: dict[str, Any], body: bytes) -> int:
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    return status


async def run(config: Path, args: argparse.Namespace) -> list[float]:
    from modelfence.config import load_settings
    from modelfence.gateway.app import build_app

    os.chdir(config.parent)
    app = build_app(load_settings(config))
    body = digits_body()
    scope = scope_for(key_for(config), body)
    out = []
    async with app.router.lifespan_context(app):
        for _ in range(200):
            assert await one(app, scope, body) == 200
        for _ in range(args.rounds):
            t0 = time.process_time()
            per = args.requests // args.concurrency

            async def worker(per: int) -> None:
                for _ in range(per):
                    status = await one(app, scope, body)
                    if status != 200:
                        raise SystemExit(f"status {status}")

            await asyncio.gather(*(worker(per) for _ in range(args.concurrency)))
            await asyncio.sleep(0.05)  # the last background tasks (audit)
            out.append((time.process_time() - t0) / (per * args.concurrency) * 1e6)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--folder", type=Path, help="reuse this folder's model and config (made "
                   "there the first time)")
    args = p.parse_args()
    import modelfence

    with tempfile.TemporaryDirectory(prefix="bench-inproc-") as tmp:
        folder = args.folder or Path(tmp)
        config = folder / "modelfence.yaml"
        if not config.exists():
            folder.mkdir(parents=True, exist_ok=True)
            make_config(folder)
        values = asyncio.run(run(config, args))
    print(f"{Path(modelfence.__file__).parent}: median {statistics.median(values):.0f}, min "
          f"{min(values):.0f} CPU µs/req ({', '.join(f'{v:.0f}' for v in values)}); "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

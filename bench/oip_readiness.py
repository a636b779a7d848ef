"""How long do `/v2/health/ready` and `/v2/models/{m}/ready` take while an upstream hangs?

The target (issue 19, item 1): readiness answers within 100 ms whatever the upstreams do
(Kubernetes' default probe timeout is 1 s; with a stalled upstream the check took 2 s). The
gateway is `modelfence serve` with a local skops digits model and a model on an upstream
that accepts connections and never answers. Reported: p50/p99/max of `--n` sequential
GETs of each readiness route, each on a fresh connection as a kubelet probe makes it, and
what they answered.

    .venv/bin/python bench/oip_readiness.py [--n 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import secrets
import shlex
import signal
import socket
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import yaml

from results import result, save
from servers import HOST, _modelfence, cpu_model, free_port, spawn, stop_on_sigterm, wait_http

TARGET_MS = 100.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="requests per route")
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    p.add_argument("--save", type=Path, help="write the table as a result file the docs render "
                   "(bench/results.py; the docs quote bench/published/)")
    return p.parse_args()


def train_model(folder: Path) -> Path:
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    path = folder / "digits.skops"
    sio.dump(LogisticRegression(max_iter=2000).fit(x / 16.0, y), path)
    return path


def start(stack: ExitStack, folder: Path, stalled_port: int) -> tuple[int, str]:
    (folder / "secret").write_text(secrets.token_urlsafe(48))
    port = free_port()
    config = folder / "modelfence.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": HOST, "port": port, "workers": 1,
                   "admin_listen": f"{HOST}:{free_port()}"},
        "secret_file": "secret", "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": "jsonl:///audit.jsonl"},
        "models": [
            {"name": "digits", "backend": {"type": "skops", "path": str(train_model(folder))}},
            {"name": "stalled", "backend": {"type": "oip", "timeout_s": 30,
                                            "url": f"http://{HOST}:{stalled_port}"},
             "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]}}],
    }, sort_keys=False))
    key = json.loads(_modelfence("keys", "create", "--config", str(config), "--principal",
                                 "kubelet", "--tenant", "ops", "--model", "digits", "--model",
                                 "stalled", "--json"))["key"]
    log = folder / "gateway.log"
    proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config", str(config)],
                 log)
    wait_http(f"http://{HOST}:{port}/v2/health/live", proc, log)
    return port, key


def probe(port: int, path: str, headers: dict[str, str], n: int) -> dict[str, object]:
    took: list[float] = []
    statuses: dict[str, int] = {}
    for _ in range(n):
        started = time.perf_counter()
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        conn.request("GET", path, headers=headers)
        status = conn.getresponse().status
        conn.close()
        took.append((time.perf_counter() - started) * 1000)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    took.sort()
    return {"path": path, "statuses": statuses, "p50_ms": round(statistics.median(took), 2),
            "p99_ms": round(took[int(0.99 * (len(took) - 1))], 2),
            "max_ms": round(took[-1], 2)}


COLUMNS = [{"key": "route", "title": "route"}, {"key": "answers", "title": "answers"},
           {"key": "p50", "title": "p50", "format": "{:.1f} ms"},
           {"key": "p99", "title": "p99", "format": "{:.1f} ms"},
           {"key": "max", "title": "max", "format": "{:.1f} ms"}]


def saved_result(rows: list[dict[str, object]], command: str) -> dict[str, object]:
    """The routes' timings in the docs' result format (the server route's max in bold)."""
    table = []
    for r in rows:
        statuses = r["statuses"]
        assert isinstance(statuses, dict)
        row: dict[str, object] = {
            "route": f"`GET {r['path']}`", "p50": r["p50_ms"], "p99": r["p99_ms"],
            "max": r["max_ms"],
            "answers": ", ".join(f"{s} \N{MULTIPLICATION SIGN} {n}"
                                 for s, n in sorted(statuses.items()))}
        if r["path"] == "/v2/health/ready":
            row["emphasis"] = ["max"]
        table.append(row)
    return result("oip_readiness", command, COLUMNS, table, note=(
        "A gateway with a local model (digits) and an upstream model (stalled) whose server "
        "accepts connections and never answers; sequential GETs per route, each on a fresh "
        "connection."))


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    from servers import workdir

    with workdir(args.keep, prefix="oip-readiness-") as folder, ExitStack() as stack, \
            socket.socket() as stalled:
        stalled.bind((HOST, 0))
        stalled.listen(1024)  # accepts (the kernel does) and never answers
        port, key = start(stack, folder, stalled.getsockname()[1])
        auth = {"Authorization": f"Bearer {key}"}
        rows = [probe(port, "/v2/health/ready", {}, args.n),
                probe(port, "/v2/models/stalled/ready", auth, args.n),
                probe(port, "/v2/models/digits/ready", auth, args.n)]
    summary = {"bench": "oip_readiness", "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "cpu": cpu_model(), "python": platform.python_version(), "n": args.n,
              "target_ms": TARGET_MS, "routes": rows,
              "met": all(float(str(r["max_ms"])) < TARGET_MS for r in rows)}
    print(json.dumps(summary, indent=2))
    if args.save:
        save(args.save, saved_result(rows, shlex.join(["python", "bench/oip_readiness.py",
                                                         *sys.argv[1:]])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

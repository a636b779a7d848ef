"""One key stalls thousands of request bodies; how fast is another key still served?

The attack (issue 14, item 1): a key holder opens `--stalled` connections, each sending a
request head with `Content-Length: 100` and one byte of body, and then nothing. Before the
fix, 2,048 of them froze every other caller. Meanwhile a second key (another tenant) sends
one-row inferences back to back, for `--duration` seconds from the start of the attack:
half on one keep-alive connection, half on a new connection each (a client without a
pool). Reported: the second key's latency p50/p99/max per kind and how many of its requests
failed, and what the attacker's connections got (429 at once, or held until the 408).

The gateway is `modelfence serve` with its defaults (server.max_inflight_per_principal 64,
body_timeout_s 10, backlog 2048, one worker) and a local skops digits model, so the numbers
are the gateway's own. `--unprotected` turns the caps and body timeouts off (0 and an hour)
to show the freeze the defaults prevent. The soft open-files limit is raised for the
sockets (the gateway inherits it).

    .venv/bin/python bench/stalled_bodies.py [--stalled 2000] [--duration 8] [--unprotected]
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import resource
import secrets
import signal
import socket
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from servers import (
    HOST,
    _modelfence,
    cpu_model,
    free_port,
    spawn,
    stop_on_sigterm,
    wait_http,
    workdir,
)

TARGET_P99_MS = 50.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stalled", type=int, default=2000, help="stalled bodies from one key")
    p.add_argument("--duration", type=float, default=8.0,
                   help="seconds the second key sends for (keep it under the 10 s body timeout "
                        "to measure while the attack holds)")
    p.add_argument("--unprotected", action="store_true",
                   help="in-flight caps off and body timeouts of an hour: the old behaviour")
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    return p.parse_args()


def raise_open_files(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def train_model(folder: Path) -> Path:
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    path = folder / "digits.skops"
    sio.dump(LogisticRegression(max_iter=2000).fit(x / 16.0, y), path)
    return path


def start(stack: ExitStack, folder: Path, unprotected: bool) -> tuple[int, str, str]:
    """The gateway on a free port, and two keys of different tenants: attacker, victim."""
    (folder / "secret").write_text(secrets.token_urlsafe(48))
    port = free_port()
    server: dict[str, Any] = {"host": HOST, "port": port, "workers": 1,
                              "admin_listen": f"{HOST}:{free_port()}"}
    if unprotected:
        server.update(max_inflight_per_principal=0, max_inflight_per_tenant=0,
                      body_timeout_s=3600, body_gap_timeout_s=3600)
    config = folder / "modelfence.yaml"
    config.write_text(yaml.safe_dump({
        "server": server, "secret_file": "secret", "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": "jsonl:///audit.jsonl"},
        "models": [{"name": "digits",
                    "backend": {"type": "skops", "path": str(train_model(folder))}}],
    }, sort_keys=False))
    keys = [json.loads(_modelfence("keys", "create", "--config", str(config), "--principal",
                                   who, "--tenant", who, "--model", "digits", "--json"))["key"]
            for who in ("mallory", "alice")]
    log = folder / "gateway.log"
    proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config", str(config)],
                 log)
    wait_http(f"http://{HOST}:{port}/v2/health/live", proc, log)
    return port, keys[0], keys[1]


def body() -> bytes:
    from sklearn.datasets import load_digits

    row = [float(v) / 16.0 for v in load_digits().data[0]]
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "data": row}]}).encode()


def attack(port: int, key: str, n: int, held: list[socket.socket], opened: list[float]
           ) -> None:
    head = (f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: gateway\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100\r\n\r\n{{").encode()
    for _ in range(n):
        try:
            s = socket.create_connection((HOST, port), timeout=30)
            s.sendall(head)
        except OSError:
            continue
        held.append(s)
    opened.append(time.monotonic())


def outcomes(held: list[socket.socket]) -> dict[str, int]:
    """What each stalled connection got by now: an answer's status, or nothing yet."""
    counts: dict[str, int] = {}
    for s in held:
        s.setblocking(False)
        try:
            data = s.recv(256)
            what = data.split(b" ", 2)[1].decode() if data else "closed"
        except BlockingIOError:
            what = "held"
        except OSError:
            what = "reset"
        counts[what] = counts.get(what, 0) + 1
    return counts


def victim(port: int, key: str, payload: bytes, until: float) -> dict[str, list[float]]:
    """Requests back to back until `until`: alternately on one keep-alive connection and on
    a new connection each. Latency in ms; a failure (error or non-200) is recorded as None."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    pooled = http.client.HTTPConnection(HOST, port, timeout=5)
    out: dict[str, list[float]] = {"keep-alive": [], "new connection": [], "failed": []}
    turn = 0
    while time.monotonic() < until:
        kind = "keep-alive" if turn % 2 == 0 else "new connection"
        turn += 1
        conn = pooled if kind == "keep-alive" else http.client.HTTPConnection(HOST, port,
                                                                             timeout=5)
        started = time.perf_counter()
        try:
            conn.request("POST", "/v2/models/digits/infer", payload, headers)
            r = conn.getresponse()
            r.read()
            ok = r.status == 200
        except OSError:
            ok = False
            if conn is pooled:
                pooled.close()
                pooled = http.client.HTTPConnection(HOST, port, timeout=5)
        took = (time.perf_counter() - started) * 1000
        if conn is not pooled:
            conn.close()
        out[kind if ok else "failed"].append(took)
    pooled.close()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    limit = raise_open_files(args.stalled + 512)
    payload = body()
    with ExitStack() as stack, workdir(args.keep, prefix="mf-stalled-") as folder:
        port, mallory, alice = start(stack, folder, args.unprotected)
        warm = victim(port, alice, payload, time.monotonic() + 1.0)  # warm-up, not reported
        assert warm["keep-alive"], "the gateway does not answer the second key"
        held: list[socket.socket] = []
        opened: list[float] = []
        attacker = threading.Thread(target=attack, args=(port, mallory, args.stalled, held,
                                                          opened), daemon=True)
        began = time.monotonic()
        attacker.start()
        result = victim(port, alice, payload, began + args.duration)
        attacker.join(timeout=60)
        open_s = (opened[0] if opened else time.monotonic()) - began
        got = outcomes(held)
        for s in held:
            s.close()
        log = (folder / "gateway.log").read_text()

    print(f"machine: {platform.node()} ({cpu_model()}, {len(held)} of {args.stalled} "
          f"stalled connections opened, open-files limit {limit}), "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    mode = "UNPROTECTED (caps off, body timeouts 1 h)" if args.unprotected else "defaults"
    print(f"gateway: {mode}; the attacker's connections were open after {open_s:.1f} s; "
          f"the second key sent for {args.duration:g} s from the attack's start")
    for kind in ("keep-alive", "new connection"):
        ms = result[kind]
        if ms:
            print(f"  second key, {kind:>14}: n={len(ms):5d}  p50 {statistics.median(ms):7.2f} "
                  f"ms  p99 {pct(ms, 0.99):7.2f} ms  max {max(ms):7.2f} ms")
    print(f"  second key failed requests: {len(result['failed'])}")
    print(f"  attacker's connections at the end: {got}")
    print(f"  tracebacks in the gateway log: {log.count('Traceback')}")
    answered = result["keep-alive"] + result["new connection"]
    worst = pct(answered, 0.99) if answered else float("inf")
    verdict = "met" if worst < TARGET_P99_MS and not result["failed"] else "NOT met"
    print(f"  target p99 < {TARGET_P99_MS:g} ms over all the second key's requests: {verdict} "
          f"(p99 {worst:.2f} ms)")


if __name__ == "__main__":
    main()

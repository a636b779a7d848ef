"""Binary tensor data vs JSON through the gateway: requests per second for one [1, 1000] FP32
input (issue 19's target: binary at least 2x JSON).

Starts `modelfence serve` (one worker, API-key identity, JSONL audit) in front of a local
model whose input is [-1, 1000] FP32, then runs closed-loop load on the same input encoded
two ways, in alternating rounds: JSON (`data`: 1000 numbers, a JSON answer) and tritonclient's
default (the binary extension both ways: `Inference-Header-Content-Length`, raw little-endian
bytes, `binary_data_output`). Two client kinds:

- `prebuilt`: each body is encoded once, so the load generator's cost is the same for both and
  the difference is the gateway's (decoding 1000 JSON numbers, encoding the answer);
- `tritonclient`: tritonclient's InferenceServerClient encodes and decodes every request, as
  a Triton user's program does (JSON: `set_data_from_numpy(binary_data=False)` and
  `binary_data=False` outputs), so the client's own encoding counts too.

Last, the gateway's ASGI app is called in this process with no server and no client: its
milliseconds per request, which a shared machine's load disturbs least.

Run: ``python bench/oip_binary.py --seconds 5`` (keep runs short on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, MutableMapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from loadgen import AiohttpLoader, Load
from results import result, save
from servers import (
    HOST,
    cpu_model,
    cpu_seconds,
    free_port,
    spawn,
    stop_on_sigterm,
    wait_http,
    workdir,
)

FEATURES = 1000
MODEL = "wide"


def train(folder: Path) -> Path:
    """A logistic regression over 1000 features (two classes), saved as skops."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, FEATURES)).astype(np.float32)
    y = (x[:, :10].sum(axis=1) > 0).astype(int)
    path = folder / "wide.skops"
    sio.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    return path


def start_gateway(stack: ExitStack, folder: Path) -> tuple[str, str, int]:
    """The gateway's URL, a key for the model, and its process group (for its CPU time)."""
    (folder / "secret").write_text(os.urandom(32).hex())
    port = free_port()
    config = folder / "modelfence.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": HOST, "port": port, "workers": 1, "admin_listen": None},
        "secret_file": "secret",
        "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": "jsonl:///audit.jsonl"},
        "models": [{"name": MODEL, "backend": {"type": "skops", "path": str(train(folder))},
                    "input": {"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}}],
    }, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "modelfence", "keys", "create", "--config",
                          str(config), "--principal", "bench", "--tenant", "bench", "--model",
                          MODEL, "--json"], capture_output=True, text=True, check=True)
    log = folder / "gateway.log"
    proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config", str(config)],
                 log)
    url = f"http://{HOST}:{port}"
    wait_http(f"{url}/v2/health/live", proc, log)
    return url, str(json.loads(out.stdout)["key"]), proc.pid


def row() -> np.ndarray[Any, Any]:
    return np.random.default_rng(1).normal(size=(1, FEATURES)).astype(np.float32)


def loads(url: str, key: str) -> dict[str, Load]:
    """The same input as a JSON body and as tritonclient's default binary body."""
    from tritonclient.http._utils import _get_inference_request

    data = row()
    target = f"{url}/v2/models/{MODEL}/infer"
    auth = {"Authorization": f"Bearer {key}"}
    as_json = json.dumps({"inputs": [{"name": "input", "shape": [1, FEATURES],
                                      "datatype": "FP32", "data": data.ravel().tolist()}]})
    body, header_length = _get_inference_request(
        [_triton_input(data, binary=True)], "", None, 0, False, False, 0, None, None)
    return {
        "json": Load(target, as_json.encode(), {**auth, "Content-Type": "application/json"}),
        "binary": Load(target, bytes(body), {
            **auth, "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length)}),
    }


def _triton_input(data: np.ndarray[Any, Any], *, binary: bool) -> Any:
    import tritonclient.http as th

    tensor = th.InferInput("input", [1, FEATURES], "FP32")
    tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


def check_same_answer(url: str, key: str) -> list[float]:
    """Both encodings must reach the model and get the same probabilities back."""
    import tritonclient.http as th

    client = th.InferenceServerClient(url.removeprefix("http://"))
    headers = {"Authorization": f"Bearer {key}"}
    as_json = client.infer(MODEL, [_triton_input(row(), binary=False)], headers=headers,
                           outputs=[th.InferRequestedOutput("probabilities", binary_data=False)])
    binary = client.infer(MODEL, [_triton_input(row(), binary=True)], headers=headers)
    client.close()
    p_json = as_json.as_numpy("probabilities")
    p_binary = binary.as_numpy("probabilities")
    if p_json is None or p_binary is None or not np.allclose(p_json, p_binary, atol=1e-6):
        raise SystemExit(f"the encodings answered differently: {p_json} vs {p_binary}")
    return [float(v) for v in p_binary.ravel()]


def tritonclient_rps(url: str, key: str, binary: bool, threads: int, seconds: float) -> float:
    """Requests per second of `threads` tritonclient callers, each encoding every request."""
    import tritonclient.http as th

    data = row()
    headers = {"Authorization": f"Bearer {key}"}
    outputs = None if binary else [th.InferRequestedOutput(n, binary_data=False)
                                   for n in ("probabilities", "label")]

    def caller(deadline: float) -> int:
        client = th.InferenceServerClient(url.removeprefix("http://"))
        done = 0
        while time.perf_counter() < deadline:
            result = client.infer(MODEL, [_triton_input(data, binary=binary)], headers=headers,
                                  outputs=outputs)
            result.as_numpy("probabilities")
            done += 1
        client.close()
        return done

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        counts = list(pool.map(caller, [start + seconds] * threads))
    return sum(counts) / (time.perf_counter() - start)


@dataclass
class Rounds:
    """Per encoding: req/s of each round, and CPU milliseconds per request of the gateway
    (its process group) and of the client (this process), which contention on a shared
    machine distorts far less than req/s."""

    rps: list[float] = field(default_factory=list)
    gateway_ms: list[float] = field(default_factory=list)
    client_ms: list[float] = field(default_factory=list)

    def add(self, rps: float, seconds: float, gateway_s: float, client_s: float) -> str:
        n = rps * seconds
        self.rps.append(rps)
        self.gateway_ms.append(gateway_s / n * 1000)
        self.client_ms.append(client_s / n * 1000)
        return (f"{rps:8.1f} req/s  CPU per request: gateway {self.gateway_ms[-1]:.3f} ms, "
                f"client {self.client_ms[-1]:.3f} ms")


def measured(pgid: int, run: Callable[[], float]) -> tuple[float, float, float, float]:
    """(req/s, seconds, gateway CPU seconds, client CPU seconds) of one round."""
    gw0, me0, t0 = cpu_seconds(pgid), time.process_time(), time.perf_counter()
    rps = run()
    return (rps, time.perf_counter() - t0, cpu_seconds(pgid) - gw0,
            time.process_time() - me0)


def measure(args: argparse.Namespace, url: str, key: str, pgid: int
            ) -> dict[str, dict[str, Rounds]]:
    results = {client: {"json": Rounds(), "binary": Rounds()}
               for client in ("prebuilt", "tritonclient")}
    loader = AiohttpLoader("prebuilt bodies, one asyncio task per connection")
    bodies = loads(url, key)
    for load in bodies.values():  # warm both paths up
        loader.run(load, args.connections, 1.0)
    for _ in range(args.rounds):
        for kind in ("json", "binary"):
            rps, secs, gw, me = measured(pgid, partial(
                lambda load: loader.run(load, args.connections, args.seconds).rps, bodies[kind]))
            print(f"prebuilt      {kind:6}  {results['prebuilt'][kind].add(rps, secs, gw, me)}",
                  flush=True)
        if args.no_tritonclient:
            continue
        for kind in ("json", "binary"):
            rps, secs, gw, me = measured(pgid, partial(
                tritonclient_rps, url, key, kind == "binary", args.threads, args.seconds))
            print(f"tritonclient  {kind:6}  "
                  f"{results['tritonclient'][kind].add(rps, secs, gw, me)}", flush=True)
    return results


def in_process_ms(config: Path, bodies: dict[str, Load], rounds: int) -> dict[str, float]:
    """The gateway's app alone, called in this process with no server, socket or client:
    the least milliseconds per request of each encoding over `rounds` rounds of 300."""
    from modelfence.config import load_settings
    from modelfence.gateway.app import build_app

    app = build_app(load_settings(config))

    async def one(load: Load) -> None:
        sent: list[MutableMapping[str, Any]] = []
        pending = [{"type": "http.request", "body": load.body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await asyncio.sleep(3600)  # no disconnect while the answer is written
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        headers = [(k.lower().encode(), v.encode()) for k, v in load.headers.items()]
        path = "/" + load.url.split("/", 3)[3]
        await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                   "method": "POST", "scheme": "http", "path": path,
                   "raw_path": path.encode(), "query_string": b"", "root_path": "",
                   "headers": [(b"host", b"bench"), *headers,
                               (b"content-length", str(len(load.body)).encode())],
                   "client": (HOST, 50000), "server": (HOST, 80)}, receive, send)
        if sent[0]["status"] != 200:
            raise SystemExit(f"in-process call answered {sent[0]['status']}: {sent[1:]}")

    async def run() -> dict[str, float]:
        best = {kind: float("inf") for kind in bodies}
        async with app.router.lifespan_context(app):
            for _ in range(rounds):
                for kind, load in bodies.items():
                    start = time.perf_counter()
                    for _ in range(300):
                        await one(load)
                    best[kind] = min(best[kind], (time.perf_counter() - start) / 300 * 1000)
        return best

    return asyncio.run(run())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="length of each measured round")
    p.add_argument("--rounds", type=int, default=2, help="alternating JSON/binary rounds")
    p.add_argument("--connections", type=int, default=8, help="prebuilt: concurrent requests")
    p.add_argument("--threads", type=int, default=4, help="tritonclient: concurrent callers")
    p.add_argument("--no-tritonclient", action="store_true", help="prebuilt bodies only")
    p.add_argument("--keep", type=Path, help="keep the gateway's folder here")
    p.add_argument("--save", type=Path, help="write the table as a result file the docs render "
                   "(bench/results.py; the docs quote bench/published/)")
    return p.parse_args(argv)


COLUMNS = [{"key": "run", "title": "run"}, {"key": "client", "title": "client"},
           {"key": "json", "title": "JSON req/s", "format": "{:,.0f}"},
           {"key": "binary", "title": "binary req/s", "format": "{:,.0f}"},
           {"key": "ratio", "title": "binary / JSON", "format": "{:.2f}\N{MULTIPLICATION SIGN}"},
           {"key": "cpu_json", "title": "gateway CPU/request JSON", "format": "{:.3f} ms"},
           {"key": "cpu_binary", "title": "gateway CPU/request binary", "format": "{:.3f} ms"}]


def saved_result(results: dict[str, dict[str, Rounds]], run: str, app_ms: dict[str, float],
                 command: str) -> dict[str, Any]:
    """Each client's medians in the docs' result format (a ratio of 2 or more in bold)."""
    rows: list[dict[str, Any]] = []
    for client, by_kind in results.items():
        j, b = by_kind["json"], by_kind["binary"]
        if not j.rps:
            continue
        ratio = statistics.median(b.rps) / statistics.median(j.rps)
        rows.append({"run": run, "client": client, "json": statistics.median(j.rps),
                     "binary": statistics.median(b.rps), "ratio": ratio,
                     "cpu_json": statistics.median(j.gateway_ms),
                     "cpu_binary": statistics.median(b.gateway_ms),
                     **({"emphasis": ["ratio"]} if ratio >= 2 else {})})
    return result("oip_binary", command, COLUMNS, rows, note=(
        f"The gateway (1 worker, API key, Cedar policy, JSONL audit) in front of a local "
        f"scikit-learn model with a [-1, {FEATURES}] FP32 input; medians of the rounds. Its "
        f"app called in process (no server, no client): JSON {app_ms['json']:.3f} ms, binary "
        f"{app_ms['binary']:.3f} ms per request."))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    with workdir(args.keep, prefix="bench-oip-binary-") as folder, ExitStack() as stack:
        url, key, pgid = start_gateway(stack, folder)
        check_same_answer(url, key)
        results = measure(args, url, key, pgid)
        app_ms = in_process_ms(folder / "modelfence.yaml", loads(url, key), 2 * args.rounds)
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} CPU(s), load average "
          f"{os.getloadavg()[0]:.1f}; gateway: 1 worker, local skops model, input [1, {FEATURES}] "
          f"FP32; {args.rounds} round(s) of {args.seconds:g} s; medians")
    for client, by_kind in results.items():
        j, b = by_kind["json"], by_kind["binary"]
        if not j.rps:
            continue
        rps_j, rps_b = statistics.median(j.rps), statistics.median(b.rps)
        gw_j, gw_b = statistics.median(j.gateway_ms), statistics.median(b.gateway_ms)
        all_j = gw_j + statistics.median(j.client_ms)
        all_b = gw_b + statistics.median(b.client_ms)
        print(f"{client:13} req/s: JSON {rps_j:7.1f}  binary {rps_b:7.1f}  ({rps_b / rps_j:.2f}x)"
              f" | gateway CPU/request: JSON {gw_j:.3f} ms  binary {gw_b:.3f} ms "
              f"({gw_j / gw_b:.2f}x) | gateway+client CPU/request: JSON {all_j:.3f} ms  "
              f"binary {all_b:.3f} ms ({all_j / all_b:.2f}x)")
    print(f"gateway app in process (no server, no client; least of {2 * args.rounds} rounds): "
          f"JSON {app_ms['json']:.3f} ms  binary {app_ms['binary']:.3f} ms per request "
          f"({app_ms['json'] / app_ms['binary']:.2f}x the requests per CPU second)")
    if args.save:
        run = (f"{args.seconds:g} s \N{MULTIPLICATION SIGN} {args.rounds}, "
               f"load {os.getloadavg()[0]:.1f}")
        save(args.save, saved_result(results, run, app_ms, shlex.join(
            ["python", "bench/oip_binary.py", *(sys.argv[1:] if argv is None else argv)])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Latency the gateway adds on gRPC: ModelInfer through the gateway to MLServer's gRPC server,
against the same MLServer called directly (issue 19's target: added p50 at most 1 ms).

Starts MLServer 1.7 (its own virtualenv, .venv-mlserver, or MODELFENCE_TEST_MLSERVER) with a
scikit-learn digits model, and `modelfence serve` (one worker, API-key identity, JSONL audit,
`server.grpc_port`) whose model `digits` is that MLServer behind `grpc://`, passed through
(no classifier reshaping: the same answer as direct). One caller sends the same prebuilt
ModelInferRequest (one [1, 64] FP32 row as raw contents, as tritonclient sends it) in
alternating rounds, direct and through the gateway, and times each call; the added latency is
the difference of the medians, per round pair and over all rounds. The gateway's CPU time
per request (its process group's, over the gateway rounds) is reported too: on a shared,
loaded machine it moves far less than the latencies do, and it bounds what the gateway adds
on an idle one.

For scale on the same machine at the same time, `--rest` also times the REST path the same
way: the same row as a JSON body to MLServer's HTTP port direct and through the gateway to a
model on MLServer's HTTP port (one keep-alive connection each).

Run: ``python bench/oip_grpc.py --rounds 3 --requests 300`` (keep runs short on a shared
machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import yaml

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

MLSERVER_DEFAULTS = (Path(__file__).resolve().parents[1] / ".venv-mlserver" / "bin" / "mlserver",)
INFER = "/inference.GRPCInferenceService/ModelInfer"


def mlserver_exe() -> str:
    named = os.environ.get("MODELFENCE_TEST_MLSERVER")
    for path in ([Path(named)] if named else list(MLSERVER_DEFAULTS)):
        if path.is_file():
            return str(path)
    raise SystemExit("no MLServer: make .venv-mlserver/.installed or set "
                     "MODELFENCE_TEST_MLSERVER")


def start_mlserver(stack: ExitStack, folder: Path) -> tuple[int, int]:
    """MLServer serving `digits` (a LogisticRegression, joblib); its gRPC and HTTP ports."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    model_dir = folder / "mlserver" / "digits"
    model_dir.mkdir(parents=True)
    joblib.dump(LogisticRegression(max_iter=2000).fit(x / 16.0, y), model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "digits", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"}}))
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (folder / "mlserver" / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "parallel_workers": 0, "host": HOST, "metrics_endpoint": None}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = folder / "mlserver.log"
    proc = spawn(stack, [mlserver_exe(), "start", str(folder / "mlserver")], log, env)
    wait_http(f"http://{HOST}:{http_port}/v2/models/digits/ready", proc, log)
    return grpc_port, http_port


def start_gateway(stack: ExitStack, folder: Path, upstream: tuple[int, int]
                  ) -> tuple[int, int, str, int]:
    """The gateway's gRPC and HTTP ports, a key for `digits` (over gRPC upstream) and
    `digits-http` (the same MLServer over HTTP), and its process group."""
    (folder / "secret").write_text(os.urandom(32).hex())
    port, grpc_port = free_port(), free_port()
    config = folder / "modelfence.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": HOST, "port": port, "workers": 1, "admin_listen": None,
                   "grpc_port": grpc_port},
        "secret_file": "secret",
        "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": "jsonl:///audit.jsonl"},
        "models": [{"name": "digits",
                    "backend": {"type": "oip", "url": f"grpc://{HOST}:{upstream[0]}"},
                    "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]}},
                   {"name": "digits-http",
                    "backend": {"type": "oip", "url": f"http://{HOST}:{upstream[1]}",
                                "upstream_model": "digits"},
                    "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]}}],
    }, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "modelfence", "keys", "create", "--config",
                          str(config), "--principal", "bench", "--tenant", "bench", "--model",
                          "digits", "--model", "digits-http", "--json"],
                         capture_output=True, text=True, check=True)
    log = folder / "gateway.log"
    proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config", str(config)],
                 log)
    wait_http(f"http://{HOST}:{port}/v2/health/live", proc, log)
    return grpc_port, port, str(json.loads(out.stdout)["key"]), proc.pid


ROW = (np.arange(64, dtype=np.float32) % 17) / 16


def request_bytes() -> bytes:
    from modelfence.grpc import inference_pb2 as pb

    msg = pb.ModelInferRequest(model_name="digits")
    msg.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    msg.raw_input_contents.append(ROW.tobytes())
    return bytes(msg.SerializeToString())


def timed_posts(port: int, path: str, n: int, headers: dict[str, str]) -> list[float]:
    """Milliseconds of each of `n` sequential JSON infer POSTs on one keep-alive connection."""
    import http.client

    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                   "data": ROW.tolist()}]}).encode()
    headers = {**headers, "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    took = []
    for i in range(n + 20):  # the first 20 warm up
        t0 = time.perf_counter()
        conn.request("POST", path, body, headers)
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise SystemExit(f"POST {path} answered {answer.status}")
        if i >= 20:
            took.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return took


def timed_calls(port: int, body: bytes, n: int, metadata: tuple[tuple[str, str], ...]
                ) -> list[float]:
    """Milliseconds of each of `n` sequential ModelInfer calls on one channel."""
    import grpc

    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        call = channel.unary_unary(INFER)  # bytes in, bytes out: no client encoding
        for _ in range(20):  # connection and warm-up
            call(body, metadata=metadata, timeout=10)
        took = []
        for _ in range(n):
            t0 = time.perf_counter()
            call(body, metadata=metadata, timeout=10)
            took.append((time.perf_counter() - t0) * 1000)
    return took


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


COLUMNS = [{"key": "run", "title": "run"}, {"key": "path", "title": "path"},
           {"key": "direct", "title": "direct p50", "format": "{:.3f} ms"},
           {"key": "gateway", "title": "through the gateway p50", "format": "{:.3f} ms"},
           {"key": "added", "title": "added p50", "format": "{:+.3f} ms"},
           {"key": "rounds", "title": "added p50 per round"},
           {"key": "cpu", "title": "gateway CPU per request", "format": "{:.3f} ms"}]
PATHS = {"grpc": "gRPC", "rest": "REST"}


def saved_result(summary: dict[str, Any], command: str) -> dict[str, Any]:
    """The run's medians in the docs' result format (gRPC's added p50 in bold)."""
    run = (f"{summary['rounds']} \N{MULTIPLICATION SIGN} {summary['requests']}, "
           f"load {summary['load_average'][0]:.1f}")
    rows = [{"run": run, "path": label, "direct": summary[key]["direct_ms"]["p50"],
             "gateway": summary[key]["gateway_ms"]["p50"],
             "added": summary[key]["added_p50_ms"],
             "rounds": " / ".join(f"{a:.3f}" for a in summary[key]["added_p50_ms_per_round"]),
             "cpu": summary[key]["gateway_cpu_ms_per_request"],
             **({"emphasis": ["added"]} if key == "grpc" else {})}
            for key, label in PATHS.items() if key in summary]
    return result("oip_grpc", command, COLUMNS, rows, note=(
        "One sequential caller, prebuilt ModelInferRequest bytes ([1, 64] FP32 raw); MLServer "
        "direct against the gateway (1 worker, API key, JSONL audit, a pass-through grpc:// "
        "model); REST: MLServer's HTTP server direct against the gateway's REST route to it."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="calls per path per round")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--keep", type=Path, help="keep the servers' files and logs here")
    parser.add_argument("--rest", action="store_true", help="also time the REST path")
    parser.add_argument("--save", type=Path, help="write the table as a result file the docs "
                        "render (bench/results.py; the docs quote bench/published/)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    body = request_bytes()
    with workdir(args.keep, prefix="bench-oip-grpc-") as folder, ExitStack() as stack:
        upstream = start_mlserver(stack, folder)
        grpc_port, http_port, key, pgid = start_gateway(stack, folder, upstream)
        auth = (("authorization", f"Bearer {key}"),)
        paths = {"grpc": (lambda: timed_calls(upstream[0], body, args.requests, ()),
                          lambda: timed_calls(grpc_port, body, args.requests, auth))}
        if args.rest:
            paths["rest"] = (
                lambda: timed_posts(upstream[1], "/v2/models/digits/infer", args.requests, {}),
                lambda: timed_posts(http_port, "/v2/models/digits-http/infer", args.requests,
                                    {"Authorization": f"Bearer {key}"}))
        times: dict[str, dict[str, list[float]]] = {
            p: {"direct": [], "gateway": [], "added": [], "cpu_s": []} for p in paths}
        for i in range(args.rounds):
            for name, (direct_run, gateway_run) in paths.items():
                direct = direct_run()
                cpu0 = cpu_seconds(pgid)
                through = gateway_run()
                times[name]["cpu_s"].append(cpu_seconds(pgid) - cpu0)
                added = statistics.median(through) - statistics.median(direct)
                times[name]["direct"] += direct
                times[name]["gateway"] += through
                times[name]["added"].append(added)
                print(f"round {i + 1} {name}: p50 direct {statistics.median(direct):.3f} ms, "
                      f"gateway {statistics.median(through):.3f} ms, added {added:.3f} ms",
                      flush=True)
    summary: dict[str, Any] = {"machine": cpu_model(), "load_average": os.getloadavg(),
                              "rounds": args.rounds, "requests": args.requests}
    for name, t in times.items():
        summary[name] = {
            "direct_ms": {f"p{q}": round(pct(t["direct"], q), 3) for q in (50, 90, 99)},
            "gateway_ms": {f"p{q}": round(pct(t["gateway"], q), 3) for q in (50, 90, 99)},
            "added_p50_ms_per_round": [round(a, 3) for a in t["added"]],
            "added_p50_ms": round(pct(t["gateway"], 50) - pct(t["direct"], 50), 3),
            # the 20 warm-up calls of each round ran too
            "gateway_cpu_ms_per_request": round(
                sum(t["cpu_s"]) * 1000 / (args.rounds * (args.requests + 20)), 3)}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.save:
        save(args.save, saved_result(summary, shlex.join(["python", "bench/oip_grpc.py",
                                                          *sys.argv[1:]])))


if __name__ == "__main__":
    main()

"""The gateway's CPU per request on one route, A/B between source trees, with flame graphs.

For a loaded, shared machine, where latencies move with the neighbours' work: the measure
is the gateway's own CPU time (its process group's user + system) over the answers it gave,
and each source tree given with `--src` runs its own gateway, measured in turn round after
round (rotated), so that every tree sees the same load over the run.

Routes (every one with the default chain: API key, policy, metrics, SQLite audit):

- ``upstream``: OIP infer, model ``digits`` on the benchmark's OIP backend (constant answer);
- ``local``: OIP infer, model ``digits`` a skops LogisticRegression in the gateway;
- ``llm`` / ``llm-stream``: ``/v1/chat/completions`` on the fake OpenAI upstream;
- ``grpc``: OIP gRPC ModelInfer on the local model (a grpc.aio client in this process).

    python bench/path_cpu.py --route upstream --src src --src /tmp/wt-base/src \\
        --rounds 4 --duration 4 --connections 8 [--pyspy bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llm_targets import MODEL as LLM_MODEL
from llm_targets import request_body as llm_body
from loadgen import Load, WrkLoader
from oip_backend import ANSWER_ENV
from overhead import digits_body
from servers import HOST, cpu_seconds, free_port, spawn, start_granian, wait_http, workdir

ROUTES = ("upstream", "local", "llm", "llm-stream", "grpc")
PYSPY = Path(os.environ.get("PYSPY", "/tmp/pyspy-venv/bin/py-spy"))  # noqa: S108
INFER = "/v2/models/digits/infer"
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def model_config(route: str, folder: Path, upstream: str) -> dict[str, Any]:
    if route == "upstream":
        return {"models": [{"name": "digits", "backend": {
            "type": "oip", "url": upstream, "probabilities_output": "probabilities"},
            "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]}}]}
    if route in ("local", "grpc"):
        import skops.io as sio
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression

        path = folder / "digits.skops"
        if not path.exists():
            x, y = load_digits(return_X_y=True)
            sio.dump(LogisticRegression(max_iter=2000).fit(x / 16.0, y), path)
        return {"models": [{"name": "digits", "backend": {"type": "skops", "path": str(path)}}]}
    return {"models": [], "llm": {"models": [{"name": LLM_MODEL, "upstream": upstream}]}}


def start_gateway(stack: ExitStack, folder: Path, src: Path, route: str, upstream: str,
                  audit: str, *, grpc_listener: bool = False
                  ) -> tuple[int, int, int | None, str]:
    """`modelfence serve` from `src`: its pid, HTTP port, gRPC port and an API key."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "secret").write_text(os.urandom(32).hex())
    port = free_port()
    grpc_port = free_port() if route == "grpc" or grpc_listener else None
    server: dict[str, Any] = {"host": HOST, "port": port, "workers": 1, "admin_listen": None}
    if grpc_port is not None:
        server["grpc_port"] = grpc_port
    config = folder / "modelfence.yaml"
    config.write_text(yaml.safe_dump({"server": server, "secret_file": "secret",
                                      "stores": {"keys": "sqlite:///keys.db"},
                                      "audit": {"sink": audit},
                                      **model_config(route, folder, upstream)}))
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    model = LLM_MODEL if route.startswith("llm") else "digits"
    out = subprocess.run([sys.executable, "-m", "modelfence", "keys", "create", "--config",
                          str(config), "--principal", "bench", "--tenant", "bench", "--model",
                          model, "--json"], capture_output=True, text=True, check=True, env=env)
    log = folder / "gateway.log"
    proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config", str(config)],
                 log, {"PYTHONPATH": str(src.resolve())})
    wait_http(f"http://{HOST}:{port}/v2/health/live", proc, log)
    return proc.pid, port, grpc_port, str(json.loads(out.stdout)["key"])


def grpc_request() -> bytes:
    from modelfence.grpc import inference_pb2 as pb

    msg = pb.ModelInferRequest(model_name="digits")
    msg.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    msg.raw_input_contents.append(((np.arange(64, dtype=np.float32) % 17) / 16).tobytes())
    return bytes(msg.SerializeToString())


async def grpc_load(port: int, key: str, connections: int, duration_s: float) -> int:
    """Calls answered by `connections` concurrent callers on one channel in `duration_s`."""
    import grpc

    body, meta = grpc_request(), (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        call = channel.unary_unary(GRPC_INFER)
        await call(body, metadata=meta, timeout=10)
        deadline = time.perf_counter() + duration_s
        count = 0

        async def caller() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                await call(body, metadata=meta, timeout=10)
                count += 1

        await asyncio.gather(*(caller() for _ in range(connections)))
    return count


class Target:
    def __init__(self, name: str, pid: int, port: int, grpc_port: int | None, key: str,
                 route: str) -> None:
        self.name, self.pid, self.grpc_port, self.key = name, pid, grpc_port, key
        self.route = route
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        if route.startswith("llm"):
            self.load = Load(f"http://{HOST}:{port}/v1/chat/completions",
                             llm_body(LLM_MODEL, route == "llm-stream"), headers)
        else:
            self.load = Load(f"http://{HOST}:{port}{INFER}", digits_body(), headers)

    def run(self, wrk: WrkLoader, connections: int, duration_s: float) -> int:
        if self.grpc_port is not None:
            return asyncio.run(grpc_load(self.grpc_port, self.key, connections, duration_s))
        return wrk.run(self.load, connections, duration_s).requests


def flame(target: Target, wrk: WrkLoader, args: argparse.Namespace, out: Path) -> None:
    """py-spy's flame graph (`out`.svg) and collapsed stacks (`out`.txt, for shares) of the
    gateway's worker while it serves the load."""
    recs = [subprocess.Popen([str(PYSPY), "record", "-p", str(target.pid), "--subprocesses",
                              "-r", "200", "-d", str(int(args.duration) + 1), "-f", fmt,
                              "-o", str(out.with_suffix(ext)), "--nonblocking"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for fmt, ext in (("flamegraph", ".svg"), ("raw", ".txt"))]
    time.sleep(0.5)
    target.run(wrk, args.connections, args.duration)
    for rec in recs:
        _, err = rec.communicate(timeout=60)
        if rec.returncode != 0:
            print(f"py-spy failed: {err.decode()[-500:]}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--route", choices=ROUTES, required=True)
    p.add_argument("--src", type=Path, action="append", required=True,
                   help="a source tree (PYTHONPATH) to run a gateway from; repeat for A/B")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--audit", default="sqlite:///audit.db")
    p.add_argument("--grpc-listener", action="store_true",
                   help="serve the gRPC port on the REST routes too (its cost when idle)")
    p.add_argument("--pyspy", type=Path, help="write a flame graph per source tree here")
    p.add_argument("--keep", type=Path)
    args = p.parse_args()
    wrk = WrkLoader(shutil.which("wrk") or "wrk", 1)
    with workdir(args.keep, prefix="bench-path-") as folder, ExitStack() as stack:
        if args.route == "upstream":
            upstream = start_granian(stack, "backend", "oip_backend:create_app", folder,
                                     {ANSWER_ENV: "constant"}).url
        elif args.route.startswith("llm"):
            port = free_port()
            log = folder / "llm-upstream.log"
            proc = spawn(stack, [sys.executable, str(Path(__file__).with_name("llm_upstream.py")),
                                 "--host", HOST, "--port", str(port), "--chunks", "20",
                                 "--interval-ms", "0"], log)
            wait_http(f"http://{HOST}:{port}/health", proc, log)
            upstream = f"http://{HOST}:{port}/v1"
        else:
            upstream = ""
        targets = []
        for i, src in enumerate(args.src):
            name = f"{i}:{src}"
            pid, port, gport, key = start_gateway(stack, folder / f"gw{i}", src, args.route,
                                                  upstream, args.audit,
                                                  grpc_listener=args.grpc_listener)
            targets.append(Target(name, pid, port, gport if args.route == "grpc" else None,
                                  key, args.route))
        for t in targets:
            t.run(wrk, args.connections, 1.0)  # warm up
        cpu: dict[str, list[float]] = {t.name: [] for t in targets}
        for r in range(args.rounds):
            for t in targets[r % len(targets):] + targets[:r % len(targets)]:
                c0 = cpu_seconds(t.pid)
                n = t.run(wrk, args.connections, args.duration)
                us = (cpu_seconds(t.pid) - c0) / n * 1e6
                cpu[t.name].append(us)
                print(f"round {r + 1} {t.name}: {n / args.duration:,.0f} req/s, "
                      f"{us:.0f} CPU µs/req", flush=True)
        if args.pyspy is not None:
            args.pyspy.mkdir(parents=True, exist_ok=True)
            for i, t in enumerate(targets):
                flame(t, wrk, args, args.pyspy / f"{args.route}-{i}")
    print(f"load average {os.getloadavg()}")
    for name, values in cpu.items():
        print(f"{name}: median {statistics.median(values):.0f} CPU µs/req "
              f"({', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()

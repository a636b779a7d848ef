"""Can one caller hurt another behind MLServer? Valid requests interleaved with hostile ones.

Starts a real MLServer (1.7, from its own virtualenv: MODELFENCE_TEST_MLSERVER or
.venv-mlserver/bin/mlserver) serving a scikit-learn digits model, and `modelfence serve` in
front of it. Caller A sends hostile requests (every field that crashed MLServer 1.7.1 when
forwarded as sent: request ids holding CRLF, non-Latin-1 text, spaces or 10 KB, tensor and
request `parameters` such as `content_type`, `headers` and `_decoded_payload`, deep or huge
parameters, odd names, datatypes and shapes, inputs MLServer answers with a 500 and a
closed connection) while caller B sends valid ones, each shuffled into one stream and sent
over a few concurrent connections.

Counted: B's failures (anything but a 200 carrying B's own id and the label its row must
get; target 0), and what each kind of A's requests got. A hostile request may get a 4xx
with a clear message, a 200 (its hostile part was not forwarded), or a 502 that hurt
nobody else; never a traceback.

Run: ``python bench/oip_poison.py`` (about a minute; ``--valid 1000 --hostile 1000``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml

from results import result, save
from servers import HOST, free_port, spawn, stop_on_sigterm, wait_http, workdir

ROOT = Path(__file__).resolve().parent.parent
MLSERVER_ENV = "MODELFENCE_TEST_MLSERVER"
FEATURES = 64
Body = dict[str, Any] | bytes


def mlserver_exe() -> Path:
    named = os.environ.get(MLSERVER_ENV)
    exe = Path(named) if named else ROOT / ".venv-mlserver" / "bin" / "mlserver"
    if not exe.is_file():
        sys.exit(f"no MLServer at {exe}: set {MLSERVER_ENV} to the mlserver of a venv with "
                 "mlserver and mlserver-sklearn (`make test` makes .venv-mlserver)")
    return exe


def digits() -> tuple[np.ndarray[Any, Any], Any]:
    """The digits rows (scaled to [0, 1]) and a LogisticRegression fitted on them."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    return x, LogisticRegression(max_iter=2000).fit(x, y)


def start_mlserver(stack: ExitStack, folder: Path, model: Any) -> str:
    import joblib

    port = free_port()
    model_dir = folder / "mlserver" / "digits"
    model_dir.mkdir(parents=True)
    joblib.dump(model, model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "digits", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"}}))
    (folder / "mlserver" / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 0, "host": HOST, "metrics_endpoint": None}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = folder / "mlserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(mlserver_exe()), "start", str(folder / "mlserver")],
                                cwd=folder / "mlserver", stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    stack.callback(_stop_group, proc)
    url = f"http://{HOST}:{port}"
    wait_http(f"{url}/v2/models/digits/ready", proc, log, timeout_s=90)
    return url


def _stop_group(proc: Any) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def gateway_models(upstream: str) -> list[dict[str, Any]]:
    oip = {"type": "oip", "url": upstream, "upstream_model": "digits", "timeout_s": 10}
    spec = {"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}
    return [
        # modelfence's classifier contract, from MLServer's predict_proba
        {"name": "digits", "input": spec,
         "backend": {**oip, "probabilities_output": "predict_proba"}},
        # MLServer's own outputs; two harmless parameters allow-listed
        {"name": "digits-raw", "input": spec,
         "backend": {**oip, "forward_parameters": ["trace", "note"]}},
        # any width passes the gateway: MLServer answers other widths than 64 with a 500
        # and closes that connection
        {"name": "digits-any", "input": {**spec, "shape": [-1, -1]}, "backend": oip},
    ]


def start_gateway(stack: ExitStack, folder: Path, upstream: str) -> tuple[str, str, str]:
    """The gateway's URL and two keys (callers A and B)."""
    import secrets

    (folder / "secret").write_text(secrets.token_urlsafe(48))
    port = free_port()
    config = folder / "modelfence.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": HOST, "port": port, "workers": 1, "admin_listen": None},
        "secret_file": "secret", "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": "jsonl:///audit.jsonl"}, "models": gateway_models(upstream)},
        sort_keys=False))
    keys = []
    for who in ("mallory", "bob"):
        out = subprocess.run(
            [sys.executable, "-m", "modelfence", "keys", "create", "--config", str(config),
             "--principal", who, "--tenant", "bench", "--model", "*", "--json"],
            capture_output=True, text=True, timeout=120, check=True).stdout
        keys.append(json.loads(out)["key"])
    log = folder / "gateway.log"
    proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config", str(config)],
                 log)
    url = f"http://{HOST}:{port}"
    wait_http(f"{url}/v2/health/live", proc, log)
    return url, keys[0], keys[1]


def infer_body(rows: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}


def _deep(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        doc = {"p": doc}
    return doc


def _with(**fields: Any) -> Callable[[dict[str, Any]], Body]:
    def make(body: dict[str, Any]) -> Body:
        return {**body, **fields}
    return make


def _input(**fields: Any) -> Callable[[dict[str, Any]], Body]:
    def make(body: dict[str, Any]) -> Body:
        return {**body, "inputs": [{**body["inputs"][0], **fields}]}
    return make


def _raw(data: bytes) -> Callable[[dict[str, Any]], Body]:
    return lambda body: data


#: (kind, model, how a valid body is made hostile). Every one crashed MLServer 1.7.1 when
#: sent to it as is, was refused by it, or is a bound the gateway must hold.
HOSTILE: list[tuple[str, str, Callable[[dict[str, Any]], Body]]] = [
    ("id CRLF", "digits-raw", _with(id="a\r\nX-Injected: 1")),
    ("id non-Latin-1", "digits-raw", _with(id="\u2603 snow \u20ac")),
    ("id Latin-1", "digits-raw", _with(id="caf\u00e9")),
    ("id 10 KB", "digits-raw", _with(id="x" * 10_240)),
    ("id 200 chars", "digits-raw", _with(id="y" * 200)),
    ("id spaces around", "digits-raw", _with(id=" padded ")),
    ("id NUL", "digits-raw", _with(id="a\x00b")),
    ("id number", "digits-raw", _with(id=12345)),
    ("input content_type str", "digits-raw", _input(parameters={"content_type": "str"})),
    ("input content_type pd", "digits", _input(parameters={"content_type": "pd"})),
    ("request content_type pd", "digits-raw", _with(parameters={"content_type": "pd"})),
    ("request headers CRLF", "digits-raw",
     _with(parameters={"headers": {"X-Evil": "a\r\nb"}})),
    ("input _decoded_payload", "digits-raw",
     _input(parameters={"_decoded_payload": [[1.0]]})),
    ("allowed param nested", "digits-raw", _with(parameters={"trace": _deep(6)})),
    ("allowed param CRLF", "digits-raw", _with(parameters={"note": "a\r\nb"})),
    ("allowed param 1 MB", "digits-raw", _with(parameters={"note": "n" * (1 << 20)})),
    ("parameters 250 deep", "digits-raw", _with(parameters=_deep(250))),
    ("parameters 20 KB", "digits-raw", _with(parameters={"x": "z" * 20_000})),
    ("parameters a list", "digits-raw", _with(parameters=[1, 2])),
    ("output content_type str", "digits-raw",
     _with(outputs=[{"name": "predict", "parameters": {"content_type": "str"}}])),
    ("output unknown", "digits-raw", _with(outputs=[{"name": "fit"}])),
    ("output unicode", "digits-raw", _with(outputs=[{"name": "pr\u00e9dict\u2603"}])),
    ("outputs 100", "digits-raw", _with(outputs=[{"name": "predict"}] * 100)),
    ("input name unicode", "digits-raw", _input(name="\u2603")),
    ("input name CRLF", "digits-raw", _input(name="in\r\nput")),
    ("two inputs", "digits-raw",
     lambda b: {**b, "inputs": [b["inputs"][0], {**b["inputs"][0], "name": "x2"}]}),
    ("datatype BYTES", "digits-raw",
     _input(datatype="BYTES", data=["a"] * FEATURES)),
    ("datatype BYTES any", "digits-any",
     _input(datatype="BYTES", data=["a"] * FEATURES)),
    ("datatype UINT64", "digits-raw", _input(datatype="UINT64", data=[2**63] * FEATURES)),
    ("datatype FP16 huge", "digits-raw", _input(datatype="FP16", data=[1e6] * FEATURES)),
    ("datatype bogus", "digits-raw", _input(datatype="FP128")),
    ("shape 32", "digits", _input(shape=[1, 32], data=[0.5] * 32)),
    # MLServer answers this with a 500 and closes the connection: sent more often than the
    # rest, so that its closed connections meet the valid requests again and again
    *[("shape 32 any (MLServer 500)", "digits-any", _input(shape=[1, 32], data=[0.5] * 32))
      ] * 8,
    ("shape 3-D any", "digits-any", _input(shape=[1, 8, 8], data=[0.5] * FEATURES)),
    ("shape [0, 64]", "digits-raw", _input(shape=[0, FEATURES], data=[])),
    ("shape lies", "digits-raw", _input(shape=[2, FEATURES])),
    ("3e38 value", "digits-raw", _input(data=[3e38] * FEATURES)),
    ("NaN literal", "digits-raw", _raw(b'{"inputs":[{"name":"input","shape":[1,1],'
                                       b'"datatype":"FP32","data":[NaN]}]}')),
    ("model_version injected", "digits-raw", _with(model_version="../../etc")),
    ("unknown top-level field", "digits-raw", _with(foo={"bar": [1] * 100})),
    ("not JSON", "digits-raw", _raw(b"\x00\xff{not json")),
    ("empty body", "digits-raw", _raw(b"")),
    ("10,000 rows", "digits-raw", _input(shape=[10_000, FEATURES], data=[0.5] * 640_000)),
]


def workload(n_valid: int, n_hostile: int, x: np.ndarray[Any, Any], labels: np.ndarray[Any, Any],
             seed: int) -> list[tuple[str, Any]]:
    """Shuffled ("valid", (model, body, id, label)) and ("hostile", (kind, model, body))."""
    rng = random.Random(seed)
    items: list[tuple[str, Any]] = []
    for i in range(n_valid):
        row = i % len(x)
        model = ("digits", "digits-raw", "digits-any")[i % 3]
        body = {**infer_body(x[row:row + 1]), "id": f"bob-{i}"}
        items.append(("valid", (model, body, f"bob-{i}", int(labels[row]))))
    for i in range(n_hostile):
        kind, model, make = HOSTILE[i % len(HOSTILE)]
        items.append(("hostile", (kind, model, make(infer_body(x[i % len(x):][:1])))))
    rng.shuffle(items)
    return items


async def send(session: aiohttp.ClientSession, url: str, key: str, body: Body
               ) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(url, data=data, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as r:
        return r.status, await r.text()


def valid_failure(model: str, status: int, text: str, want_id: str, label: int) -> str | None:
    """Why a valid answer is wrong, or None."""
    if status != 200:
        return f"{status} {text[:160]}"
    doc = json.loads(text)
    if doc.get("id") != want_id:
        return f"id {doc.get('id')!r}, not {want_id!r}"
    outputs = {o["name"]: o["data"] for o in doc["outputs"]}
    got = outputs.get("label" if model == "digits" else "predict")
    if got != [label]:
        return f"label {got}, not [{label}]"
    return None


async def run(gateway: str, key_a: str, key_b: str, items: list[tuple[str, Any]],
              connections: int) -> tuple[list[str], Counter[tuple[str, int]], list[str]]:
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    failures: list[str] = []
    hostile: Counter[tuple[str, int]] = Counter()
    unclear: list[str] = []
    conn_a = aiohttp.TCPConnector(limit=connections)
    conn_b = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn_a) as a, \
            aiohttp.ClientSession(connector=conn_b) as b:
        async def worker() -> None:
            while not queue.empty():
                what, args = queue.get_nowait()
                if what == "valid":
                    model, body, want_id, label = args
                    status, text = await send(b, f"{gateway}/v2/models/{model}/infer", key_b,
                                              body)
                    why = valid_failure(model, status, text, want_id, label)
                    if why:
                        failures.append(f"{model} {want_id}: {why}")
                    continue
                kind, model, body = args
                status, text = await send(a, f"{gateway}/v2/models/{model}/infer", key_a, body)
                hostile[(kind, status)] += 1
                if not _clear(status, text):
                    unclear.append(f"{kind}: {status} {text[:200]}")

        await asyncio.gather(*(worker() for _ in range(2 * connections)))
    return failures, hostile, unclear


def _clear(status: int, text: str) -> bool:
    """A 200, or an error with one readable `error` message and no traceback."""
    if "Traceback" in text or 'File "' in text:
        return False
    if status == 200:
        return True
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return set(doc) == {"error"} and isinstance(doc["error"], str) and len(doc["error"]) > 10


def report(args: argparse.Namespace, elapsed: float, failures: list[str],
           hostile: Counter[tuple[str, int]], unclear: list[str], log: str) -> dict[str, Any]:
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, status), n in sorted(hostile.items()):
        by_kind.setdefault(kind, {})[str(status)] = n
    statuses: Counter[int] = Counter()
    for (_, status), n in hostile.items():
        statuses[status] += n
    return {"valid": args.valid, "hostile": args.hostile, "connections": args.connections,
            "seconds": round(elapsed, 1), "valid_failures": len(failures),
            "failures": failures[:20], "hostile_statuses": dict(sorted(statuses.items())),
            "hostile_by_kind": by_kind, "unclear_answers": unclear[:20],
            "gateway_log_tracebacks": log.count("Traceback")}


COLUMNS = [{"key": "run", "title": "run"},
           {"key": "valid", "title": "valid requests", "format": "{:,}"},
           {"key": "failed", "title": "valid that failed", "format": "{:,}"},
           {"key": "hostile", "title": "hostile requests", "format": "{:,}"},
           {"key": "h200", "title": "hostile 200", "format": "{:,}"},
           {"key": "h400", "title": "hostile 400", "format": "{:,}"},
           {"key": "h502", "title": "hostile 502 (MLServer crashed)", "format": "{:,}"},
           {"key": "other", "title": "hostile, other statuses", "format": "{:,}"},
           {"key": "seconds", "title": "wall", "format": "{:.1f} s"}]


def saved_result(doc: dict[str, Any], seed: int, command: str) -> dict[str, Any]:
    """The run's counts in the docs' result format (valid failures in bold)."""
    statuses = {int(s): n for s, n in doc["hostile_statuses"].items()}
    row = {"run": f"{doc['connections']} + {doc['connections']} connections, seed {seed}",
           "valid": doc["valid"], "failed": doc["valid_failures"], "hostile": doc["hostile"],
           "h200": statuses.get(200, 0), "h400": statuses.get(400, 0),
           "h502": statuses.get(502, 0),
           "other": sum(n for s, n in statuses.items() if s not in {200, 400, 502}),
           "seconds": doc["seconds"], "emphasis": ["failed"]}
    return result("oip_poison", command, COLUMNS, [row], note=(
        f"Unclear answers: {len(doc['unclear_answers'])}; tracebacks in the gateway's log: "
        f"{doc['gateway_log_tracebacks']}."))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--valid", type=int, default=1000)
    p.add_argument("--hostile", type=int, default=1000)
    p.add_argument("--connections", type=int, default=4, help="per caller")
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--keep", type=Path, help="keep the servers' files and logs here")
    p.add_argument("--json", type=Path, help="write the result here too")
    p.add_argument("--save", type=Path, help="write the table as a result file the docs render "
                   "(bench/results.py; the docs quote bench/published/)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    x, model = digits()
    labels = model.predict(x)
    with workdir(args.keep, prefix="oip-poison-") as folder, ExitStack() as stack:
        if args.keep:
            shutil.rmtree(folder / "mlserver", ignore_errors=True)
        upstream = start_mlserver(stack, folder, model)
        gateway, key_a, key_b = start_gateway(stack, folder, upstream)
        items = workload(args.valid, args.hostile, x, labels, args.seed)
        started = time.perf_counter()
        failures, hostile, unclear = asyncio.run(run(gateway, key_a, key_b, items,
                                                     args.connections))
        elapsed = time.perf_counter() - started
        doc = report(args, elapsed, failures, hostile, unclear,
                     (folder / "gateway.log").read_text(errors="replace"))
    text = json.dumps(doc, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if args.save:
        save(args.save, saved_result(doc, args.seed, shlex.join(
            ["python", "bench/oip_poison.py", *sys.argv[1:]])))
    return 1 if failures or unclear else 0


if __name__ == "__main__":
    sys.exit(main())

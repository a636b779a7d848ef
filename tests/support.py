"""Helpers for tests that run real gateway processes on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, NoReturn

import yaml

IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_or_fail(message: str) -> NoReturn:
    """Skip a test whose service or tool is missing, visibly; under CI=true, fail instead."""
    import pytest

    if IN_CI:
        pytest.fail(message + "; CI=true requires it")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A free port whose next port is free too: the demo's admin listener takes port + 1."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free ports in a row on loopback")


def interrupt(proc: subprocess.Popen[Any], timeout_s: float) -> None:
    """Stop `proc` as Ctrl+C does; kill it if it has not ended within `timeout_s`."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(url: str, *, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text() if log else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered:\n"
                               f"{text[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback only)
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def cli(*args: str, env: dict[str, str] | None = None, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    """Run the real `modelfence` command line."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "modelfence", *args], capture_output=True,
                            text=True, env=full_env, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"modelfence {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def cli_in_process(*args: str) -> str:
    """Run the `modelfence` command line inside this process and return its standard output.

    For setup steps (minting a key) that many tests repeat: it spares starting an interpreter
    and importing modelfence each time (about a second of CPU). The command line as a user
    runs it, a process of its own, stays tested through `cli`. It runs in a thread of its
    own because the commands call asyncio.run, which an async test's running loop forbids.
    """
    from typer.testing import CliRunner

    from modelfence.cli.main import app

    with ThreadPoolExecutor(max_workers=1) as pool:
        result = pool.submit(CliRunner().invoke, app, list(args)).result()
    if result.exit_code != 0:
        detail = "".join(traceback.format_exception(result.exception)) if (
            result.exception and not isinstance(result.exception, SystemExit)) else ""
        raise AssertionError(f"modelfence {' '.join(args)} failed ({result.exit_code}):\n"
                             f"{result.output}\n{detail}")
    return result.stdout


@dataclass
class Gateway:
    """A `modelfence serve` process with its own folder, config, secret and log."""

    folder: Path
    models: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """The admin listener: the admin API, /admin/ready and /metrics."""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def config(self) -> Path:
        return self.folder / "modelfence.yaml"

    @property
    def log(self) -> Path:
        return self.folder / "gateway.log"

    def write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "secret").exists():  # a restart keeps the secret and the keys
            (self.folder / "secret").write_text(secrets.token_urlsafe(48))
        (self.folder / "admin-token").write_text(self.admin_token)
        doc: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": self.port, "max_body_bytes": 256 * 1024,
                       "admin_listen": f"127.0.0.1:{self.admin_port}"},
            "secret_file": "secret",
            "admin": {"token_file": "admin-token"},
            "stores": {"keys": "sqlite:///keys.db"},
            "audit": {"sink": "jsonl:///audit.jsonl"},
            "models": self.models,
        }
        doc.update(self.extra)
        self.config.write_text(yaml.safe_dump(doc, sort_keys=False))

    def start(self) -> Gateway:
        self.write_config()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelfence", "serve", "--config", str(self.config),
                 "--log-level", "DEBUG"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_http(f"{self.url}/v2/health/live", proc=self.proc, log=self.log)
            if self.admin_listens():
                wait_http(f"{self.admin_url}/metrics", proc=self.proc, log=self.log)
        except BaseException:
            self.stop()  # not left running (and warned about) after a start that failed
            raise
        return self

    def admin_listens(self) -> bool:
        server = self.extra.get("server", {})
        return "admin_listen" not in server or server["admin_listen"] == (
            f"127.0.0.1:{self.admin_port}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def kill(self) -> None:
        """SIGKILL the server and its worker processes at once, as a crash would (killing
        only the main process leaves its workers running)."""
        assert self.proc is not None
        pids = [*descendants(self.proc.pid), self.proc.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)

    def key(self, *, models: list[str] | None = None, principal: str = "alice",
            tenant: str = "acme", expires_in: str | None = None) -> str:
        args = ["keys", "create", "--config", str(self.config), "--principal", principal,
                "--tenant", tenant, "--json"]
        for m in models if models is not None else [mm["name"] for mm in self.models]:
            args += ["--model", m]
        if expires_in:
            args += ["--expires-in", expires_in]
        return str(json.loads(cli_in_process(*args))["key"])

    def audit_records(self) -> list[dict[str, Any]]:
        path = self.folder / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def audit_text(self) -> str:
        path = self.folder / "audit.jsonl"
        return path.read_text() if path.exists() else ""


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [c for c, p in parents.items() if p == parent]
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def train_digits(folder: Path) -> dict[str, Path]:
    """A small digits classifier saved as skops, ONNX (if skl2onnx is there) and joblib."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from modelfence.extras import skops_io

    sio = skops_io()

    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=2000).fit(x / 16.0, y)
    paths = {"skops": folder / "digits.skops", "joblib": folder / "digits.joblib"}
    sio.dump(model, paths["skops"])
    joblib.dump(model, paths["joblib"])
    try:
        from skl2onnx import to_onnx
    except ImportError:
        return paths
    onx = to_onnx(model, (x[:1] / 16.0).astype("float32"), options={"zipmap": False},
                  target_opset=17)
    paths["onnx"] = folder / "digits.onnx"
    paths["onnx"].write_bytes(onx.SerializeToString())
    return paths


def digits_rows(n: int = 1) -> list[list[float]]:
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    return [[float(v) / 16.0 for v in row] for row in x[:n]]


def infer_body(rows: list[list[float]], *, name: str = "input", datatype: str = "FP32"
               ) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": [len(rows), len(rows[0])], "datatype": datatype,
                        "data": [v for row in rows for v in row]}]}


def ec_key_pair(private: Path, public: Path) -> None:
    """A fresh ECDSA P-256 signing key as PEM files (PKCS#8 private, SPKI public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a test's server process if it still runs; SIGKILL after 10 s without an end."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def http_receiver(handler: type[BaseHTTPRequestHandler], port: int | None = None
                  ) -> Iterator[int]:
    """A loopback HTTP server answering with `handler` in a thread; yields its port."""
    server = HTTPServer(("127.0.0.1", port or free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()

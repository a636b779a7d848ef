"""Start and always stop the benchmark's server processes, on 127.0.0.1 only.

Every process is started in its own session (process group) and registered on an
`ExitStack`, so it is stopped when the stack closes, error or not: SIGTERM to the
process we started, then SIGKILL to its group (granian's workers) if anything is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class Server:
    """A started server; `pgid` is its process group (the process and its workers)."""

    name: str
    url: str
    log: Path
    pgid: int


def cpu_seconds(pgid: int, *, reaped: bool = False) -> float:
    """User + system CPU time used so far by the live processes of process group `pgid`;
    with `reaped`, also that of their children that have ended (utime, stime, cutime,
    cstime)."""
    ticks = 0
    last = 15 if reaped else 13
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[2]) == pgid:
            ticks += sum(int(f) for f in fields[11:last])
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created: leftover workers only


def spawn(stack: ExitStack, argv: list[str], log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    """Start `argv` with output to `log`; the stack stops it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                start_new_session=True)
    stack.callback(_stop, proc)
    return proc


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0
              ) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv0(proc)} exited with {proc.returncode} before {url} "
                               f"answered; its log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback only)
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g} s; see {log}")


def argv0(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args
    return " ".join(map(str, args)) if isinstance(args, list) else str(args)


def start_granian(stack: ExitStack, name: str, target: str, folder: Path,
                  env: dict[str, str], health: str = "/v2/health/live") -> Server:
    """One granian worker serving the factory `target` from a module in bench/; it is up
    once GET `health` answers."""
    port = free_port()
    log = folder / f"{name}.log"
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
    proc = spawn(stack, [sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
                         "--host", HOST, "--port", str(port), "--workers", "1",
                         "--backlog", "2048", "--no-access-log", "--log-level", "warning",
                         target], log, {**env, "PYTHONPATH": path})
    url = f"http://{HOST}:{port}"
    wait_http(url + health, proc, log)
    return Server(name, url, log, proc.pid)


def _modelfence(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "modelfence", *args], capture_output=True,
                            text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"modelfence {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stdout}\n{result.stderr}")
    return result.stdout


def protections(folder: Path) -> dict[str, Any]:
    """The monitor, three output bands and the watermark for `digits`, with the files they
    need: a summary of the backend's model (the same LogisticRegression on digits / 16) and
    a watermark secret. Merged into the config by `--monitor`."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from modelfence.monitor.summary import Summary

    x, y = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=2000).fit(x / 16.0, y)
    Summary.fit(x[1000:] / 16.0, model.predict_proba(x[1000:] / 16.0)).save(
        folder / "digits.summary.npz")
    (folder / "wm.secret").write_text(secrets.token_urlsafe(48))
    return {
        "model": {"monitor": {"summary": "digits.summary.npz"}, "shaping": [
            {"from_risk": 0.0, "defense": "none", "name": "full"},
            {"from_risk": 0.5, "defense": "topk:3+round:2", "name": "reduced"},
            {"from_risk": 0.8, "defense": "labels", "name": "labels"}]},
        "top": {"monitor": {"state_dir": "monitor-state"},
                "watermark": {"keys": [{"id": "k1", "secret_file": "wm.secret"}],
                              "evidence_store": "sqlite:///evidence.db"}},
    }


def gateway_config(port: int, backend_url: str, audit_sink: str) -> dict[str, Any]:
    """The full chain (API-key identity, model access, bounded body, validation, metrics,
    audit to `audit_sink`); one worker; `digits` on the upstream OIP server."""
    return {
        "server": {"host": HOST, "port": port, "workers": 1, "admin_listen": None},
        "secret_file": "secret",
        "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": audit_sink},
        "models": [{
            "name": "digits",
            "backend": {"type": "oip", "url": backend_url,
                        "probabilities_output": "probabilities"},
            "input": {"name": "input", "datatype": "FP32", "shape": [-1, 64]},
        }],
    }


def start_gateway(stack: ExitStack, folder: Path, backend_url: str,
                  audit_sink: str = "jsonl:///audit.jsonl", *, protect: bool = False,
                  extra: dict[str, Any] | None = None) -> tuple[Server, str]:
    """`modelfence serve` in `folder` in front of `backend_url`, and a key for `digits`;
    with `protect`, also the monitor, output bands and watermark; `extra`: top-level config
    sections added (e.g. `quotas`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "secret").write_text(secrets.token_urlsafe(48))
    port = free_port()
    config = folder / "modelfence.yaml"
    doc = gateway_config(port, backend_url, audit_sink)
    if protect:
        added = protections(folder)
        doc["models"][0].update(added["model"])
        doc.update(added["top"])
    doc.update(extra or {})
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    key = json.loads(_modelfence("keys", "create", "--config", str(config), "--principal",
                                 "bench", "--tenant", "bench", "--model", "digits",
                                 "--json"))["key"]
    log = folder / "gateway.log"
    proc = spawn(stack, [sys.executable, "-m", "modelfence", "serve", "--config", str(config)],
                 log)
    url = f"http://{HOST}:{port}"
    wait_http(f"{url}/v2/health/live", proc, log)
    return Server("gateway", url, log, proc.pid), str(key)


@contextlib.contextmanager
def workdir(keep: Path | None, *, prefix: str) -> Iterator[Path]:
    """`keep` (created, kept afterwards) or a temporary folder removed at the end."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwinds the ExitStack, which stops every server."""
    raise SystemExit(128 + signum)


def cpu_model() -> str:
    """The CPU's model name, for the machine line of a report."""
    with Path("/proc/cpuinfo").open() as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"

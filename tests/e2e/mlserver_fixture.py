"""A real MLServer on loopback, from its own virtualenv (its pins conflict with ours).

The executable is the one named by MODELFENCE_TEST_MLSERVER (`make test` and CI set it),
else the Makefile's .venv-mlserver, else /tmp/vml/bin/mlserver, else `mlserver` on PATH.
Without one, tests skip with the reason; with CI=true they fail instead, as for
PostgreSQL in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..support import skip_or_fail, wait_http

MLSERVER_ENV = "MODELFENCE_TEST_MLSERVER"
DEFAULT_MLSERVERS = (Path(__file__).resolve().parents[2] / ".venv-mlserver" / "bin" / "mlserver",
                     Path("/tmp/vml/bin/mlserver"))
START_TIMEOUT_S = 60.0


def find_mlserver() -> tuple[Path | None, str]:
    """(executable, "") or (None, why there is none)."""
    named = os.environ.get(MLSERVER_ENV)
    if named:
        path = Path(named)
        if path.is_file() and os.access(path, os.X_OK):
            return path, ""
        return None, f"{MLSERVER_ENV}={named} is not an executable file"
    for path in DEFAULT_MLSERVERS:
        if path.is_file() and os.access(path, os.X_OK):
            return path, ""
    on_path = shutil.which("mlserver")
    if on_path:
        return Path(on_path), ""
    return None, (f"no mlserver executable: set {MLSERVER_ENV} to the mlserver of a venv with "
                  "mlserver and mlserver-sklearn (`make test` makes one in .venv-mlserver)")


def require_mlserver() -> Path:
    """The executable, or skip (fail under CI=true) with a visible reason."""
    exe, why = find_mlserver()
    if exe is None:
        skip_or_fail(why)
    return exe


def free_ports(n: int, *, avoid: Collection[int] = ()) -> list[int]:
    """`n` distinct free loopback ports (held open together, so none repeats)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < n:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in avoid:
                ports.append(port)
        return ports


@dataclass
class MLServer:
    """`mlserver start FOLDER` serving scikit-learn models saved with joblib."""

    exe: Path
    folder: Path
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    grpc_port: int = 0  # chosen at start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log(self) -> Path:
        return self.folder / "mlserver.log"

    def log_size(self) -> int:
        """The log's length in bytes now: give it to `log_since` to read what comes after."""
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, offset: int) -> str:
        """What the server logged after `offset` (from `log_size`): a test's own share of a
        server that other tests use too."""
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def requests_logged(self, method: str, path: str) -> int:
        """How many `METHOD PATH` lines uvicorn's access log holds so far."""
        needle = f'"{method} {path} HTTP/'
        return self.log.read_text(errors="replace").count(needle)

    def start(self, models: dict[str, Path]) -> MLServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.grpc_port, metrics_port = free_ports(2, avoid={self.http_port})
        settings = {"http_port": self.http_port, "grpc_port": self.grpc_port,
                    "metrics_port": metrics_port, "parallel_workers": 0, "host": "127.0.0.1",
                    "metrics_endpoint": None}
        (self.folder / "settings.json").write_text(json.dumps(settings))
        for name, joblib_file in models.items():
            model_dir = self.folder / name
            model_dir.mkdir()
            shutil.copyfile(joblib_file, model_dir / "model.joblib")
            (model_dir / "model-settings.json").write_text(json.dumps({
                "name": name, "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"}}))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)  # MLServer runs on its own venv's packages only
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([str(self.exe), "start", str(self.folder)],
                                         cwd=self.folder, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            for name in models:
                left = max(1.0, deadline - time.monotonic())
                wait_http(f"{self.url}/v2/models/{name}/ready", timeout_s=left, proc=self.proc,
                          log=self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """SIGTERM its process group (a session of its own, so workers go too), then SIGKILL.

        The group is signalled only while its leader is unreaped, so its id cannot be reused.
        """
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout_s)


@contextlib.contextmanager
def running_mlserver(folder: Path, models: dict[str, Path]) -> Iterator[MLServer]:
    """An MLServer serving `models` (name → joblib file), stopped on exit; skips if absent."""
    server = MLServer(require_mlserver(), folder, free_ports(1)[0]).start(models)
    try:
        yield server
    finally:
        server.stop()


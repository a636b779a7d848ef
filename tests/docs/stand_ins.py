"""What the docs tests put in place of the systems a page needs and this machine lacks.

A snippet marked `<!-- stand-in: what -->` runs against what this module starts for its page:
the stand-in model servers of `modelfence example` (modelfence.cli.stand_ins) for a KServe
model or a vLLM endpoint, a local RFC 3161 time-stamping authority, a SoftHSM2 token. Each
page's entry says what it changes in the page's snippets: a documented address becomes the
stand-in's (`ports`, `substitutions`), and the files the page tells its reader to make (the
configuration of its step 2, their own traffic sample) are made in the page's folder. Nothing
else in a snippet changes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from ..support import free_port, interrupt, wait_http
from .snippets import ROOT, Snippet


@dataclass
class World:
    """What a page's snippets see: ports and text replaced, extra environment."""

    ports: dict[int, int] = field(default_factory=dict)
    substitutions: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # written with the page's ports


StandIn = Callable[[list[Snippet], Path], contextlib.AbstractContextManager[World]]


def _gateway_config(page: list[Snippet]) -> str:
    """The page's gateway configuration: its first YAML block with a `server` section."""
    return next(s.code for s in page if s.kind == "yaml"
                and "server" in (yaml.safe_load(s.code) or {}))


@contextlib.contextmanager
def kserve(page: list[Snippet], workdir: Path) -> Iterator[World]:
    """The predictor of step 1 as an OIP stand-in serving `churn` (12 features, 2 classes);
    step 2's configuration saved as modelfence.yaml with the url its comment offers for a
    forwarded port (http://127.0.0.1:8080) and its gRPC port (8081) made a free one; rows of
    12 features as recent-traffic.parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modelfence.cli.stand_ins import OipModel, oip_stand_in

    server = oip_stand_in([OipModel("churn", 12, 2)]).start()
    config = _gateway_config(page).replace(
        "http://churn-predictor.models.svc.cluster.local", "http://127.0.0.1:8080")
    rows = np.random.default_rng(0).normal(size=(600, 12)).astype("float32")
    pq.write_table(pa.table({f"f{i}": rows[:, i] for i in range(12)}),
                   workdir / "recent-traffic.parquet")
    yield World(ports={8080: server.port, 8000: free_port(), 8081: free_port(),
                       9090: free_port()},
                files={"modelfence.yaml": config})


@contextlib.contextmanager
def vllm(page: list[Snippet], workdir: Path) -> Iterator[World]:
    """vLLM of step 1 as the OpenAI-compatible stand-in, demanding the key in upstream-key;
    step 2's configuration saved as modelfence.yaml."""
    from modelfence.cli.stand_ins import openai_stand_in

    upstream_key = secrets.token_urlsafe(24)
    (workdir / "upstream-key").write_text(upstream_key + "\n")
    server = openai_stand_in(upstream_key).start()
    yield World(ports={8080: server.port, 8000: free_port(), 9090: free_port()},
                files={"modelfence.yaml": _gateway_config(page)})


@contextlib.contextmanager
def llm_concept(page: list[Snippet], workdir: Path) -> Iterator[World]:
    """A gateway serving the page's `support-bot` entry on 8000, in front of the OpenAI
    stand-in, with a key minted for it (put where the snippet says `mf_…`); the prompt
    classifier at the entry's `screening.external.url` is a stand-in that finds every prompt
    safe. The entry loses what loads models from the `llm` extra (distill, canary.semantic:
    a minute of CPU on this machine) and the `tiny` local model; the rest is the page's."""
    from modelfence.cli.stand_ins import openai_stand_in

    entry = next(m for s in page if s.kind == "yaml"
                 for m in (yaml.safe_load(s.code) or {}).get("llm", {}).get("models", [])
                 if m["name"] == "support-bot")
    entry.pop("distill", None)
    entry["canary"]["semantic"] = False
    folder = workdir / "support-bot-gateway"
    folder.mkdir()
    upstream_key = secrets.token_urlsafe(24)
    (folder / "upstream-key").write_text(upstream_key + "\n")
    (folder / "secret").write_text(secrets.token_urlsafe(48) + "\n")
    upstream = openai_stand_in(upstream_key).start()
    entry["upstream"] = f"{upstream.base}/v1"
    classifier = _answering(b'[{"label": "SAFE", "score": 0.99}]')
    entry["screening"]["external"]["url"] = (
        f"http://127.0.0.1:{classifier.server_address[1]}/classify")
    port, admin = free_port(), free_port()
    (folder / "modelfence.yaml").write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": port, "admin_listen": f"127.0.0.1:{admin}"},
        "secret_file": "secret", "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": "sqlite:///audit.db"}, "llm": {"models": [entry]}}))
    cli = [str(ROOT / ".venv/bin/modelfence")]
    made = subprocess.run([*cli, "keys", "create", "--config", "modelfence.yaml", "--principal",
                           "docs", "--tenant", "docs", "--model", "support-bot", "--json"],
                          cwd=folder, capture_output=True, text=True, check=True, timeout=60)
    key = yaml.safe_load(made.stdout)["key"]
    log = folder / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*cli, "serve", "--config", "modelfence.yaml"], cwd=folder,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{admin}/admin/ready", timeout_s=60, proc=proc, log=log)
        yield World(ports={8000: port}, substitutions={"mf_…": key})
    finally:
        interrupt(proc, 15)
        classifier.shutdown()
        classifier.server_close()


def _answering(answer: bytes) -> ThreadingHTTPServer:
    """A loopback HTTP server answering every POST with `answer` (JSON)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextlib.contextmanager
def tsa(page: list[Snippet], workdir: Path) -> Iterator[World]:
    """tsa.example.com as a local RFC 3161 authority (`openssl ts -reply` behind HTTP, the
    one tests/unit/test_evidence_timestamp.py checks timestamps against); its CA certificate
    is the tsa-ca.pem the page trusts."""
    from ..unit.test_evidence_timestamp import _make_tsa, _openssl_reply

    folder = workdir / "tsa"
    folder.mkdir()
    _make_tsa(folder, "ec")
    shutil.copy(folder / "ca.pem", workdir / "tsa-ca.pem")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                reply = _openssl_reply(folder, body)
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield World(substitutions={"https://tsa.example.com/tsr":
                                   f"http://127.0.0.1:{server.server_address[1]}/tsr"})
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def softhsm(page: list[Snippet], workdir: Path) -> Iterator[World]:
    """A SoftHSM2 token `models` holding the EC key `signer` (made by the same Pkcs11Key as
    tests/unit/test_artifact_sign_scan.py's), its user PIN in token-pin, and a model folder
    models/fraud/ (weights and a config)."""
    module = Path("/usr/lib/softhsm/libsofthsm2.so")
    if not module.exists() or shutil.which("softhsm2-util") is None:
        raise RuntimeError("the PKCS#11 snippet needs SoftHSM2 (apt-get install softhsm2)")
    (workdir / "tokens").mkdir()
    conf = workdir / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {workdir / 'tokens'}\n"
                    "objectstore.backend = file\nlog.level = ERROR\n")
    pin = secrets.token_hex(4)
    env = {"SOFTHSM2_CONF": str(conf)}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "models",
                    "--so-pin", secrets.token_hex(4), "--pin", pin], check=True,
                   capture_output=True, env={**os.environ, **env})
    (workdir / "token-pin").write_text(pin + "\n")
    make_key = ("import sys; from pathlib import Path; "
                "from modelfence.artifacts.signing import Pkcs11Key; "
                "Pkcs11Key(Path(sys.argv[1]), 'models', sys.argv[2], 'signer').generate()")
    subprocess.run([str(ROOT / ".venv/bin/python"), "-c", make_key, str(module), pin],
                   check=True, capture_output=True, env={**os.environ, **env}, timeout=60)
    model = workdir / "models" / "fraud"
    model.mkdir(parents=True)
    (model / "weights.bin").write_bytes(os.urandom(10_000))
    (model / "config.json").write_text('{"classes": 2}\n')
    yield World(env=env)


@contextlib.contextmanager
def own_data(page: list[Snippet], workdir: Path) -> Iterator[World]:
    """The reader's own model and data: model.skops, a scikit-learn classifier of the digits
    (pixels scaled to [0, 1], as the demo's), and data.npz, the digits as `x` with labels `y`."""
    import numpy as np
    from sklearn.datasets import load_digits

    from .held_runs import digits_model

    digits_model(workdir / "model.skops")
    x, y = load_digits(return_X_y=True)
    np.savez(workdir / "data.npz", x=x / 16.0, y=y)
    yield World()


#: Each page whose snippets need stand-ins, by its path from the repository root.
STAND_INS: dict[str, StandIn] = {
    "docs/tutorials/kserve.md": kserve,
    "docs/tutorials/vllm.md": vllm,
    "docs/concepts/llm.md": llm_concept,
    "docs/tutorials/prove-a-copy.md": tsa,
    "docs/concepts/artifacts.md": softhsm,
    "docs/concepts/redteam.md": own_data,
}

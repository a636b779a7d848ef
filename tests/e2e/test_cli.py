"""The command line as a user runs it: one-line errors, keys, config check, the demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ..support import cli, free_port_pair, interrupt, wait_http


def test_bad_config_fails_in_one_line_without_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "modelfence.yaml"
    cfg.write_text("server:\n  port: 'eighty'\n")
    result = cli("serve", "--config", str(cfg), check=False)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {cfg}: server.port: input should be a valid integer, unable to "
                     "parse string as an integer"], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_missing_model_file_fails_before_serving(tmp_path: Path) -> None:
    cfg = tmp_path / "modelfence.yaml"
    (tmp_path / "secret").write_text("s" * 48)
    cfg.write_text("secret_file: secret\nmodels:\n  - {name: m, backend: {type: skops, "
                   "path: missing.skops}}\n")
    result = cli("serve", "--config", str(cfg), check=False)
    assert result.returncode == 2
    assert "model m: cannot read skops file" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreadable_secret_file_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    """A replica whose secret cannot be read stops at once with one line naming the file and
    the reason (here a folder where the file should be: root reads any file's mode)."""
    (tmp_path / "server-secret").mkdir()
    cfg = tmp_path / "modelfence.yaml"
    cfg.write_text("secret_file: server-secret\nmodels: []\n")
    result = cli("serve", "--config", str(cfg), check=False)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {tmp_path / 'server-secret'}: cannot read secret file: "
                     "Is a directory"], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_untrusted_skops_types_are_refused(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    sio.dump(MLPClassifier(max_iter=5).fit(x[:200], y[:200]), tmp_path / "mlp.skops")
    (tmp_path / "secret").write_text("s" * 48)
    cfg = tmp_path / "modelfence.yaml"
    cfg.write_text("secret_file: secret\nstores: {keys: 'memory://'}\nmodels:\n"
                   "  - {name: m, backend: {type: skops, path: mlp.skops}}\n")
    result = cli("config", "check", "--config", str(cfg), check=False)
    assert result.returncode == 2
    assert "AdamOptimizer" in result.stderr and "trusted_types" in result.stderr
    cfg.write_text(cfg.read_text().replace(
        "path: mlp.skops}", "path: mlp.skops, trusted_types: "
        "[sklearn.neural_network._stochastic_optimizers.AdamOptimizer]}"))
    ok = cli("config", "check", "--config", str(cfg))
    assert "ok" in ok.stdout


def test_pickle_needs_explicit_consent(tmp_path: Path, digits_files: dict[str, Path]) -> None:
    (tmp_path / "secret").write_text("s" * 48)
    cfg = tmp_path / "modelfence.yaml"
    base = (f"secret_file: secret\nstores: {{keys: 'memory://'}}\nmodels:\n"
            f"  - {{name: m, backend: {{type: pickle, path: {digits_files['joblib']}")
    cfg.write_text(base + "}}\n")
    refused = cli("config", "check", "--config", str(cfg), check=False)
    assert refused.returncode == 2 and "pickle runs arbitrary code" in refused.stderr
    cfg.write_text(base + ", allow_unsafe_pickle: true}}\n")
    assert cli("config", "check", "--config", str(cfg)).returncode == 0


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s" * 48)
    cfg = tmp_path / "modelfence.yaml"
    cfg.write_text("secret_file: secret\nstores: {keys: 'sqlite:///keys.db'}\n")
    created = cli("keys", "create", "--config", str(cfg), "--principal", "alice", "--tenant",
                  "acme", "--model", "digits", "--group", "analysts", "--expires-in", "30d")
    key = re.search(r"mf_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", created.stdout)
    assert key is not None, created.stdout
    key_id = key.group(0).split("_")[1]
    listing = cli("keys", "list", "--config", str(cfg), "--json").stdout
    rows = json.loads(listing)["keys"]
    assert [r["key_id"] for r in rows] == [key_id]
    assert rows[0]["groups"] == ["analysts"] and rows[0]["status"] == "active"
    assert key.group(0) not in listing
    assert cli("keys", "revoke", key_id, "--config", str(cfg)).returncode == 0
    assert json.loads(cli("keys", "list", "--config", str(cfg), "--json").stdout
                      )["keys"][0]["status"] == "revoked"
    table = cli("keys", "list", "--config", str(cfg)).stdout
    assert key_id in table and "revoked" in table
    missing = cli("keys", "revoke", "ffffffffffffffff", "--config", str(cfg), check=False)
    assert missing.returncode == 1 and "no key with id" in missing.stderr
    bad = cli("keys", "create", "--config", str(cfg), "--principal", "a b", "--tenant", "t",
              check=False)
    assert bad.returncode == 1 and "principal: must be" in bad.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    (tmp_path / "secret").write_text("s" * 48)
    cfg = tmp_path / "modelfence.yaml"
    cfg.write_text("secret_file: secret\nstores: {keys: 'memory://'}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = cli("serve", "--config", str(cfg), "--port", str(port), check=False)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def run_demo(home: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    """Start `modelfence demo` and return it with the curl command it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfence", "demo", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "MODELFENCE_HOME": str(home), "COLUMNS": "80"})
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("curl -s http") and "/infer" in line:
            try:
                wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc=proc)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            return proc, line.strip()
    proc.kill()
    raise AssertionError("demo printed no curl command:\n" + "".join(lines))


def stop(proc: subprocess.Popen[str]) -> None:
    interrupt(proc, 10)
    if proc.stdout:
        proc.stdout.close()


def test_demo_prints_a_curl_that_works_and_reuses_its_model(tmp_path: Path) -> None:
    port = free_port_pair()
    proc, curl = run_demo(tmp_path, port)
    try:
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=20)
        doc = json.loads(answer.stdout)
        names = [o["name"] for o in doc["outputs"]]
        assert names == ["probabilities", "label"]
        assert abs(sum(doc["outputs"][0]["data"]) - 1.0) < 1e-4
        # metrics on the admin listener the demo names (port + 1), not on the public port
        assert proc.stdout is not None
        printed = ""
        while "/metrics" not in printed:
            printed += proc.stdout.readline()
        admin = f"http://127.0.0.1:{port + 1}"
        assert f"{admin}/metrics" in printed
        with urllib.request.urlopen(f"{admin}/metrics", timeout=5) as r:  # noqa: S310
            assert b"modelfence_" in r.read()
        with pytest.raises(urllib.error.HTTPError) as public:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert public.value.code == 404
        public.value.close()
    finally:
        stop(proc)
    model = tmp_path / "demo" / "digits.skops"
    mtime = model.stat().st_mtime
    proc, second_curl = run_demo(tmp_path, port)
    try:
        assert model.stat().st_mtime == mtime  # reused, not retrained
        new_ok = subprocess.run(["bash", "-c", second_curl], capture_output=True, text=True,
                                timeout=20)
        assert json.loads(new_ok.stdout)["outputs"][0]["name"] == "probabilities"
        old = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=20)
        assert json.loads(old.stdout) == {"error": "missing or invalid credentials"}
    finally:
        stop(proc)

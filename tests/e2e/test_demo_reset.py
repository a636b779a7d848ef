"""`modelfence demo --reset`: the demo remembers its caller's risk across restarts, as a
gateway should, until the newcomer asks it to forget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from ..support import free_port_pair, wait_http
from .test_cli import stop

ROWS = 20  # off-data rows asked on every run: the flagged band lies about them


def start_demo(home: Path, port: int, *args: str) -> tuple[subprocess.Popen[str], str, str]:
    """`modelfence demo` with `args`: the process, its demo key and what it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfence", "demo", "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "MODELFENCE_HOME": str(home), "COLUMNS": "80"})
    assert proc.stdout is not None
    printed = ""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and "press Ctrl+C" not in printed:
        line = proc.stdout.readline()
        if not line:
            break
        printed += line
    key = next((w for w in printed.split() if w.startswith("mf_")), None)
    if key is None:
        stop(proc)
        raise AssertionError("the demo printed no key:\n" + printed)
    wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc=proc)
    return proc, key, printed


def labels(port: int, key: str, rows: np.ndarray[Any, Any]) -> list[int]:
    body = json.dumps({"inputs": [{"name": "input", "shape": list(rows.shape),
                                   "datatype": "FP32", "data": rows.ravel().tolist()}]})
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/digits/infer", data=body.encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as answer:  # noqa: S310 (loopback)
        doc = json.loads(answer.read())
    (label,) = [o for o in doc["outputs"] if o["name"] == "label"]
    return [int(v) for v in label["data"]]


def test_reset_forgets_the_risk_an_earlier_run_remembered(tmp_path: Path) -> None:
    port = free_port_pair()
    rng = np.random.default_rng(7)
    probe = rng.uniform(0, 16, (ROWS, 64))
    proc, key, _ = start_demo(tmp_path, port)
    try:
        truth = labels(port, key, probe)  # a fresh caller: the model's own answers
        for _ in range(30):  # the README's experiment: random rows until flagged
            labels(port, key, rng.uniform(0, 16, (50, 64)))
    finally:
        stop(proc)

    proc, key, printed = start_demo(tmp_path, port)
    try:
        said = " ".join(printed.split())
        assert "note: the demo caller's risk is" in said and "band 'flagged'" in said
        assert "modelfence demo --reset forgets it" in said
        remembered = labels(port, key, probe)
    finally:
        stop(proc)
    assert sum(a != b for a, b in zip(remembered, truth, strict=True)) >= ROWS // 2

    proc, key, printed = start_demo(tmp_path, port, "--reset")
    try:
        said = " ".join(printed.split())
        assert f"reset {tmp_path / 'demo'}: removed monitor-state/" in said
        assert "audit.db" in said and "keys.db" in said and "modelfence.yaml" in said
        assert "kept the model" in said and "note:" not in said
        assert "trained a digits classifier" not in said  # the model is reused
        assert labels(port, key, probe) == truth
    finally:
        stop(proc)

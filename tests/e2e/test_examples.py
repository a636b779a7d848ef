"""`modelfence example NAME` runs each config in examples/ as shipped, with its secrets, key,
database role, model file and upstream made for it, and answers an authenticated request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support import free_port, interrupt, wait_http

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: one password for every example's database role, so examples run in parallel agree on it
PG_PASSWORD = "example-tests-only-password"


def _cases() -> Iterator[object]:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        text = path.read_text()
        marks = [*([pytest.mark.postgres] if "postgresql://" in text else []),
                 *([pytest.mark.redis] if "redis://" in text else [])]
        yield pytest.param(path.stem, marks=marks, id=path.stem)


def _post(url: str, body: bytes, key: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback)
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], *,
                  timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{log.read_text()}"
        time.sleep(0.2)


@pytest.mark.parametrize("name", list(_cases()))
def test_each_example_starts_and_answers_its_key(name: str, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    env = {**os.environ, "COLUMNS": "200", "MODELFENCE_HOME": str(tmp_path / "home"),
           "MODELFENCE_PG_PASSWORD": PG_PASSWORD}
    text = (EXAMPLES / f"{name}.yaml").read_text()
    if "postgresql://" in text:
        env["MODELFENCE_EXAMPLE_PG_ADMIN"] = request.getfixturevalue("pg_url")
    if "redis://" in text:
        request.getfixturevalue("redis_url")
    port, admin = free_port(), free_port()
    log = tmp_path / "example.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelfence", "example", name, "--port", str(port),
             "--admin-port", str(admin), "--dir", str(tmp_path / name), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(f"http://127.0.0.1:{admin}/admin/ready", proc=proc, log=log, timeout_s=180)
        if "distill:" in text:
            # the distillation detector loads its embedding model after ready; a first prompt
            # screened meanwhile loads the screener's copy at the same time, and transformers'
            # first import fails when two threads run it at once (a 500): wait until it is in
            wait_for_line(log, "warm-started", proc, timeout_s=180)
        printed = log.read_text()
        key = next(w for w in printed.split() if w.startswith("mf_"))
        curl = next(line for line in printed.splitlines() if line.startswith("curl -s "))
        url = curl.split()[2]
        assert url.startswith(f"http://127.0.0.1:{port}/")
        body = Path(curl.split("-d @")[1].strip()).read_bytes()
        assert _post(url, body, None)[0] == 401
        status, doc = _post(url, body, key)
        assert status == 200, doc
        if "/v2/models/" in url:
            assert [o["name"] for o in doc["outputs"]] == ["probabilities", "label"]  # type: ignore[attr-defined]
        else:
            assert "stand-in" in doc["choices"][0]["message"]["content"]  # type: ignore[index]
    finally:
        interrupt(proc, 20)

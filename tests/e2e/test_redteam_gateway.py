"""`modelfence attack` through a real gateway: the budget stops it with a 429 after exactly N
queries and the stolen share so far is reported; over HTTP it steals exactly what the same
attack steals in-process; refusals are one line; `modelfence assess` writes its report."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelfence.redteam import Pool, run_attack

from ..support import Gateway, cli

BUDGET = 30


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
            ) -> Iterator[Gateway]:
    """`digits` has a daily budget of 30 queries; `open` (the same model) has none."""
    models = [{"name": name, "backend": {"type": "skops", "path": str(digits_files["skops"])}}
              for name in ("digits", "open")]
    gw = Gateway(tmp_path_factory.mktemp("gw"), models, extra={"quotas": {
        "budgets": [{"models": ["digits"], "queries": BUDGET, "period": "day"}]}}).start()
    yield gw
    gw.stop()


def test_the_budget_stops_the_attack_with_what_it_stole(gateway: Gateway, pool_file: Path,
                                                        tmp_path: Path) -> None:
    thief, owner = gateway.key(principal="mallory"), gateway.key(principal="owner")
    result = cli("attack", f"{gateway.url}/v2/models/digits", "--attack", "random:labels",
                 "--eval-key", owner, "--pool", str(pool_file), "--budgets", "20,100,500",
                 "--json", str(tmp_path / "run.json"), env={"MODELFENCE_KEY": thief},
                 check=False)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    stderr = " ".join(result.stderr.split())
    assert (f"stopped: the endpoint answered 429 after {BUDGET} queries: extraction budget "
            f"for model 'digits' exhausted: {BUDGET} queries per day") in stderr
    assert f"the results above cover the {BUDGET} answered queries" in stderr
    rows = [line.split("│")[1:-1] for line in result.stdout.splitlines()
            if line.startswith("│")]
    assert [[c.strip() for c in r[:2]] for r in rows] == [["20", "20"], ["100", str(BUDGET)]]
    assert 0.3 < float(rows[-1][2]) <= 1.0  # fidelity of what 30 queries stole
    assert f"{BUDGET} queries in {BUDGET} requests" in result.stdout
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["stopped"]["status"] == 429 and doc["stopped"]["after"] == BUDGET
    assert [p["queries"] for p in doc["points"]] == [20, BUDGET] and doc["queries"] == BUDGET
    mallory = _audit(gateway, "mallory", BUDGET + 1)
    assert [r["status"] for r in mallory] == [200] * BUDGET + [429]
    owner_records = _audit(gateway, "owner", 15)  # 449 held-out rows, 32 per request
    assert [r["status"] for r in owner_records] == [200] * 15  # its own budget


def _audit(gw: Gateway, principal: str, count: int) -> list[dict[str, object]]:
    """The principal's infer records, once `count` have been written (audit is async)."""
    deadline = time.monotonic() + 5
    while True:
        records = [r for r in gw.audit_records()
                   if r.get("principal") == principal and r.get("action") == "infer"]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_over_http_steals_exactly_what_it_steals_in_process(
        gateway: Gateway, pool_file: Path, digits_files: dict[str, Path]) -> None:
    key = gateway.key(principal="auditor")
    with np.load(pool_file) as z:
        pool = Pool("digits/16", z["x"], z["y"])
    kwargs = {"attack": "adaptive", "budgets": [60, 150], "thief": "lr", "pool": pool,
              "seed": 3}
    remote = run_attack(f"{gateway.url}/v2/models/open", key=key, batch=16, **kwargs)  # type: ignore[arg-type]
    local = run_attack(digits_files["skops"], **kwargs)  # type: ignore[arg-type]
    assert remote.result.metrics() == local.result.metrics()
    # 12 adaptive rounds of 13 rows (each fits one request of 16); 449 held-out rows / 32
    assert remote.result.requests == 12 and remote.eval_requests == 15
    assert remote.victim_accuracy == local.victim_accuracy


def test_refusals_before_any_answer_are_one_line(gateway: Gateway, pool_file: Path) -> None:
    url = f"{gateway.url}/v2/models/open"
    bad = cli("attack", url, "--key", "mf_not_a_key", "--pool", str(pool_file), check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: the endpoint answered 401: missing or invalid credentials"
    other = gateway.key(principal="carol", models=["digits"])
    denied = cli("attack", url, "--key", other, "--pool", str(pool_file), check=False)
    assert denied.returncode == 1 and denied.stderr.startswith("error: the endpoint answered 403")
    assert len(denied.stderr.strip().splitlines()) == 1
    nokey = cli("attack", url, "--pool", str(pool_file), check=False,
                env={"MODELFENCE_KEY": ""})
    assert nokey.returncode == 2 and "needs an API key" in nokey.stderr


def test_assess_writes_json_and_html_for_a_model_file(
        tmp_path: Path, pool_file: Path, digits_files: dict[str, Path]) -> None:
    out = tmp_path / "report"
    result = cli("assess", str(digits_files["skops"]), "--pool", str(pool_file),
                 "--attacks", "random,equation:labels", "--defenses", "none,rsig:0.8,1.2",
                 "--budgets", "30,60", "--seeds", "1", "--workers", "1", "--out", str(out))
    assert "fidelity at 60 queries" in result.stdout and "wrote" in result.stdout
    doc = json.loads((out / "assessment.json").read_text())
    assert doc["modelfence_assessment"] == 1 and len(doc["cells"]) == 4
    assert (out / "report.html").read_text().count("<svg ") == 3
    refused = cli("assess", "demo", "--defenses", "rsig:1,0.1", check=False)
    assert refused.returncode == 2 and "would change answers" in refused.stderr
    http = cli("assess", "http://127.0.0.1:9/v2/models/digits", check=False,
               env={"MODELFENCE_ADMIN_TOKEN": ""})
    assert http.returncode == 2 and "needs its admin token" in http.stderr

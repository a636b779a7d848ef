"""The red team through a monitored gateway: the risk score rises, the shaping answers a
risky thief with labels only, and the budget stops it.

One gateway serves the digits model twice, each with the extraction monitor on and three
output bands (full answers, rounded top-3, labels only from risk 0.5): `digits` with an
extraction budget of 200 queries a day per principal, `digits-tight` with 40. A Jacobian
attack (soft labels: from the labels-only band on it trains on one-hot answers) is watched
through the admin API; `modelfence assess ADDRESS` mints a key per cell, draws the risk
score over the attack and names the 429 that stopped each cell.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from modelfence.redteam.results import Assessment, AttackResult

from ..support import Gateway, cli
from .test_monitor_gateway import BANDS, fit_summary

BUDGET, TIGHT = 200, 40


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
            ) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("monitored-redteam")
    summary = fit_summary(digits_files["joblib"], folder / "digits.summary.npz")
    models = [{"name": name, "backend": {"type": "skops", "path": str(digits_files["skops"])},
               "monitor": {"summary": str(summary)}, "shaping": BANDS,
               "reveal_band": True}  # the red team counts answers per band it is told
              for name in ("digits", "digits-tight")]
    gw = Gateway(folder, models, extra={
        "monitor": {"state_dir": "monitor-state"},
        "quotas": {"budgets": [
            {"models": ["digits"], "queries": BUDGET, "period": "day"},
            {"models": ["digits-tight"], "queries": TIGHT, "period": "day"}]}}).start()
    yield gw
    gw.stop()


def test_attack_sees_the_risk_rise_before_the_budget_stops_it(
        gateway: Gateway, pool_file: Path, tmp_path: Path) -> None:
    thief, owner = gateway.key(principal="mallory"), gateway.key(principal="owner")
    out = tmp_path / "run.json"
    result = cli("attack", f"{gateway.url}/v2/models/digits", "--attack", "jacobian",
                 "--key", thief, "--eval-key", owner, "--pool", str(pool_file),
                 "--budgets", "100,600", "--thief", "lr", "--json", str(out),
                 env={"MODELFENCE_ADMIN_TOKEN": gateway.admin_token,
                      "MODELFENCE_ADMIN_URL": gateway.admin_url}, check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert gateway.admin_token not in result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert doc["stopped"]["status"] == 429 and doc["stopped"]["after"] == BUDGET
    assert doc["principal"] == "mallory"  # found from the key's id through the admin API
    trail = [(int(q), float(r)) for q, r in doc["risk_trail"]]
    assert trail[0] == (0, 0.0) and trail[-1][0] == BUDGET
    assert [q for q, _ in trail] == sorted({q for q, _ in trail})
    assert all(q % 10 == 0 for q, _ in trail)  # read every 10 queries
    risky = [q for q, r in trail if r > 0.5]
    assert risky and risky[0] < BUDGET, trail  # the monitor saw it before the budget did
    # the labels-only band answered the soft-label thief, which went on with one-hot answers
    assert doc["bands"]["full"] > 0 and doc["bands"].get("labels", 0) > 0
    assert sum(doc["bands"].values()) == BUDGET
    assert [p["queries"] for p in doc["points"]] == [100, BUDGET]
    # printed: the risk per budget point, then the stop
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith("│")]
    assert [r[0] for r in rows] == ["100", "600"] and all(len(r) == 6 for r in rows)
    assert float(rows[-1][5]) > 0.5
    assert "risk score of mallory" in result.stdout
    assert "stopped: the endpoint answered 429" in " ".join(result.stderr.split())
    again = AttackResult.from_dict({k: v for k, v in doc.items() if k in
                                    AttackResult.__dataclass_fields__})
    assert again.risk_trail == tuple(trail) and again.bands == doc["bands"]


def test_assess_through_the_gateway_plots_the_risk_and_names_the_stops(
        gateway: Gateway, pool_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = cli("assess", f"{gateway.url}/v2/models/digits-tight", "--attacks",
                 "uniform,random", "--budgets", "20,60", "--seeds", "1", "--thief", "lr",
                 "--pool", str(pool_file), "--out", str(out),
                 env={"MODELFENCE_ADMIN_TOKEN": gateway.admin_token,
                      "MODELFENCE_ADMIN_URL": gateway.admin_url}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert gateway.admin_token not in result.stdout + result.stderr
    assert "cells through the gateway" in result.stdout
    doc = json.loads((out / "assessment.json").read_text())
    a = Assessment.from_dict(doc)
    assert a.remote and [d.spec for d in a.defenses] == ["gateway"]
    assert [(c.name, c.defense, c.seed) for c in a.cells] == [
        ("uniform", "gateway", 0), ("random", "gateway", 0)]
    principals = [c.principal or "" for c in a.cells]
    assert all(re.fullmatch(r"redteam-(uniform|random)-s0-[0-9a-f]{4}", p) for p in principals)
    for c in a.cells:  # each cell its own key, so its own budget of 40
        assert c.stopped is not None and c.stopped.status == 429 and c.queries == TIGHT
        assert [p.queries for p in c.points] == [20, TIGHT]
        assert c.risk_trail[0] == (0, 0.0) and c.risk_trail[-1][0] == TIGHT
        assert sum(c.bands.values()) == TIGHT
    uniform, natural = a.cells
    assert (uniform.peak_risk or 0) > 0.5 and uniform.bands.get("labels", 0) > 0
    assert (natural.peak_risk or 0) < (uniform.peak_risk or 0)
    assert a.fidelity("uniform", "gateway", 60) == [uniform.points[-1].fidelity]
    page = (out / "report.html").read_text()
    svgs = re.findall(r"<svg .*?</svg>", page, flags=re.S)
    assert len(svgs) == 2 and "risk score over the attack" in svgs[1]
    assert len(re.findall(r"<polyline ", svgs[1])) == 2
    assert page.count("<b>429</b> after 40") == 2 and "labels " in page
    assert not re.search(r"\bnan\b", page)
    # the minted keys are revoked once their cell is done
    keys = httpx.get(f"{gateway.admin_url}/admin/keys",
                     headers={"Authorization": f"Bearer {gateway.admin_token}"}).json()["keys"]
    mine = [k for k in keys if k["principal"].startswith("redteam-")]
    assert len(mine) == 3 and all(k["status"] == "revoked" for k in mine)


def test_assess_bad_input_is_one_line(gateway: Gateway) -> None:
    url = f"{gateway.url}/v2/models/digits"
    for args, env, message in (
            ((url,), {"MODELFENCE_ADMIN_TOKEN": ""}, "needs its admin token"),
            ((url, "--admin-token", "wrong"), {"MODELFENCE_ADMIN_URL": gateway.admin_url},
             "refused the admin token (401"),
            (("http://127.0.0.1:9/v2/models/digits", "--admin-token", "t"),
             {"MODELFENCE_ADMIN_URL": "http://127.0.0.1:9"}, "cannot reach"),
            ((url, "--admin-token", "t", "--defenses", "none"), {}, "in-process")):
        r = cli("assess", *args, env=env, check=False)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr

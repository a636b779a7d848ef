"""The monitor and output shaping in the running gateway, over real HTTP.

One gateway serves the digits model with the monitor on, three output bands (full answers,
rounded top-3, labels only) named in its answers (`reveal_band`, so the tests can follow
them) and a Cedar policy that refuses callers whose risk passes 0.9 once they have had 60
answers, and pins partners to full answers. A benign caller sending natural digits keeps
full answers; a thief sending uniform random rows is moved to labels only within a few
dozen queries, raises one alert (audit log, `modelfence alerts`, the admin API and a signed
webhook), and is then refused by the policy. The state survives a restart.

A second gateway runs the recommended bands (shaping/recommended.py) with the default of
not naming the band: answers never say it, the audit record and the admin API do; an
honest caller pinned to the strongest band gets the model's answers on its in-distribution
rows.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import httpx2 as httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_digits

from modelfence.monitor.summary import Summary
from modelfence.shaping.recommended import recommended_shaping

from ..support import Gateway, cli, http_receiver, infer_body

POLICY = """
@id("own-grants")
permit (principal, action in [Action::"infer", Action::"metadata"], resource)
when { principal.models.contains(resource.name) };

@id("partners-see-everything")
@shaping("full")
permit (principal, action == Action::"infer", resource)
when { principal.groups.contains("partners") };

@id("stop-likely-thieves")
forbid (principal, action == Action::"infer", resource)
when { context.risk.greaterThan(decimal("0.9")) && context.queries >= 60 };
"""

BANDS = [{"from_risk": 0.0, "defense": "none", "name": "full"},
         {"from_risk": 0.3, "defense": "topk:3+round:2", "name": "reduced"},
         {"from_risk": 0.5, "defense": "labels", "name": "labels"}]
WEBHOOK_SECRET = "w" * 40


def digits() -> np.ndarray[Any, Any]:
    x, _ = load_digits(return_X_y=True)
    return np.asarray(x, dtype=np.float64) / 16.0


#: Rows the summary is fitted on, and rows benign callers send: disjoint random halves.
SPLIT = np.random.default_rng(0).permutation(1797)
FIT_ROWS, USE_ROWS = SPLIT[:900], SPLIT[900:]


def fit_summary(model_path: Path, out: Path) -> Path:
    """As `modelfence monitor fit` does: the model's own answers on natural data.

    The fit is seeded, so the same model file always gives the same summary: it is fitted
    once per test process and model content, and each gateway gets its own copy of the file.
    """
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    return _fitted_summary(model_path, digest).save(out)


@functools.cache
def _fitted_summary(model_path: Path, digest: str) -> Summary:
    """The summary of the model file whose content hashes to `digest` (the cache key)."""
    model = joblib.load(model_path)
    x = digits()[FIT_ROWS]
    return Summary.fit(x, model.predict_proba(x))


class Hooks(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hooks.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    with http_receiver(Hooks) as port:
        yield f"http://127.0.0.1:{port}/hook"


def monitored_gateway(folder: Path, digits_files: dict[str, Path], *, extra_monitor:
                      dict[str, Any] | None = None, webhook: str | None = None,
                      bands: list[dict[str, Any]] = BANDS, reveal: bool = True,
                      policy: str = POLICY) -> Gateway:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.cedar").write_text(policy)
    (folder / "webhook-secret").write_text(WEBHOOK_SECRET)
    summary = fit_summary(digits_files["joblib"], folder / "digits.summary.npz")
    monitor: dict[str, Any] = {"state_dir": "monitor-state", **(extra_monitor or {})}
    if webhook:
        monitor["webhook"] = {"url": webhook, "secret_file": "webhook-secret"}
    models = [{"name": "digits", "backend": {"type": "skops", "path": str(digits_files["skops"])},
               "monitor": {"summary": str(summary)}, "shaping": bands, "reveal_band": reveal}]
    return Gateway(folder, models, extra={
        "audit": {"sink": "sqlite:///audit.db"},
        "policy": {"files": ["policy.cedar"]},
        "monitor": monitor})


def ask(gw: Gateway, key: str, rows: np.ndarray[Any, Any]) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.post(f"{gw.url}/v2/models/digits/infer", json=infer_body(rows.tolist()),
                           headers={"Authorization": f"Bearer {key}"})


def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path],
            webhook: str) -> Iterator[Gateway]:
    gw = monitored_gateway(tmp_path_factory.mktemp("monitored"), digits_files,
                           webhook=webhook).start()
    yield gw
    gw.stop()


def thief_rows(n: int, seed: int = 7) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, 64))


def test_benign_caller_keeps_full_answers(gateway: Gateway) -> None:
    key = gateway.key(principal="reader")
    rows = digits()[USE_ROWS]
    order = np.random.default_rng(1).permutation(len(rows))[:150]
    for i in order:
        r = ask(gateway, key, rows[i:i + 1])
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["parameters"]["shaping"] == "full"
        assert {o["name"] for o in answer["outputs"]} == {"probabilities", "label"}


def test_thief_is_shaped_then_refused_and_alerted(gateway: Gateway) -> None:
    key = gateway.key(principal="mallory", tenant="shady")
    bands: list[str] = []
    refused_at = None
    for i, row in enumerate(thief_rows(120)):
        r = ask(gateway, key, row[None, :])
        if r.status_code == 403:
            refused_at = i + 1
            assert "stop-likely-thieves" in r.json()["error"]
            break
        assert r.status_code == 200, r.text
        answer = r.json()
        bands.append(answer["parameters"]["shaping"])
        names = [o["name"] for o in answer["outputs"]]
        if bands[-1] == "labels":
            assert names == ["label"]  # probabilities withheld, not faked as one-hot
        time.sleep(0.005)
    assert bands[0] == "full"
    assert "labels" in bands and bands.index("labels") <= 40
    assert refused_at == 61  # the forbid needs risk > 0.9 and 60 answers

    # the band each answer was shaped by is in the audit log
    rows = json.loads(cli("audit", "query", "--config", str(gateway.config), "--principal",
                          "mallory", "--limit", "500", "--json").stdout)["records"]
    shaped = [r["record"]["shaping"] for r in rows if r["record"]["action"] == "infer"]
    assert shaped[0] == "full" and "labels" in shaped

    # one alert, visible everywhere; its tenant (one key) is flagged with it, not alerted apart
    alerts = json.loads(cli("alerts", "--config", str(gateway.config), "--json").stdout)
    mine = [a["record"] for a in alerts["records"] if a["record"]["principal"] == "mallory"]
    assert len(mine) == 1 and mine[0]["action"] == "alert:monitor"
    assert [a["record"]["principal"] for a in alerts["records"]
            if a["record"]["tenant"] == "shady"] == ["mallory"]
    admin = httpx.get(f"{gateway.admin_url}/admin/alerts",
                      headers={"Authorization": f"Bearer {gateway.admin_token}"}).json()
    assert any(a["principal"] == "mallory" and a["risk"] >= 0.5 for a in admin["alerts"])
    risk = httpx.get(f"{gateway.admin_url}/admin/risk/digits", params={"principal": "mallory"},
                     headers={"Authorization": f"Bearer {gateway.admin_token}"}).json()
    assert risk["flagged"] and risk["detectors"]["ood"]["score"] > 0.5
    assert risk["band"] == "labels" and risk["episode"]["since"] is not None

    wait_for(lambda: any(b"mallory" in body for _, body in Hooks.received))
    headers, body = next((h, b) for h, b in Hooks.received if b"mallory" in b)
    stamp, mac = (part.split("=", 1)[1] for part in
                  headers["X-Modelfence-Signature"].split(","))
    expected = hmac.new(WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body,
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, expected)
    assert json.loads(body)["kind"] == "principal"


def test_partner_pinned_to_full_answers(gateway: Gateway) -> None:
    args = ["keys", "create", "--config", str(gateway.config), "--principal", "partner",
            "--tenant", "friends", "--model", "digits", "--group", "partners", "--json"]
    key = json.loads(cli(*args).stdout)["key"]
    for row in thief_rows(60, seed=3):
        r = ask(gateway, key, row[None, :])
        if r.status_code == 403:  # the pin shapes answers; it does not lift the forbid
            break
        assert r.json()["parameters"]["shaping"] == "full"


def test_asking_for_withheld_probabilities_is_refused_clearly(gateway: Gateway) -> None:
    key = gateway.key(principal="eve", tenant="eve-co")
    body = infer_body(thief_rows(1).tolist())
    body["outputs"] = [{"name": "probabilities"}]
    for row in thief_rows(60, seed=11):
        r = ask(gateway, key, row[None, :])
        if r.json().get("parameters", {}).get("shaping") == "labels":
            break
    r = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=body,
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403
    assert "withheld" in r.json()["error"] and "Traceback" not in r.text
    assert "output band 'labels'" in r.json()["error"]  # this gateway reveals bands


# the recommended bands, not revealed ------------------------------------------------------------

QUIET_POLICY = POLICY + """
@id("suspects-get-the-strongest-band")
@shaping("flagged")
permit (principal, action == Action::"infer", resource)
when { principal.groups.contains("suspects") };

@id("contractors-get-labels")
@shaping("labels-only")
permit (principal, action == Action::"infer", resource)
when { principal.groups.contains("contractors") };
"""
QUIET_BANDS = [*recommended_shaping(),
               {"from_risk": 0.99, "defense": "labels", "name": "labels-only"}]


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
          ) -> Iterator[Gateway]:
    gw = monitored_gateway(tmp_path_factory.mktemp("quiet"), digits_files, bands=QUIET_BANDS,
                           reveal=False, policy=QUIET_POLICY).start()
    yield gw
    gw.stop()


def grouped_key(gw: Gateway, principal: str, group: str) -> str:
    args = ["keys", "create", "--config", str(gw.config), "--principal", principal,
            "--tenant", f"{principal}-co", "--model", "digits", "--group", group, "--json"]
    return str(json.loads(cli(*args).stdout)["key"])


def audited_bands(gw: Gateway, principal: str) -> list[str]:
    rows = json.loads(cli("audit", "query", "--config", str(gw.config), "--principal",
                          principal, "--limit", "500", "--json").stdout)["records"]
    return [r["record"]["shaping"] for r in rows if r["record"]["action"] == "infer"]


def test_the_band_is_not_in_the_answer_by_default_but_in_the_audit_record(quiet: Gateway
                                                                          ) -> None:
    key = quiet.key(principal="trudy", tenant="trudy-co")
    for row in thief_rows(50, seed=21):
        r = ask(quiet, key, row[None, :])
        assert r.status_code == 200, r.text
        assert "shaping" not in r.json().get("parameters", {}), r.json()
    shaped = audited_bands(quiet, "trudy")
    assert len(shaped) == 50 and shaped[0] == "standard"
    assert set(shaped[-5:]) <= {"flagged", "labels-only"}  # flagged, and only the audit says
    risk = httpx.get(f"{quiet.admin_url}/admin/risk/digits", params={"principal": "trudy"},
                     headers={"Authorization": f"Bearer {quiet.admin_token}"}).json()
    assert risk["flagged"] and risk["band"] in ("flagged", "labels-only")
    assert risk["episode"]["hold_until"] is not None  # flagged for synthetic rows: held


def test_withheld_probabilities_are_refused_without_naming_the_band(quiet: Gateway) -> None:
    key = grouped_key(quiet, "carol", "contractors")
    body = infer_body(digits()[USE_ROWS[:1]].tolist())
    body["outputs"] = [{"name": "probabilities"}]
    r = httpx.post(f"{quiet.url}/v2/models/digits/infer", json=body,
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert "probabilities are withheld from this caller" in error
    assert "labels-only" not in error and "band" not in error
    assert audited_bands(quiet, "carol") == ["labels-only"]


def test_an_honest_caller_in_the_strongest_band_gets_true_answers_in_distribution(
        quiet: Gateway, digits_files: dict[str, Path]) -> None:
    """Pinned to `flagged` (misinformation off the data): the rows the monitor calls in
    distribution get the model's own answer, and >= 95% of all rows its top class."""
    key = grouped_key(quiet, "honest", "suspects")
    x = digits()[USE_ROWS[:300]].astype(np.float32).astype(np.float64)  # as the wire carries
    labels, proba = [], []
    for start in range(0, len(x), 30):
        r = ask(quiet, key, x[start:start + 30])
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        labels += out["label"]["data"]
        proba += [out["probabilities"]["data"][i:i + 10]
                  for i in range(0, len(out["probabilities"]["data"]), 10)]
    assert set(audited_bands(quiet, "honest")) == {"flagged"}
    model = joblib.load(digits_files["joblib"]).predict_proba(x)
    summary = Summary.load(quiet.folder / "digits.summary.npz")
    inside = summary.nearest_cell(summary.transform(x))[1] <= summary.ood_radius
    assert inside.mean() > 0.9
    got = np.array(proba)
    assert np.allclose(got[inside], model[inside], rtol=1e-6, atol=1e-7)  # float32 on the wire
    told = np.array(labels)
    assert np.array_equal(told[inside], model[inside].argmax(1))
    assert np.mean(told == model.argmax(1)) >= 0.95


def test_risk_survives_a_restart(tmp_path: Path, digits_files: dict[str, Path]) -> None:
    gw = monitored_gateway(tmp_path / "gw", digits_files).start()
    try:
        key = gw.key(principal="mallory", tenant="shady")
        for row in thief_rows(40):
            ask(gw, key, row[None, :])
        time.sleep(0.2)
        before = ask(gw, key, thief_rows(1, seed=99)).json()["parameters"]["shaping"]
        assert before == "labels"
    finally:
        gw.stop()
    gw.start()
    try:
        after = ask(gw, key, thief_rows(1, seed=98)).json()["parameters"]["shaping"]
        assert after == "labels"
    finally:
        gw.stop()


@pytest.mark.parametrize(("path", "params", "status", "message"), [
    ("/admin/risk/digits", {}, 400, "exactly one of"),
    ("/admin/risk/digits", {"principal": "a", "tenant": "b"}, 400, "exactly one of"),
    ("/admin/risk/nope", {"principal": "a"}, 404, "not monitored"),
    ("/admin/alerts", {"limit": "0"}, 400, "whole number"),
    ("/admin/alerts", {"limit": "ten"}, 400, "whole number"),
])
def test_admin_monitor_routes_reject_bad_input(gateway: Gateway, path: str,
                                               params: dict[str, str], status: int,
                                               message: str) -> None:
    r = httpx.get(f"{gateway.admin_url}{path}", params=params,
                  headers={"Authorization": f"Bearer {gateway.admin_token}"})
    assert r.status_code == status and message in r.json()["error"]
    assert httpx.get(f"{gateway.admin_url}{path}", params=params).status_code == 401

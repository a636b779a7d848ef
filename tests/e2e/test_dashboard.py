"""The Grafana dashboard's every query, run by a real Prometheus scraping a running gateway.

A gateway serves a monitored model (three output bands) and a differentially private one;
Debian's `prometheus` scrapes its admin listener's /metrics every second. Traffic: honest
answers, a thief sending uniform noise until the monitor flags it, callers without a valid
key, an unknown model, and a private budget spent. Then every target of every panel of
deploy/grafana/modelfence-dashboard.json (and its annotation) goes through
/api/v1/query with Grafana's variables filled in: each must be valid PromQL, the panels this
traffic feeds must return series, and the theft panels must show the thief.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml

from ..support import Gateway, digits_rows, free_port, infer_body, interrupt, skip_or_fail
from .test_monitor_gateway import BANDS, fit_summary, thief_rows

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "modelfence-dashboard.json"
RULES = DEPLOY / "prometheus" / "modelfence-rules.yml"

#: Grafana's variables as a dashboard showing every job and model would fill them in
VARIABLES = {"$__rate_interval": "1m", "$__interval": "5s", "$__range": "5m",
             "$job": ".*", "$model": ".*"}

#: panels this traffic feeds: each must return at least one series
FED = {"Requests by model and status", "Requests by route", "Latency p50 / p99 by model",
       "Refusals by reason", "Callers flagged now", "Principals per output band", "Alerts",
       "ε spent", "Audit log", "Stores", "Models ready", "Monitor", "Watermarking",
       "Failures inside the gateway"}


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        skip_or_fail("prometheus is not installed (Debian package prometheus)")
    return found


class Prometheus:
    """A `prometheus` process of its own: config, TSDB and port in a temporary folder, with
    the shipped alerting rules loaded."""

    def __init__(self, folder: Path, target: str) -> None:
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(RULES, folder / RULES.name)
        (folder / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [RULES.name],
            "scrape_configs": [{"job_name": "modelfence", "scrape_interval": "1s",
                                "static_configs": [{"targets": [target]}]}]}))
        self.log = folder / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [prometheus_binary(), f"--config.file={folder / 'prometheus.yml'}",
                 f"--storage.tsdb.path={folder / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT)

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("query?" + urllib.parse.urlencode({"query": expr}))

    def get(self, path: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                out: dict[str, Any] = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # a bad query: 400 with the reason
            with exc:
                out = json.loads(exc.read())
        return out

    def wait_ready(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.port}/-/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(self.log.read_text()[-3000:])

    def stop(self) -> None:
        interrupt(self.proc, 10)


def gateway(folder: Path, digits_files: dict[str, Path]) -> Gateway:
    folder.mkdir(parents=True, exist_ok=True)
    summary = fit_summary(digits_files["joblib"], folder / "digits.summary.npz")
    skops = {"type": "skops", "path": str(digits_files["skops"])}
    models: list[dict[str, Any]] = [
        {"name": "digits", "backend": skops, "monitor": {"summary": str(summary)},
         "shaping": BANDS, "reveal_band": True},
        {"name": "private", "backend": skops,
         "shaping": [{"from_risk": 0.0, "defense": "dp-rr:1", "name": "private"}]}]
    return Gateway(folder, models, extra={
        "audit": {"sink": "sqlite:///audit.db"},
        "monitor": {"state_dir": "monitor-state"},
        "privacy": {"store": "sqlite:///privacy.db", "principal_epsilon": 2.5}})


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path]
            ) -> Iterator[Prometheus]:
    """A gateway after the traffic, and a Prometheus that has scraped all of it."""
    tmp_path = tmp_path_factory.mktemp("dashboard")
    gw = gateway(tmp_path / "gw", digits_files)
    prom = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{gw.admin_port}")
    try:
        gw.start()
        prom.wait_ready()
        # a scrape before the traffic: a counter's rise is seen from a value scraped before
        wait_for(lambda: prom.query("modelfence_monitor_alerts_total")["data"]["result"],
                 "no scrape of the gateway")
        answered = traffic(gw)
        wait_for(lambda: counted(prom) >= answered, f"scraped {counted(prom)} of {answered}")
        # and scraped again, so that the series the last requests began have two samples
        wait_for(lambda: all(samples(prom, f"count_over_time({name}[1m])") >= 2 for name in
                             ("modelfence_requests_total", "modelfence_denials_total")),
                 "the last series were scraped once only")
        yield prom
    finally:
        prom.stop()
        gw.stop()


def traffic(gw: Gateway) -> int:
    """Honest calls, a thief until it is flagged, refusals; how many requests were sent."""
    honest = gw.key(principal="reader")
    thief = gw.key(principal="mallory", tenant="shady")
    sent = 0
    with httpx.Client(timeout=10) as client:
        def ask(model: str, key: str, rows: list[list[float]]) -> httpx.Response:
            nonlocal sent
            sent += 1
            return client.post(f"{gw.url}/v2/models/{model}/infer", json=infer_body(rows),
                               headers={"Authorization": f"Bearer {key}"})

        for row in digits_rows(5):
            assert ask("digits", honest, [row]).status_code == 200
        for row in thief_rows(80):
            r = ask("digits", thief, [row.tolist()])
            assert r.status_code == 200, r.text
            if r.json()["parameters"]["shaping"] == "labels":
                break
        else:
            raise AssertionError("the thief was never moved to labels only")
        statuses = [ask("private", honest, [row]).status_code for row in digits_rows(4)]
        assert statuses == [200, 200, 429, 429]  # ε 1 each, a budget of 2.5
        assert ask("digits", "mf_not-a-key", digits_rows(1)).status_code == 401
        assert ask("no-such-model", honest, digits_rows(1)).status_code == 404
    return sent


def wait_for(predicate: Any, what: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def counted(prom: Prometheus) -> float:
    result = prom.query("sum(modelfence_requests_total)")["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def samples(prom: Prometheus, expr: str) -> float:
    """The smallest value `expr` gives (0 when it gives none)."""
    result = prom.query(f"min({expr})")["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def fill(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):  # $__range before $__rate…: no
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"a variable the test does not fill in: {expr}"
    return expr


def test_every_panel_query_runs_and_the_traffic_shows(scraped: Prometheus) -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 36
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert {p["title"] for p in panels} >= FED
    fed: dict[str, list[dict[str, Any]]] = {}
    by_target: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            answer = scraped.query(fill(target["expr"]))
            assert answer["status"] == "success", (panel["title"], target["expr"], answer)
            fed.setdefault(panel["title"], []).extend(answer["data"]["result"])
            by_target[(panel["title"], target["refId"])] = answer["data"]["result"]
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            answer = scraped.query(fill(annotation["expr"]))
            assert answer["status"] == "success", answer
            assert answer["data"]["result"], "the thief's alert is not annotated"
    empty = sorted(title for title in FED if not fed.get(title))
    assert not empty, f"panels without data: {empty}"

    def values(title: str, ref: str = "A", **labels: str) -> list[float]:
        return [float(s["value"][1]) for s in by_target[(title, ref)]
                if labels.items() <= s["metric"].items()]

    assert values("Callers flagged now", model="digits", kind="principal") == [1.0]
    assert values("Principals per output band", model="digits", band="labels") == [1.0]
    assert values("Principals per output band", model="digits", band="full") == [1.0]
    assert sum(values("Alerts", model="digits", kind="principal")) > 0
    assert values("ε spent", model="private") == [2.0]  # two answers at ε 1
    assert sum(values("ε spent", "B", model="private", budget="principal")) > 0
    assert {s["metric"].get("status") for s in fed["Requests by model and status"]} >= {
        "200", "401", "404", "429"}
    assert {s["metric"].get("reason") for s in fed["Refusals by reason"]} >= {
        "malformed_key", "unknown_model", "privacy_budget_spent"}
    assert values("Stores") and all(v == 1.0 for v in values("Stores"))
    assert values("Models ready") == [1.0, 1.0]


def test_the_shipped_rules_raise_the_thiefs_alert_on_real_metrics(scraped: Prometheus) -> None:
    """The extraction rule (no `for`) fires from the gateway's own counters, as scraped."""
    def firing() -> list[dict[str, Any]]:
        alerts = scraped.get("alerts")["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]

    wait_for(lambda: any(a["labels"]["alertname"] == "ModelfenceExtractionAlert"
                         for a in firing()), "the extraction alert did not fire", 10)
    alert = next(a for a in firing() if a["labels"]["alertname"] == "ModelfenceExtractionAlert")
    assert alert["labels"] | {"model": "digits", "kind": "principal"} == alert["labels"]
    assert {a["labels"]["alertname"] for a in firing()} <= {
        "ModelfenceExtractionAlert", "ModelfencePrivacyBudgetAlert"}, firing()
    rules = scraped.get("rules")["data"]["groups"]
    assert sum(len(g["rules"]) for g in rules) == 14
    assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules

"""Every metric the shipped dashboard and alerting rules read is one the gateway exposes,
with the labels they group by: a renamed metric or label fails here, not on a dark panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase

from modelfence.kernel.answered import DURATION, DURATION_LABELS, LABELS, REQUESTS
from modelfence.kernel.metrics import GatewayMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_NAME = re.compile(r"\b(modelfence_[a-z0-9_]+)(\{[^}]*\})?")
_BY = re.compile(r"\bby \(([^)]*)\) \((?:rate|increase|deriv)?\(?(modelfence_[a-z0-9_]+)")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")
#: labels Prometheus adds to every series it scrapes (`le` is a histogram's own)
_SCRAPE_LABELS = {"job", "instance", "le"}


def exposed() -> dict[str, set[str]]:
    """Each metric family's name and its label names, as /metrics shows them."""
    m = GatewayMetrics()
    out = {metric._name: set(metric._labelnames)
           for metric in vars(m).values() if isinstance(metric, MetricWrapperBase)}
    # the two every request updates, kept in plain numbers (kernel/answered.py)
    out[REQUESTS[0]] = set(LABELS)
    out[DURATION[0]] = set(DURATION_LABELS)
    return out


def family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def expressions() -> list[str]:
    board = json.loads((DEPLOY / "grafana" / "modelfence-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "modelfence-rules.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return exprs


def test_the_answered_metrics_have_the_labels_named_here() -> None:
    text = GatewayMetrics()
    text.answered.add("infer", "digits", 200, 0.01)
    body = text.render().decode()
    assert 'modelfence_requests_total{action="infer",model="digits",status="200"}' in body
    assert ('modelfence_request_duration_seconds_count{action="infer",model="digits"}'
            in body)


def test_every_metric_and_label_read_is_exposed() -> None:
    known = exposed()
    missing, bad_labels = set(), set()
    for expr in expressions():
        for name, selector in _NAME.findall(expr):
            base = family(name)
            if base not in known:
                missing.add(name)
                continue
            for label in re.findall(r"(\w+)\s*(?:=~|!=|!~|=)", selector or ""):
                if label not in known[base] | _SCRAPE_LABELS:
                    bad_labels.add(f"{name}: {label}")
        for labels, name in _BY.findall(expr):
            base = family(name)
            for label in (x.strip() for x in labels.split(",")):
                if base in known and label not in known[base] | _SCRAPE_LABELS:
                    bad_labels.add(f"{name}: by {label}")
    assert not missing, f"metrics no gateway exposes: {sorted(missing)}"
    assert not bad_labels, f"labels those metrics do not have: {sorted(bad_labels)}"


def test_the_operations_page_lists_every_metric() -> None:
    page = (DEPLOY.parent / "docs" / "operations" / "dashboards.md").read_text()
    listed = {family(n) for n in re.findall(r"^\| `(modelfence_[a-z0-9_]+)` \|", page, re.M)}
    assert listed == set(exposed()), sorted(listed ^ set(exposed()))


def test_alert_counters_start_at_zero_for_each_model_that_can_alert(tmp_path: Path) -> None:
    """`increase()` sees a counter rise only from a value scraped before: one born at its
    first alert would hide that alert from the rules and the dashboard."""
    from modelfence.audit import audit_sink_from_url
    from modelfence.config import settings_from_mapping
    from modelfence.monitor.service import MonitorService

    settings = settings_from_mapping({"llm": {
        "models": [{"name": "chat", "upstream": "http://127.0.0.1:9/v1", "upstream_model": "x"}],
        "monitor": {"enabled": True}}})
    metrics = GatewayMetrics()
    MonitorService(settings, audit_sink_from_url(f"jsonl://{tmp_path}/audit.jsonl"), metrics)
    body = metrics.render().decode()
    for kind in ("principal", "tenant"):
        assert f'modelfence_monitor_alerts_total{{kind="{kind}",model="chat"}} 0.0' in body


def test_census_counts_flagged_callers_and_principals_per_band(tmp_path: Path) -> None:
    import numpy as np

    from modelfence.audit import audit_sink_from_url
    from modelfence.config import settings_from_mapping
    from modelfence.monitor.service import MonitorService
    from modelfence.monitor.summary import Summary

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    proba = rng.dirichlet(np.ones(3), size=300)
    summary = Summary.fit(x, proba).save(tmp_path / "s.npz")
    settings = settings_from_mapping({"models": [{
        "name": "m", "backend": {"type": "skops", "path": str(tmp_path / "m.skops")},
        "monitor": {"summary": str(summary)},
        "shaping": [{"from_risk": 0.0, "defense": "none", "name": "full"},
                    {"from_risk": 0.2, "defense": "none", "name": "watch"},
                    {"from_risk": 0.5, "defense": "labels", "name": "strict"}]}]})
    metrics = GatewayMetrics()
    service = MonitorService(settings, audit_sink_from_url(f"jsonl://{tmp_path}/a.jsonl"),
                             metrics)
    # a score on a band's start is in that band
    assert service.band_counts("m", np.array([0.1, 0.2, 0.49, 0.5, 1.0])) == [1, 2, 2]
    for i in range(3):  # three callers, in one tenant
        service.monitors["m"].observe(f"p{i}", x[i], proba[i], tenant="t")
    service.census()
    get = metrics.registry.get_sample_value
    assert get("modelfence_monitor_flagged", {"model": "m", "kind": "principal"}) == 0
    bands = [get("modelfence_monitor_band_principals", {"model": "m", "band": b})
             for b in ("full", "watch", "strict")]
    assert bands == [3, 0, 0]  # three natural rows raise nobody's risk

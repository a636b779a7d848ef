"""The per-request metrics kept in plain numbers expose what prometheus_client's own objects do."""

from __future__ import annotations

import random
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from modelfence.kernel.answered import Answered
from modelfence.kernel.metrics import _BUCKETS, GatewayMetrics

_CREATED = re.compile(r"(_created(\{[^}]*\})?) \S+$")


def _lines(registry: CollectorRegistry) -> list[str]:
    """The exposition with creation times blanked (they differ by when each was made)."""
    return sorted(_CREATED.sub(r"\1 T", line)
                  for line in generate_latest(registry).decode().splitlines())


def test_same_exposition_as_prometheus_client() -> None:
    theirs = CollectorRegistry()
    counter = Counter("modelfence_requests", "Requests answered", ["action", "model", "status"],
                      registry=theirs)
    histogram = Histogram("modelfence_request_duration_seconds", "Time from arrival to answer",
                          ["action", "model"], buckets=_BUCKETS, registry=theirs)
    ours = CollectorRegistry()
    answered = Answered(ours, _BUCKETS)
    rng = random.Random(7)
    # values on the bucket bounds too: `le` counts a value equal to a bound in that bucket
    values = [*_BUCKETS, 0.0, 1e-6, 0.0007, 0.3, 11.0, 1e9]
    for _ in range(2000):
        action, model = rng.choice(["infer", "chat"]), rng.choice(["digits", "bench-llm", "-"])
        status, seconds = rng.choice([200, 403, 429, 503]), rng.choice(values)
        counter.labels(action, model, str(status)).inc()
        histogram.labels(action, model).observe(seconds)
        answered.add(action, model, status, seconds)
    assert _lines(ours) == _lines(theirs)
    assert "modelfence_requests_total" in generate_latest(ours).decode()


def test_gateway_metrics_count_answered_requests() -> None:
    m = GatewayMetrics()
    for _ in range(3):
        m.answered.add("infer", "digits", 200, 0.002)
    m.answered.add("infer", "digits", 429, 0.0004)
    m.answered.add("infer", "other", 200, 0.3)  # a model of its own: its own durations
    get = m.registry.get_sample_value
    assert get("modelfence_requests_total",
               {"action": "infer", "model": "digits", "status": "200"}) == 3
    assert get("modelfence_requests_total",
               {"action": "infer", "model": "digits", "status": "429"}) == 1
    digits = {"action": "infer", "model": "digits"}
    assert get("modelfence_request_duration_seconds_count", digits) == 4
    assert get("modelfence_request_duration_seconds_bucket",
               {"action": "infer", "model": "digits", "le": "0.0005"}) == 1
    assert get("modelfence_request_duration_seconds_bucket",
               {"action": "infer", "model": "digits", "le": "0.0025"}) == 4
    assert abs(get("modelfence_request_duration_seconds_sum",
                   {"action": "infer", "model": "digits"}) - 0.0064) < 1e-12
    assert get("modelfence_request_duration_seconds_count",
               {"action": "infer", "model": "other"}) == 1
    assert b"modelfence_requests_total{" in m.render()


def test_created_series_follow_prometheus_clients_switch(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import prometheus_client.metrics

    monkeypatch.setattr(prometheus_client.metrics, "_use_created", False)
    ours = CollectorRegistry()
    Answered(ours, _BUCKETS).add("infer", "digits", 200, 0.01)
    text = generate_latest(ours).decode()
    assert "modelfence_requests_total" in text and "_created" not in text

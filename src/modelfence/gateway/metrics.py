"""Prometheus metrics, one registry per app (no module-level globals)."""

from __future__ import annotations

from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..errors import ClientDisconnected, RequestTimeout, UpstreamError, UpstreamRejected
from .call import Call
from .chain import Guard

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("modelfence_requests", "Requests answered",
                                ["action", "model", "status"], registry=r)
        self.latency = Histogram("modelfence_request_duration_seconds",
                                 "Time from arrival to answer", ["action"], buckets=_BUCKETS,
                                 registry=r)
        self.denials = Counter("modelfence_denials", "Requests refused, by reason", ["reason"],
                               registry=r)
        self.upstream_errors = Counter("modelfence_upstream_errors",
                                       "Upstream model server failures", ["model", "kind"],
                                       registry=r)
        self.store_errors = Counter("modelfence_store_errors",
                                    "Requests denied because a store could not answer", ["store"],
                                    registry=r)
        self.policy_errors = Counter("modelfence_policy_errors",
                                     "Requests denied because the policy engine could not decide",
                                     registry=r)
        self.fail_open = Counter("modelfence_rate_limit_fail_open",
                                 "Requests let through unchecked because rate-limit storage "
                                 "failed (quotas.fail_open)", registry=r)
        self.budget_alerts = Counter("modelfence_budget_alerts",
                                     "Principals crossing a budget's alert share", ["model"],
                                     registry=r)
        self.internal_errors = Counter("modelfence_internal_errors",
                                       "Requests that failed inside modelfence", registry=r)
        self.client_disconnects = Counter("modelfence_client_disconnects",
                                          "Requests whose client left before sending the whole "
                                          "body (status 499; not a server failure)", registry=r)
        self.body_timeouts = Counter("modelfence_body_timeouts",
                                     "Requests answered 408: the body did not arrive within "
                                     "server.body_timeout_s or paused too long", registry=r)
        self.monitor_alerts = Counter("modelfence_monitor_alerts",
                                      "Principals or tenants whose extraction risk crossed the "
                                      "threshold", ["model", "kind"], registry=r)
        self.monitor_observe = Histogram("modelfence_monitor_observe_seconds",
                                         "Time to take one answered request into the monitor",
                                         buckets=_BUCKETS, registry=r)
        self.monitor_store_errors = Counter("modelfence_monitor_store_errors",
                                            "Observations kept locally because the shared "
                                            "monitor store failed", registry=r)
        self.monitor_backlog = Gauge("modelfence_monitor_backlog",
                                     "Observations waiting to be taken in", registry=r)
        self.download_alerts = Counter("modelfence_download_alerts",
                                       "Unusual artifact downloads (volume or hour)",
                                       registry=r)
        self.watermark_marked = Counter("modelfence_watermark_marked_rows",
                                        "Answer rows given a watermark mark", registry=r)
        self.watermark_lost = Counter("modelfence_watermark_evidence_lost",
                                      "Watermark evidence records a failing store did not take",
                                      registry=r)
        self.model_ready = Gauge("modelfence_model_ready", "1 when the model can answer",
                                 ["model"], registry=r)
        self.audit_spilled = Counter("modelfence_audit_spilled_records",
                                     "Audit records written to the local spill because the "
                                     "audit store could not take them", registry=r)
        self.audit_replayed = Counter("modelfence_audit_replayed_records",
                                      "Spilled audit records committed to the audit store",
                                      registry=r)
        self.audit_lost = Counter("modelfence_audit_lost_records",
                                  "Audit records neither the store nor the spill could keep",
                                  registry=r)
        self.audit_spill_records = Gauge("modelfence_audit_spill_records",
                                         "Audit records waiting in the spill for replay",
                                         registry=r, multiprocess_mode="livesum")
        self.audit_spill_bytes = Gauge("modelfence_audit_spill_bytes",
                                       "Size of the audit spill waiting for replay",
                                       registry=r, multiprocess_mode="livesum")

    def audit_spill_pending(self, records: int, size: int) -> None:
        self.audit_spill_records.set(records)
        self.audit_spill_bytes.set(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsGuard(Guard):
    """Counts every call in its complete phase, answered or denied."""

    name: ClassVar[str] = "metrics"

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._m = metrics

    async def on_complete(self, call: Call) -> None:
        m = self._m
        model = call.model.name if call.model else "-"
        m.requests.labels(call.action, model, str(call.status)).inc()
        m.latency.labels(call.action).observe(call.elapsed_s())
        err = call.error
        if err is None:
            return
        if isinstance(err, UpstreamError | UpstreamRejected):
            m.upstream_errors.labels(model, err.reason).inc()
        elif isinstance(err, ClientDisconnected | RequestTimeout):
            return  # counted where they are detected (BodyDeadline), not denials
        elif 400 <= call.status < 500:
            m.denials.labels(err.reason).inc()

"""Prometheus metrics, one registry per app (no module-level globals).

With `workers > 1`, `run_server` gives the workers one folder (PROMETHEUS_MULTIPROC_DIR)
and prometheus_client's multiprocess mode: each worker writes its numbers to its own
files there and any worker's /metrics sums them all, so the server answers with its
counts, not one worker's. Gauges say how they combine (`multiprocess_mode`); the live
ones drop a worker's files when it stops, or when a later worker finds it gone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .answered import Answered, MultiprocessAnswered

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _use_multiprocess_values(folder: Path | None) -> bool:
    """True when this server's workers share metrics. prometheus_client picks its value
    class when first imported; a worker forked from a parent that imported it before the
    folder was set picks again here, before it makes any metric."""
    from prometheus_client import values

    if folder is None:
        return False
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return True


def _forget_dead_workers(folder: os.PathLike[str]) -> None:
    """Live gauges of workers that died without stopping (killed) are not theirs to add."""
    from prometheus_client import multiprocess

    for name in os.listdir(folder):
        m = re.fullmatch(r"gauge_live\w+_(\d+)\.db", name)
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, another user's


class GatewayMetrics:
    """Every counter, histogram and gauge of one app.

    `folder` is the workers' shared metrics folder (the configuration's `metrics_dir()`,
    which prometheus_client also reads), or None when this process counts alone.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder
        self._multiprocess = _use_multiprocess_values(folder)
        if folder is not None:
            _forget_dead_workers(folder)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        #: requests answered and their durations: `answered.add(action, model, status, s)`
        self.answered: Answered | MultiprocessAnswered = (
            MultiprocessAnswered if self._multiprocess else Answered)(r, _BUCKETS)
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
        self.screening_failures = Counter("modelfence_screening_failures",
                                          "Prompts whose screening could not run, by what "
                                          "screening.on_failure did (refused or allowed)",
                                          ["model", "outcome"], registry=r)
        self.llm_distill = Counter("modelfence_llm_distill",
                                   "Distillation test: prompts dropped (queue full) and "
                                   "windows cold (reference not ready), tested or flagged",
                                   ["model", "outcome"], registry=r)
        self.outbound_errors = Counter("modelfence_outbound_errors",
                                       "Failed calls to the JWKS and the alert webhook, by "
                                       "kind (redirect, status, unreachable, timeout)",
                                       ["client", "kind"], registry=r)
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
                                     "Observations waiting to be taken in", registry=r,
                                     multiprocess_mode="livesum")
        self.download_alerts = Counter("modelfence_download_alerts",
                                       "Unusual artifact downloads (volume or hour)",
                                       registry=r)
        # alerts sent to SIEM collectors (siem: destinations), by destination
        self.siem_delivered = Counter("modelfence_siem_delivered", "Alerts a SIEM collector "
                                      "took", ["destination"], registry=r)
        self.siem_undelivered = Counter("modelfence_siem_undelivered", "Alerts that will "
                                        "never reach a SIEM collector, by reason (spool_full, "
                                        "queue_full, rejected)", ["destination", "reason"],
                                        registry=r)
        self.siem_failures = Counter("modelfence_siem_send_failures", "Sends to a SIEM "
                                     "collector that failed and will be retried, by reason",
                                     ["destination", "reason"], registry=r)
        self.siem_spool_bytes = Gauge("modelfence_siem_spool_bytes", "Alerts waiting in the "
                                      "spool for their SIEM collector", ["destination"],
                                      registry=r, multiprocess_mode="livesum")
        self.watermark_marked = Counter("modelfence_watermark_marked_rows",
                                        "Answer rows given a watermark mark", registry=r)
        self.watermark_lost = Counter("modelfence_watermark_evidence_lost",
                                      "Watermark evidence records a failing store did not take",
                                      registry=r)
        self.watermark_truthful_repeats = Counter(
            "modelfence_watermark_truthful_repeats", "Marked rows answered truthfully because "
            "the caller already holds that input marked", registry=r)
        self.watermark_repeat_lookups_failed = Counter(
            "modelfence_watermark_repeat_lookups_failed", "Requests whose repeat lookup the "
            "evidence store did not answer (rows marked as usual)", registry=r)
        self.model_ready = Gauge("modelfence_model_ready", "1 when the model can answer "
                                 "(on every worker)", ["model"], registry=r,
                                 multiprocess_mode="livemin")
        self.audit_spilled = Counter("modelfence_audit_spilled_records",
                                     "Audit records written to the local spill because the "
                                     "audit store could not take them", registry=r)
        self.audit_replayed = Counter("modelfence_audit_replayed_records",
                                      "Spilled audit records committed to the audit store",
                                      registry=r)
        self.audit_lost = Counter("modelfence_audit_lost_records",
                                  "Audit records neither the store nor the spill could keep",
                                  registry=r)
        self.audit_dead_letter = Counter("modelfence_audit_dead_letter_records",
                                         "Audit records the store refused for good, set aside "
                                         "in the dead letter so later records are committed",
                                         registry=r)
        self.audit_spill_records = Gauge("modelfence_audit_spill_records",
                                         "Audit records waiting in the spill for replay",
                                         registry=r, multiprocess_mode="livesum")
        self.audit_spill_bytes = Gauge("modelfence_audit_spill_bytes",
                                       "Size of the audit spill waiting for replay",
                                       registry=r, multiprocess_mode="livesum")
        # set when /metrics is scraped, from state every worker shares (the monitor's
        # replicated tables) or checks alike (stores): the scraping worker's numbers stand
        self.store_ready = Gauge("modelfence_store_ready", "1 while the store answers its "
                                 "readiness check (0: down, or its circuit breaker open)",
                                 ["store"], registry=r, multiprocess_mode="livemostrecent")
        self.monitor_flagged = Gauge("modelfence_monitor_flagged",
                                     "Principals or tenants in an extraction episode now",
                                     ["model", "kind"], registry=r,
                                     multiprocess_mode="livemostrecent")
        self.monitor_band = Gauge("modelfence_monitor_band_principals",
                                  "Principals whose current risk selects each output band",
                                  ["model", "band"], registry=r,
                                  multiprocess_mode="livemostrecent")
        self.privacy_epsilon = Counter("modelfence_privacy_epsilon",
                                       "ε charged for differentially private answers: the sum "
                                       "of each charged answer's ε (the accountant composes "
                                       "each caller's own, tighter)", ["model"], registry=r)
        self.privacy_spent = Counter("modelfence_privacy_budget_spent",
                                     "Private answers withheld because a budget was spent, by "
                                     "which budget (principal or tenant)", ["model", "budget"],
                                     registry=r)
        self.privacy_alerts = Counter("modelfence_privacy_alerts",
                                      "Principals or tenants crossing the alert share of their "
                                      "ε budget", ["model", "scope"], registry=r)

    def audit_spill_pending(self, records: int, size: int) -> None:
        self.audit_spill_records.set(records)
        self.audit_spill_bytes.set(size)

    def render(self) -> bytes:
        if not self._multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, str(self._folder))  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def close(self) -> None:
        """A stopping worker's live gauges leave the sum; its counters stay counted."""
        if self._multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                os.getpid(), str(self._folder))

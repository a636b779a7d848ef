"""Requests answered and how long they took: the two metrics every request updates.

prometheus_client takes a lock and walks the label names on each `.labels()` call and each
update: a few microseconds per request for these two alone. One process counting alone
(no shared metrics folder) updates them only from its event loop, so plain numbers suffice:
a dict lookup and two additions per request, turned into Prometheus samples when /metrics
is scraped. The exposition is the one prometheus_client gives (`modelfence_requests_total`
and `_created` by action, model and status; `modelfence_request_duration_seconds` buckets,
count, sum and `_created` by action and model). The model label is a configured model's
name, or "-" for a request that named none the gateway serves: never a caller's string.

Workers that share a metrics folder must write prometheus_client's multiprocess files, which
any worker's /metrics reads: there `MultiprocessAnswered` keeps the usual metric objects and
only saves the `.labels()` walk, keeping each label set's children after its first request.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REQUESTS = ("modelfence_requests", "Requests answered")
DURATION = ("modelfence_request_duration_seconds", "Time from arrival to answer")
LABELS = ("action", "model", "status")
DURATION_LABELS = ("action", "model")


class Answered(Collector):
    """Counts and durations in plain numbers; updated from the event loop only (not locked)."""

    def __init__(self, registry: CollectorRegistry, buckets: Sequence[float]) -> None:
        self._bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b)  # type: ignore[no-untyped-call]
                    for b in (*self._bounds, float("inf"))]
        # per (action, model, status): [count, that (action, model)'s duration row], so a
        # request costs one dict lookup for both metrics
        self._counts: dict[tuple[str, str, int], list[Any]] = {}
        self._created: dict[tuple[str, str, int], float] = {}
        # per (action, model): one count per bucket (the last one above every bound), then
        # the sum
        self._durations: dict[tuple[str, str], list[float]] = {}
        self._durations_created: dict[tuple[str, str], float] = {}
        registry.register(self)

    def add(self, action: str, model: str, status: int, seconds: float) -> None:
        entry = self._counts.get((action, model, status))
        if entry is None:
            entry = self._first(action, model, status)
        entry[0] += 1
        row = entry[1]
        row[bisect_left(self._bounds, seconds)] += 1  # le: a value on a bound counts there
        row[-1] += seconds

    def _first(self, action: str, model: str, status: int) -> list[Any]:
        """The first request of a label set: its count, and its durations' row (shared by
        every status of the same action and model)."""
        row = self._durations.get((action, model))
        if row is None:
            row = self._durations[(action, model)] = [0.0] * (len(self._bounds) + 2)
            self._durations_created[(action, model)] = time.time()
        self._created[(action, model, status)] = time.time()
        entry = self._counts[(action, model, status)] = [0, row]
        return entry

    def collect(self) -> Iterator[Metric]:
        # prometheus_client's switch for `_created` series (PROMETHEUS_DISABLE_CREATED_SERIES)
        created = getattr(prometheus_metrics, "_use_created", True)
        requests = CounterMetricFamily(*REQUESTS, labels=LABELS)
        for (action, model, status), entry in list(self._counts.items()):
            requests.add_metric((action, model, str(status)), entry[0],
                                created=self._created[(action, model, status)] if created
                                else None)
        yield requests
        duration = HistogramMetricFamily(*DURATION, labels=DURATION_LABELS)
        for (action, model), row in list(self._durations.items()):
            cumulative, buckets = 0.0, []
            for le, in_bucket in zip(self._le, row, strict=False):  # the sum is left out
                cumulative += in_bucket
                buckets.append((le, cumulative))
            duration.add_metric((action, model), buckets, row[-1])
            if created:  # prometheus_client's histograms say when each label set began too
                duration.add_sample(f"{DURATION[0]}_created",
                                    {"action": action, "model": model},
                                    self._durations_created[(action, model)])
        yield duration


class MultiprocessAnswered:
    """The same two metrics as prometheus_client objects (their values in the workers'
    shared files), each label set's children kept after its first request."""

    def __init__(self, registry: CollectorRegistry, buckets: Sequence[float]) -> None:
        self._requests = Counter(*REQUESTS, LABELS, registry=registry)
        self._duration = Histogram(*DURATION, DURATION_LABELS, buckets=buckets,
                                   registry=registry)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def add(self, action: str, model: str, status: int, seconds: float) -> None:
        key = (action, model, status)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (self._requests.labels(action, model, str(status)),
                                          self._duration.labels(action, model))
        pair[0].inc()
        pair[1].observe(seconds)

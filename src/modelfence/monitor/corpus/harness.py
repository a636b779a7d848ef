"""One victim behind an in-process gateway: the monitor and the output bands, row by row.

The corpus measures the configuration README recommends, so the replay does what the
gateway does for each request, in the same order: read the caller's effective risk (the
higher of its own and its tenant's, `MonitorService.peek`), choose the band as
`ShapingGuard.choose` does (the last band whose `from_risk` the risk reaches), shape the
model's answer with that band's defense, then hand the rows and the *unshaped*
probabilities to `Monitor.observe` (the monitor judges what the model said, not what the
caller saw). Consecutive rows of one caller sent at the same instant are one request: one
risk read, one band, one observe, as a batch is at the gateway.

Only the monitor needs the rows one request at a time. The model's answers do not depend on
the defense, so they are computed once for the whole stream by the caller of `replay`, and
every defense is a pure function of (probabilities, input row, principal, secret) that does
not depend on the batch a row came in (shaping/base.py), so the rows of each band are shaped
together after the loop: the same answers as row by row, at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from ...shaping.guard import Band, labels_only
from ...shaping.spec import parse_defense
from ..score import Monitor, MonitorSettings
from ..summary import Array, Summary

#: The shaping secret of the corpus's gateway (keyed noise and misinformation need one);
#: fixed, so a run is reproducible.
TEST_SECRET = b"modelfence-corpus-shaping-secret"

BandSpec = tuple[float, str, str]  # (from_risk, defense, band name)


def recommended() -> tuple[tuple[BandSpec, ...], dict[str, Any]]:
    """README's recommended bands and monitor settings: the configuration the corpus measures."""
    from ...shaping.recommended import RECOMMENDED_BANDS, RECOMMENDED_MONITOR

    return tuple(RECOMMENDED_BANDS), dict(RECOMMENDED_MONITOR)


@dataclass(frozen=True)
class Alert:
    """A crossing the monitor reported: an alert an operator would receive."""

    at: int  # queries of the stream answered when it was raised (1-based)
    kind: str  # "principal" | "tenant"
    subject: str
    why: str  # the detector that weighed most, and its explanation
    tenant: str | None = None  # a principal's alert that also tells of its tenant's episode


@dataclass(frozen=True)
class Replay:
    """What every row of a stream was answered, and what the monitor made of its sender."""

    risk: Array  # [n] effective risk the gateway acted on when answering the row
    band: Array  # [n] index of the band that shaped the row
    labels: Array  # [n] the top-1 class the caller was shown
    proba: Array  # [n, k] the probabilities shown (one-hot where a band withholds them)
    truth_labels: Array  # [n] the model's own top-1 (the unshaped answer)
    principal_flagged: Array  # [n] the sender's own episode state after the row's request
    tenant_flagged: Array  # [n] its tenant's (False without a tenant)
    alerts: tuple[Alert, ...]
    ends: Array | None = None  # [n] queries answered once the row's request was (its end)

    def __len__(self) -> int:
        return len(self.risk)


class Gateway:
    """A `Monitor` and the output bands of one model, answering as the gateway would."""

    def __init__(self, summary: Summary, *, bands: Sequence[BandSpec] | None = None,
                 monitor: dict[str, Any] | None = None, secret: bytes = TEST_SECRET,
                 reveal_band: bool = False) -> None:
        rec_bands, rec_monitor = recommended()
        specs = tuple(rec_bands if bands is None else bands)
        self.settings = MonitorSettings(**(rec_monitor if monitor is None else monitor))
        self.monitor = Monitor(summary, self.settings)
        self.bands = [Band(name, float(from_risk),
                           parse_defense(spec, secret=secret, summary=summary))
                      for from_risk, spec, name in specs]
        if not self.bands:
            raise ValueError("a gateway needs at least one band")
        self.withholds = tuple(labels_only(b.defense) for b in self.bands)
        self.reveal_band = reveal_band  # whether answers name their band (off by default)
        self._from = np.array([b.from_risk for b in self.bands])

    @property
    def strongest(self) -> int:
        """The band with the highest `from_risk` (the last of equals, as `choose` picks)."""
        return int(len(self._from) - 1 - np.argmax(self._from[::-1]))

    def band_of(self, risk: float) -> int:
        """`ShapingGuard.choose` without pins: the last band whose from_risk `risk` reaches."""
        chosen = 0
        for i, band in enumerate(self.bands):
            if risk >= band.from_risk:
                chosen = i
        return chosen

    def bands_of(self, risk: Array) -> Array:
        """`band_of` for every risk at once."""
        reach = np.asarray(risk, dtype=np.float64)[:, None] >= self._from[None, :]
        last = len(self._from) - 1 - np.argmax(reach[:, ::-1], axis=1)
        out: Array = np.where(reach.any(axis=1), last, 0).astype(np.int8)
        return out

    def shape(self, band: int, proba: Array, x: Array, principal: str) -> Array:
        """One band's answer to rows `x` whose model probabilities are `proba`, as float32
        (the datatype on the wire)."""
        defense = self.bands[band].defense
        shaped = defense.apply(proba, inputs=x if defense.uses_inputs else None,
                               principal=principal)
        out: Array = np.asarray(shaped, dtype=np.float32)
        return out

    def replay(self, x: Array, t: Array, proba: Array, principals: Sequence[str],
               tenants: Sequence[str | None]) -> Replay:
        """Answer a stream's rows in order; `proba` is the model's answer to every row."""
        n = len(x)
        risk = np.zeros(n)
        own, ten_flag = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        ends = np.zeros(n, dtype=np.int64)
        alerts: list[Alert] = []
        m = self.monitor
        peek, peek_tenant, observe = m.peek, m.peek_tenant, m.observe
        for s, e in requests(t, principals, tenants):
            who, tenant = principals[s], tenants[s] or None
            r = peek(who)
            if tenant is not None:
                r = max(r, peek_tenant(tenant))
            risk[s:e], ends[s:e] = r, e
            for c in observe(who, x[s:e], proba[s:e], tenant=tenant, now=float(t[s])):
                joint = getattr(c, "tenant_risk", None) is not None
                alerts.append(Alert(e, c.subject_kind, c.subject, _why(c.risk.readings),
                                    tenant if joint else None))
            own[s:e] = m.risk(who).flagged
            if tenant is not None:
                ten_flag[s:e] = m.tenant_risk(tenant).flagged
        band = self.bands_of(risk)
        shown = self.answer(band, proba, x, principals)
        return Replay(risk, band, shown.argmax(axis=1), shown, proba.argmax(axis=1), own,
                      ten_flag, tuple(alerts), ends)

    def answer(self, band: Array, proba: Array, x: Array, principals: Sequence[str]) -> Array:
        """Each row shaped by its band (and its principal, for keyed defenses)."""
        shown = np.asarray(proba, dtype=np.float32).copy()
        who = np.asarray(principals, dtype=object)
        for b in np.unique(band):
            if self.bands[b].defense.spec == "none":
                continue
            rows = band == b
            for p in np.unique(who[rows]):
                idx = np.nonzero(rows & (who == p))[0]
                shown[idx] = self.shape(int(b), proba[idx], x[idx], str(p))
        return shown


def requests(t: Array, principals: Sequence[str], tenants: Sequence[str | None]
             ) -> list[tuple[int, int]]:
    """(start, end) of each request: consecutive rows of one caller sent at one instant."""
    n = len(t)
    if n == 0:
        return []
    cut = np.asarray(t[1:]) != np.asarray(t[:-1])
    if len(set(principals)) > 1 or len(set(tenants)) > 1:
        p, q = np.asarray(principals, dtype=object), np.asarray(tenants, dtype=object)
        cut |= (p[1:] != p[:-1]) | (q[1:] != q[:-1])
    edges = [0, *(np.nonzero(cut)[0] + 1).tolist(), n]
    return list(pairwise(edges))


def _why(readings: dict[str, Any]) -> str:
    if not readings:
        return ""
    top = max(readings, key=lambda k: readings[k].score)
    return f"{top} {readings[top].score:.2f} ({readings[top].why})"

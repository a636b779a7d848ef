"""One risk per caller from many detectors, and the monitor's snapshots.

Detector scores combine by noisy-OR (`risk.combine`); each detector's contribution is
reported with its explanation, so a denial can say why.

A caller is a principal (an API key, a user) and, when the request names one, its tenant: a
tenant's state sees every query of all its principals, so a thief who spreads one extraction
over many keys is judged on the whole of it. Each kind has its own LRU table
(`callers.Table`) capped at `max_principals` and its own `PeerStats`; with each caller's
state bounded in size (its rings grow with its queries up to their sizes, `rings`), the
monitor's memory is bounded by settings alone.

`observe` recomputes the risk of the callers it updates (the readings of detectors that saw
new rows) and caches it, so the request path reads a risk with one dictionary lookup
(`peek`). The score the gateway acts on is held by each caller's episode (`risk.episodes`,
the rules every protocol shares: hysteresis, a minimum dwell, a sticky hold for synthetic
queries), and `observe` reports each episode's start once (`risk.crossings`). `snapshot`
and `restore` carry the whole state as plain arrays (.npz, no pickle) for persistence and
for replicas that share one monitor's state. The settings, `Risk` and `Crossing` live in
`verdict.py`, and are exported here too.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import io
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Any, BinaryIO

import numpy as np

from ..errors import ConfigurationError
from ..risk import Hysteresis, combine_with, crossings, step
from . import forked
from .callers import CallerState, Table
from .detectors import Reading
from .facts import Batch, Cells, Judge
from .resends import projection
from .rings import ROW
from .snapshots import READS, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, Capture, Fields, risk_of
from .summary import Array, Summary
from .verdict import NO_RISK, Crossing, Kind, MonitorSettings, Risk, combine

__all__ = ["NO_RISK", "SNAPSHOT_FORMAT", "SNAPSHOT_VERSION", "CallerState", "Crossing", "Kind",
           "Monitor", "MonitorSettings", "Risk", "Table", "combine", "fingerprint"]

#: Callers `snapshot_async` copies between two turns of the event loop: about 100 µs each
#: on digits (64 features), so a turn is held some 6 ms.
CAPTURE_STEP = 64


def fingerprint(summary: Summary) -> str:
    """A digest of every number in the summary: state is only meaningful against the same one."""
    digest = hashlib.sha256()
    for f in fields(summary):
        value = np.ascontiguousarray(getattr(summary, f.name), dtype=np.float64)
        digest.update(f"{f.name}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


class Monitor:
    """Per-principal and per-tenant extraction monitoring for one model."""

    def __init__(self, summary: Summary, settings: MonitorSettings | None = None) -> None:
        self.summary = summary
        self.settings = settings or MonitorSettings()
        self._rules = Hysteresis.of(self.settings)
        self._cells = Cells(summary)  # one cell lookup per observe, for every table
        self._judge = Judge(summary)  # and one naturalness verdict
        self._proj = projection(summary.n_features, int(summary.resend_key))  # anchor space
        self._shape = (summary.n_features, summary.n_classes)  # what `observe` accepts
        self._tables: dict[Kind, Table] = {
            k: Table(k, summary, self.settings, self._cells, self._judge)
            for k in ("principal", "tenant")}
        self._principals = self._tables["principal"].states
        self._tenants = self._tables["tenant"].states
        self._captures: list[Capture] = []  # snapshots being taken (`snapshot_async`)

    def observe(self, principal: str, features: Array, proba: Array, *,
                tenant: str | None = None, now: float | None = None) -> list[Crossing]:
        """Record answered rows [n, d] and their probabilities [n, k] for `principal`.

        `now` (unix seconds, default the clock) is when they were asked; `tenant`, when given,
        is charged the same rows. Returns the episodes that started with these rows, one
        `Crossing` per alert (see `Crossing` for a principal and its tenant starting together).
        """
        x, p = self._rows(features, proba)
        at = time.time() if now is None else float(now)
        if not math.isfinite(at):
            raise ConfigurationError(f"monitor observe needs a finite time, got {now}")
        z = np.divide(x - self.summary.mean, self.summary.scale, dtype=ROW)
        rows = Batch(x, z, p, self._cells, self._judge, self._proj)
        subjects: list[tuple[Kind, str]] = [("principal", principal)]
        if tenant is not None:
            subjects.append(("tenant", tenant))
        started: dict[Kind, Risk] = {}
        for kind, key in subjects:
            state = self._tables[kind].touch(key)
            for capture in self._captures:  # a snapshot being taken copies it first
                capture.before_change(state)
            seen = state.observe(rows, at)
            state.risk, began = self._assess(state, seen, at)
            if began:
                started[kind] = state.risk
        if not started:
            return []
        return crossings(principal, tenant, started, self._principals[principal].risk.flagged)

    def _rows(self, features: Array, proba: Array) -> tuple[Array, Array]:
        x = np.asarray(features, dtype=np.float64)
        p = np.asarray(proba, dtype=np.float64)
        if x.ndim == 1:
            x, p = x[None, :], p.reshape(1, -1)
        if (x.ndim != 2 or p.ndim != 2 or x.shape[1] != self._shape[0]
                or p.shape != (len(x), self._shape[1])):
            raise ConfigurationError(
                f"monitor expects rows of {self.summary.n_features} features with "
                f"{self.summary.n_classes} probabilities each; got {x.shape} and {p.shape}")
        return x, p

    def _assess(self, state: CallerState, seen: set[str], now: float) -> tuple[Risk, bool]:
        """The risk from fresh readings of the detectors in `seen`, kept ones of the rest,
        held by the caller's episode; and whether an episode started."""
        kept = state.risk.readings
        readings = {n: d.score() if n in seen or n not in kept else kept[n]
                    for n, d in state.detectors.items()}
        raw, synthetic = combine_with({n: r.score for n, r in readings.items()},
                                      self._rules.sticky)
        episode, began = step(state.risk.episode, raw, synthetic, now, self._rules)
        return Risk(episode.level, episode.active, state.queries, readings, raw, episode), began

    def risk(self, principal: str) -> Risk:
        """The principal's risk as of its last observe (0 for an unknown one); `score` is
        the effective risk, `raw` the detectors' own."""
        return self._tables["principal"].risk(principal)

    def tenant_risk(self, tenant: str) -> Risk:
        """The tenant's risk over all its principals' queries, as of its last observe."""
        return self._tables["tenant"].risk(tenant)

    def peek(self, principal: str) -> float:
        """The principal's effective risk (held through its episode), as of its last observe:
        one dictionary lookup, for the request path."""
        state = self._principals.get(principal)
        return 0.0 if state is None else state.risk.score

    def peek_tenant(self, tenant: str) -> float:
        """The tenant's effective risk as of its last observe: one dictionary lookup."""
        state = self._tenants.get(tenant)
        return 0.0 if state is None else state.risk.score

    def standing(self, kind: Kind) -> Iterator[Risk]:
        """Every caller's risk of `kind` as of its last observe (for counts when metrics
        are scraped; the request path never walks them)."""
        return (state.risk for state in self._tables[kind].states.values())

    def top(self, kind: Kind, n: int, keep: Callable[[str], bool] | None = None
            ) -> list[tuple[str, Risk]]:
        """The `n` riskiest callers of `kind` (by effective risk; among equals, the least
        recently seen first), of those `keep` accepts: a heap of `n` over one pass, not a
        sort of every caller (100,000 callers take tens of milliseconds; the request path
        never calls it)."""
        states = self._tables[kind].states.items()
        chosen = states if keep is None else ((k, s) for k, s in states if keep(k))
        best = heapq.nlargest(n, chosen, key=lambda ks: ks[1].risk.score)
        return [(key, state.risk) for key, state in best]

    def count(self, kind: Kind) -> int:
        """How many callers of `kind` the monitor keeps."""
        return len(self._tables[kind].states)

    def state_bytes(self, principal: str) -> int:
        state = self._principals.get(principal)
        return 0 if state is None else state.nbytes

    def __len__(self) -> int:
        return len(self._principals)

    # snapshots ------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Every caller's state, cached risk and the peer tables, as an .npz without pickle.

        A JSON header (format, version, the summary's fingerprint, detectors, caller names)
        travels as a uint8 array; each detector field holds only the values its rings hold
        (`snapshots`). Holds the caller until done: a gateway uses `snapshot_async`.
        """
        capture = self.capture()
        capture.step()
        return capture.encode()

    def capture(self) -> Capture:
        """A copy, caller by caller, of the state as of now (`snapshots.Capture`): callers
        that `observe` changes before their turn are copied first."""
        header: dict[str, Any] = {
            "format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION,
            "summary": fingerprint(self.summary), "n_features": self.summary.n_features,
            "n_classes": self.summary.n_classes, "detectors": list(self.settings.detectors)}
        return Capture(header, self._tables)

    async def snapshot_async(self, callers: int = CAPTURE_STEP) -> bytes:
        """`snapshot` without holding the event loop, of the state when this was called.

        Where the platform forks (`forked`), a child process encodes its copy-on-write
        image of the state into a temporary file, which is read back in a worker thread:
        this process only waits. Else (or when no child can be made) `callers` at a time
        are copied, the loop serving requests between steps (each caller as it was when
        this began), and the bytes are encoded in a worker thread."""
        with tempfile.TemporaryFile() as out:
            if await forked.run(functools.partial(self._encode_to, out), "monitor snapshot"):
                return await asyncio.to_thread(_read_back, out)
        capture = self.capture()
        self._captures.append(capture)
        try:
            while capture.step(callers):
                await asyncio.sleep(0)
        finally:
            self._captures.remove(capture)
        return await asyncio.to_thread(capture.encode)

    def _encode_to(self, out: BinaryIO) -> None:
        """The state, written to `out` (a forked child's work: it holds a copy of it)."""
        capture = self.capture()
        capture.step()
        capture.write(out)
        out.flush()

    def restore(self, data: bytes) -> None:
        """Replace this monitor's state with a snapshot's (all or nothing).

        An instance method: the summary and settings are the monitor's own, and the snapshot
        must have been taken with the same summary and detectors. Anything else, and bytes
        that are not a snapshot, raise ConfigurationError and leave the monitor as it was.
        Episodes carry over as they were (their level, start and hold); beyond
        `max_principals`, the least recently seen callers are dropped. Reads the versions
        in `snapshots.READS`: a snapshot saved before an upgrade restores after it.
        """
        arrays = _read_npz(data)
        try:
            header = json.loads(arrays.pop("header").tobytes().decode())
            self._check(header)
            tables: dict[Kind, Table] = {}
            for kind in self._tables:
                tables[kind] = self._rebuild(kind, header[kind], arrays)
        except ConfigurationError:
            raise
        except Exception as exc:  # a malformed snapshot: say so in one line, not numpy's words
            raise ConfigurationError(
                f"not a valid monitor snapshot ({type(exc).__name__}: {exc})"[:300]) from None
        self._tables = tables
        self._principals = tables["principal"].states
        self._tenants = tables["tenant"].states

    def _check(self, header: dict[str, Any]) -> None:
        if header.get("format") != SNAPSHOT_FORMAT or header.get("version") not in READS:
            raise ConfigurationError(
                f"monitor snapshot format {header.get('format')!r} version "
                f"{header.get('version')!r}; this modelfence reads {SNAPSHOT_FORMAT!r} "
                f"versions {', '.join(map(str, READS))}")
        shape = (self.summary.n_features, self.summary.n_classes)
        if (header["n_features"], header["n_classes"]) != shape:
            raise ConfigurationError(
                f"monitor snapshot is for a model of {header['n_features']} features and "
                f"{header['n_classes']} classes; this monitor's summary has {shape[0]} and "
                f"{shape[1]}")
        if tuple(header["detectors"]) != self.settings.detectors:
            raise ConfigurationError(
                f"monitor snapshot has detectors {header['detectors']}; this monitor runs "
                f"{list(self.settings.detectors)}")
        if header["summary"] != fingerprint(self.summary):
            raise ConfigurationError(
                "monitor snapshot was taken with a different summary (fingerprint "
                f"{header['summary']}, this monitor's {fingerprint(self.summary)}); its state "
                "is measured against that one and cannot be restored here")

    def _rebuild(self, kind: Kind, header: dict[str, Any], arrays: dict[str, Array]) -> Table:
        table = Table(kind, self.summary, self.settings, self._cells, self._judge)
        keys: list[str] = header["keys"]
        n, names = len(keys), self.settings.detectors
        queries, risks = arrays[f"{kind}.queries"], arrays[f"{kind}.risk"]
        episodes = arrays[f"{kind}.episode"]
        whys: list[list[str]] = header["why"]
        if (queries.shape != (n,) or risks.shape != (n, 1 + len(names)) or len(whys) != n
                or episodes.shape != (n, 4)
                or len(set(keys)) != n or not all(isinstance(k, str) for k in keys)):
            raise ConfigurationError(f"monitor snapshot's {kind} table is inconsistent")
        table.peers.load(header["peers"], {
            k: arrays[f"{kind}.peers.{k}"] for k in table.peers.state()[1]})
        keep = max(0, n - self.settings.max_principals)  # the least recent go first
        fields = Fields(kind, arrays, n)
        for i in range(keep, n):
            state = table.states[keys[i]] = table.new(keys[i])
            for name, det in state.detectors.items():
                det.load({k: fields.part(f"{name}.{k}", i) for k in det.state()})
            state.load_filters(fields.caller(i, state.filters_state()))
            state.queries = int(queries[i])
            readings = {name: Reading(float(risks[i, 1 + j]), str(whys[i][j]))
                        for j, name in enumerate(names)}
            state.risk = risk_of(state.queries, readings, float(risks[i, 0]), episodes[i])
        return table


def _read_back(out: BinaryIO) -> bytes:
    out.seek(0)
    return out.read()


def _read_npz(data: bytes) -> dict[str, Array]:
    """The arrays of an .npz, refusing pickled objects; any failure is a ConfigurationError."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile, numpy format and pickle refusals alike
        raise ConfigurationError(
            f"not a monitor snapshot ({type(exc).__name__}: {exc})"[:300]) from None

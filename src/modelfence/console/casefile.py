"""What the console reads of the audit log for an investigation: alerts and their state, a
principal's risk history, and the evidence bundle an engineer downloads.

An alert's state lives in the tamper-evident log itself: acknowledging or resolving one is
a `console:alert-ack` / `console:alert-resolve` record whose target is `alert:<seq>`, so who
did what to an alert, and when, is as hard to rewrite as the alert, every replica reads
the same answer, and nothing else needs a store. Since those records always follow their
alert, the states of a page of alerts are read from the records after its oldest alert,
off the store's (action, position) index.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..audit.chain import Row, hash_of, us_to_iso
from ..audit.store import AuditStore, Query
from ..watermark.bundle import INVESTIGATION_TYPE
from .chain_status import check_head, check_window
from .chain_verify import ACTION as VERIFY_ACTION

ACK, RESOLVE = "console:alert-ack", "console:alert-resolve"
#: The alerts the gateway records: the monitor's, a budget's, a download's, privacy's
ALERT_ACTIONS = ("alert:monitor", "alert:budget", "alert:download", "alert:privacy")
STATE_OF = {ACK: "acknowledged", RESOLVE: "resolved"}
_HISTORY = 400  # answers on a principal's risk plot
_EVIDENCE_RECORDS = 5000  # a principal's newest records in a bundle


@dataclass(frozen=True, slots=True)
class AlertView:
    """An alert as the console lists it, with what an engineer did about it."""

    seq: int
    time: str
    model: str | None
    principal: str | None
    tenant: str | None
    risk: float | None
    reason: str
    state: str = "open"
    by: str | None = None

    @property
    def target(self) -> str:
        return f"alert:{self.seq}"


def alert_of(row: Row) -> AlertView:
    record = orjson.loads(row.payload)
    return AlertView(row.seq, us_to_iso(row.ts_us), row.model, row.principal, row.tenant,
                     record.get("risk"), str(record.get("reason", "")))


async def alerts(store: AuditStore, *, limit: int, upto_seq: int | None = None,
                 principal: str | None = None, model: str | None = None) -> list[AlertView]:
    """Newest alerts first (up to `upto_seq` for the next page), each with its state: one
    query per kind of alert, each read off the store's (action, position) index."""
    rows: list[Row] = []
    for action in ALERT_ACTIONS:
        rows += await store.select(Query(action=action, limit=limit, newest_first=True,
                                         upto_seq=upto_seq, principal=principal, model=model))
    rows = sorted(rows, key=lambda r: r.seq, reverse=True)[:limit]
    found = [alert_of(r) for r in rows]
    if not found:
        return found
    states = await alert_states(store, after_seq=min(r.seq for r in rows))
    return [with_state(a, states.get(a.target)) for a in found]


async def alert_states(store: AuditStore, *, after_seq: int) -> dict[str, tuple[str, str]]:
    """target -> (state, admin) from the console's records after position `after_seq`;
    the last successful action on an alert decides (a resolve after an ack: resolved)."""
    done: list[Row] = []
    for action in STATE_OF:
        async for rows in store.scan(Query(action=action, after_seq=after_seq)):
            done += rows
    states: dict[str, tuple[str, str]] = {}
    for row in sorted(done, key=lambda r: r.seq):
        if row.status is not None and row.status < 400:
            target = orjson.loads(row.payload).get("key_id")
            if isinstance(target, str):
                states[target] = (STATE_OF[str(row.action)], str(row.principal))
    return states


def with_state(alert: AlertView, state: tuple[str, str] | None) -> AlertView:
    if state is None:
        return alert
    return dataclasses.replace(alert, state=state[0], by=state[1])


async def alert_by_seq(store: AuditStore, seq: int) -> AlertView | None:
    rows = await store.select(Query(after_seq=seq - 1, upto_seq=seq, limit=1))
    if not rows or not (rows[0].action or "").startswith("alert:"):
        return None
    return alert_of(rows[0])


def within(tenants: frozenset[str] | None, tenant: str | None) -> bool:
    """A record or alert of one of `tenants` (None: every tenant, and none)."""
    return tenants is None or (tenant is not None and tenant in tenants)


async def risk_history(store: AuditStore, model: str, principal: str,
                       tenants: frozenset[str] | None = None) -> list[tuple[float, float]]:
    """(unix time, risk) of the principal's newest answered calls on `model` (under one of
    `tenants`, when given), oldest first: the risk each call was judged at, as its audit
    record says."""
    rows = await store.select(Query(principal=principal, model=model, limit=_HISTORY,
                                    newest_first=True))
    series = []
    for row in reversed(rows):
        if (row.action is None or row.action.startswith(("alert:", "console:", "admin:"))
                or not within(tenants, row.tenant)):
            continue
        risk = orjson.loads(row.payload).get("risk")
        if isinstance(risk, int | float):
            series.append((row.ts_us / 1e6, float(risk)))
    return series


async def evidence(store: AuditStore, *, model: str, principal: str,
                   explanation: dict[str, Any], public_key: Ed25519PublicKey | None,
                   exported_by: str, model_only: bool = False,
                   tenants: frozenset[str] | None = None) -> dict[str, Any]:
    """The bundle an engineer hands on: the principal's alerts, the monitor's explanation,
    its audit records (each with its hashes and whether its hash holds) and what the chain
    says about them (`chain_report`). Its records are of every model, or of `model` alone
    with `model_only` (an admin limited to some models sees no other model's records), and
    of `tenants` alone when given (nor another tenant's)."""
    rows = await store.select(Query(principal=principal, model=model if model_only else None,
                                    limit=_EVIDENCE_RECORDS, newest_first=True))
    rows = [r for r in reversed(rows) if within(tenants, r.tenant)]
    found = [a for a in await alerts(store, limit=100, principal=principal, model=model)
             if within(tenants, a.tenant)]
    return {
        "type": INVESTIGATION_TYPE, "version": 1,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "exported_by": exported_by, "model": model, "principal": principal,
        "explanation": explanation,
        "alerts": [_alert_json(a) for a in found],
        "records": [_row_json(r) for r in rows],
        "records_truncated": len(rows) == _EVIDENCE_RECORDS,
        "chain": await chain_report(store, rows, public_key)}


async def chain_report(store: AuditStore, rows: list[Row],
                       public_key: Ed25519PublicKey | None) -> dict[str, Any]:
    """What the chain says about the exported records, without walking the whole log on
    the console's event loop: each record's hash and its links to its neighbours, the
    newest signed checkpoint and the records after it, and the last full verification an
    admin ran (`modelfence audit verify` or the audit page's)."""
    window = await check_window(store, rows)
    head = await check_head(store, public_key)
    last = await store.select(Query(action=VERIFY_ACTION, limit=1, newest_first=True))
    full = None
    if last:
        record = orjson.loads(last[0].payload)
        full = {"seq": last[0].seq, "time": record.get("time"), "by": last[0].principal,
                "result": (record.get("details") or {}).get("verified")}
    return {"ok": window.ok and head.ok,
            "records_checked": window.checked, "records_broken": list(window.broken),
            "head": {"seq": head.head_seq, "checkpoint_seq": head.checkpoint_seq,
                     "checkpoint_time": head.checkpoint_time, "signature": head.signature,
                     "walked": head.walked, "problem": head.problem},
            "last_full_verification": full}


def _alert_json(alert: AlertView) -> dict[str, Any]:
    return {"seq": alert.seq, "time": alert.time, "model": alert.model,
            "principal": alert.principal, "tenant": alert.tenant, "risk": alert.risk,
            "reason": alert.reason, "state": alert.state, "by": alert.by}


def _row_json(row: Row) -> dict[str, Any]:
    return {"seq": row.seq, "hash": row.hash.hex(), "prev_hash": row.prev.hex(),
            "hash_holds": hash_of(row) == row.hash, "record": orjson.loads(row.payload)}


def series_table(series: Sequence[tuple[float, float]]) -> list[tuple[str, float]]:
    """The plot's points as (time, risk) rows for its table fallback, newest first."""
    return [(us_to_iso(int(t * 1e6)), r) for t, r in reversed(series)]

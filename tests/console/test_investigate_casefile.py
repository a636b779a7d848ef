"""What the investigation reads of a real (SQLite) audit log: alerts and the state an
engineer's records give them, a principal's risk history and its plot, and the evidence
bundle with the chain's verification."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelfence.audit.record import event_record
from modelfence.audit.sinks import AuditSink, audit_sink_from_url, audit_store_of
from modelfence.audit.sql import TABLE
from modelfence.audit.store import AuditStore
from modelfence.config.audit import AuditSettings
from modelfence.console import casefile
from modelfence.console.chain_verify import ACTION as VERIFY_ACTION
from modelfence.console.plot import risk_plot
from modelfence.watermark.bundle import INVESTIGATION_TYPE


@pytest.fixture
async def audit(tmp_path: Path) -> AsyncIterator[tuple[AuditSink, AuditStore]]:
    sink = audit_sink_from_url(f"sqlite:///{tmp_path}/audit.db",
                               AuditSettings(durability="strict"))
    await sink.open()
    store = audit_store_of(sink)
    assert store is not None
    yield sink, store
    await sink.close()


async def _write(sink: AuditSink, action: str, **kw: object) -> None:
    await sink.write(event_record(action=action, reason=str(kw.pop("reason", "ok")),
                                  **kw))  # type: ignore[arg-type]


async def test_alert_state_comes_from_the_records_that_target_it(
        audit: tuple[AuditSink, AuditStore]) -> None:
    sink, store = audit
    for risk in (0.1, 0.4, 0.8):
        await _write(sink, "infer", principal="mallory", model="m", risk=risk)
    await _write(sink, "alert:monitor", principal="mallory", model="m", risk=0.8,
                 reason="ood 1.00 (rows off the data)")
    await _write(sink, "alert:monitor", principal="bob", model="m", risk=0.6)
    await _write(sink, "infer", principal="mallory", model="m", risk=0.9)
    found = await casefile.alerts(store, limit=10)
    assert [(a.principal, a.state) for a in found] == [("bob", "open"), ("mallory", "open")]
    bob, mallory = found
    await _write(sink, casefile.ACK, principal="ops", target=mallory.target, status=303)
    await _write(sink, casefile.RESOLVE, principal="ops", target=bob.target, status=403)
    await _write(sink, casefile.ACK, principal="ann", target=bob.target, status=303)
    await _write(sink, casefile.RESOLVE, principal="ann", target=bob.target, status=303)
    found = await casefile.alerts(store, limit=10)
    assert [(a.principal, a.state, a.by) for a in found] == [
        ("bob", "resolved", "ann"), ("mallory", "acknowledged", "ops")]
    assert [a.principal for a in await casefile.alerts(store, limit=10,
                                                         principal="mallory")] == ["mallory"]
    # paging: below bob's alert, only mallory's
    older = await casefile.alerts(store, limit=10, upto_seq=bob.seq - 1)
    assert [a.seq for a in older] == [mallory.seq]
    assert (await casefile.alert_by_seq(store, mallory.seq)) is not None
    assert await casefile.alert_by_seq(store, 1) is None  # an infer record is no alert
    assert await casefile.alert_by_seq(store, 10_000) is None
    # every kind of alert is listed, newest first, and the page's limit holds
    await _write(sink, "alert:budget", principal="carol", model="m")
    newest = await casefile.alerts(store, limit=2)
    assert [(a.principal, a.state) for a in newest] == [("carol", "open"), ("bob", "resolved")]


async def test_history_plot_and_evidence(audit: tuple[AuditSink, AuditStore]) -> None:
    sink, store = audit
    for risk in (0.0, 0.2, 0.55, 0.9):
        await _write(sink, "infer", principal="mallory", model="m", risk=risk)
    await _write(sink, "alert:monitor", principal="mallory", model="m", risk=0.9)
    await _write(sink, "infer", principal="mallory", model="other", risk=0.3)
    await _write(sink, "infer", principal="bob", model="m", risk=0.1)
    series = await casefile.risk_history(store, "m", "mallory")
    assert [r for _, r in series] == [0.0, 0.2, 0.55, 0.9]  # oldest first, no alert
    assert [t for t, _ in series] == sorted(t for t, _ in series)

    plot = risk_plot(series, [(0.0, "full"), (0.5, "labels")])
    assert plot is not None and len(plot.points.split()) == 4
    assert [r.label for r in plot.rules] == ["labels"]  # the band starting at 0 is the axis
    ys = [float(p.split(",")[1]) for p in plot.points.split()]
    assert ys == sorted(ys, reverse=True)  # rising risk climbs the plot (y grows downwards)
    assert "highest 0.90" in plot.description
    assert risk_plot([], []) is None
    assert casefile.series_table(series)[0][1] == 0.9  # the table shows newest first

    bundle = await casefile.evidence(store, model="m", principal="mallory",
                                     explanation={"risk": 0.9}, public_key=None,
                                     exported_by="ops")
    assert bundle["type"] == INVESTIGATION_TYPE and bundle["exported_by"] == "ops"
    chain = bundle["chain"]
    assert chain["ok"] is True and chain["records_checked"] == 6 and not chain["records_broken"]
    assert chain["head"]["seq"] == 7 and chain["last_full_verification"] is None
    assert [r["record"]["model"] for r in bundle["records"]] == ["m"] * 5 + ["other"]
    assert all(r["hash_holds"] for r in bundle["records"])
    assert [a["risk"] for a in bundle["alerts"]] == [0.9]


async def test_evidence_names_a_record_edited_in_the_store(
        audit: tuple[AuditSink, AuditStore], tmp_path: Path) -> None:
    sink, store = audit
    for risk in (0.1, 0.2, 0.3):
        await _write(sink, "infer", principal="mallory", model="m", risk=risk)
    await _write(sink, VERIFY_ACTION, principal="ops",
                 details={"verified": {"ok": True, "records": 3}})
    with sqlite3.connect(tmp_path / "audit.db") as db:  # someone lowers a risk afterwards
        db.execute(f"UPDATE {TABLE} SET payload = CAST(replace(payload, '0.2', '0.0') AS BLOB) "  # noqa: S608
                   "WHERE seq = 2")
    bundle = await casefile.evidence(store, model="m", principal="mallory", explanation={},
                                     public_key=None, exported_by="ops")
    chain = bundle["chain"]
    assert chain["ok"] is False and chain["records_broken"] == [2]
    assert [r["hash_holds"] for r in bundle["records"]] == [True, False, True]
    assert chain["last_full_verification"]["result"] == {"ok": True, "records": 3}


async def test_a_tenant_s_admin_gets_that_tenant_s_history_and_evidence_only(
        audit: tuple[AuditSink, AuditStore]) -> None:
    """A principal with keys in two tenants: each tenant's admin sees its own calls only."""
    sink, store = audit
    for tenant, risk in (("t1", 0.1), ("t2", 0.7), ("t1", 0.2)):
        await _write(sink, "infer", principal="mallory", tenant=tenant, model="m", risk=risk)
    await _write(sink, "alert:monitor", principal="mallory", tenant="t2", model="m", risk=0.7)
    t1 = frozenset({"t1"})
    assert [r for _, r in await casefile.risk_history(store, "m", "mallory", t1)] == [0.1, 0.2]
    assert len(await casefile.risk_history(store, "m", "mallory")) == 3
    bundle = await casefile.evidence(store, model="m", principal="mallory", explanation={},
                                     public_key=None, exported_by="desk", tenants=t1)
    assert {r["record"]["tenant"] for r in bundle["records"]} == {"t1"}
    assert bundle["alerts"] == []
    everyone = await casefile.evidence(store, model="m", principal="mallory", explanation={},
                                       public_key=None, exported_by="ops")
    assert len(everyone["records"]) == 4 and len(everyone["alerts"]) == 1

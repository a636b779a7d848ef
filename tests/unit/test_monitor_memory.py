"""A caller's monitor state grows with its queries, and snapshots hold only what is held.

Rings start small and double up to their size (`monitor/rings.py`), so a key that sends a
few queries costs a few kilobytes, not the quarter megabyte of full rings; a snapshot keeps
only the values each ring holds, and is copied a few callers at a time while the event loop
serves requests (`Monitor.snapshot_async`).

`fixtures/monitor_snapshot_v4.npz` holds a snapshot written by the code before this change
(format version 4: whole rings, empty slots included), the digits summary it was taken with,
the queries that follow it and the risks that code gave them: restored here, the same
queries must give the same risks (an upgrade keeps the saved state). It was recorded with
``PYTHONPATH=<checkout of that code>/src python tests/unit/test_monitor_memory.py --record``.
"""

from __future__ import annotations

import asyncio
import io
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from modelfence.monitor import Monitor, Summary

Array = np.ndarray[Any, Any]
FIXTURE = Path(__file__).parent / "fixtures" / "monitor_snapshot_v4.npz"
T0 = 1_700_000_000.0
#: Principals of the recorded snapshot and the queries each had sent (fresh, exact repeats
#: and noisy re-sends): one ring not yet grown, one partly, one past its first wrap.
HISTORY = {"light": 3, "mid": 40, "heavy": 300}
NEXT = 24  # queries each principal (and a new one) sends after the snapshot


def risks(monitor: Monitor, who: str, tenant: str) -> list[float]:
    """Effective and raw risk and every detector's score, of a principal and its tenant."""
    out = []
    for risk in (monitor.risk(who), monitor.tenant_risk(tenant)):
        out += [risk.score, risk.raw, float(risk.flagged),
                *(risk.readings[n].score for n in monitor.settings.detectors)]
    return out


def streams(x: Array, seed: int) -> dict[str, Array]:
    """Each principal's rows: natural ones ("heavy": random rows on the grid, a thief's), a
    few sent again exactly and a few with 1% noise."""
    rng = np.random.default_rng(seed)
    out, at = {}, 0
    for who, n in HISTORY.items():
        rows = x[at:at + n].copy() if who != "heavy" else thief(n, rng)
        at += n
        for i in range(2, n, 7):
            rows[i] = rows[i - 2] if i % 2 else rows[i - 2] + rng.normal(0, 0.01, 64)
        out[who] = rows
    return out


def thief(n: int, rng: np.random.Generator) -> Array:
    """Uniform random rows on the digits grid: what a thief without data sends."""
    return rng.integers(0, 17, size=(n, 64)).astype(np.float64)


def record() -> None:
    """Write the fixture with the code on the path (the code before the change)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    model = LogisticRegression(max_iter=300).fit(x[order[:450]], y[order[:450]])
    fit = x[order[450:800]]
    summary = Summary.fit(fit, model.predict_proba(fit))
    monitor = Monitor(summary)
    history = streams(x[order[800:]], 1)
    for who, rows in history.items():
        for i in range(len(rows)):
            monitor.observe(who, rows[i:i + 1], model.predict_proba(rows[i:i + 1]),
                            tenant="org", now=T0 + i)
    snapshot = monitor.snapshot()
    nx = x[order[1200:1200 + 4 * NEXT]].copy()
    callers = np.array([*HISTORY, "new"] * NEXT)
    nx[callers == "heavy"] = thief(NEXT, np.random.default_rng(2))
    expected = []
    for i in range(len(nx)):
        monitor.observe(str(callers[i]), nx[i:i + 1], model.predict_proba(nx[i:i + 1]),
                        tenant="org", now=T0 + 400 + i)
        expected.append(risks(monitor, str(callers[i]), "org"))
    with tempfile.TemporaryDirectory() as tmp:
        summary_bytes = summary.save(Path(tmp) / "s.npz").read_bytes()
    np.savez_compressed(FIXTURE, summary=np.frombuffer(summary_bytes, np.uint8),
                        snapshot=np.frombuffer(snapshot, np.uint8), next_x=nx,
                        next_p=model.predict_proba(nx), next_who=callers,
                        expected=np.array(expected))


@cache
def recorded() -> dict[str, Array]:
    with np.load(FIXTURE, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@cache
def summary() -> Summary:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "summary.npz"
        path.write_bytes(recorded()["summary"].tobytes())
        return Summary.load(path)


def fresh_rows(n: int, seed: int) -> tuple[Array, Array]:
    """`n` distinct rows on the digits grid, and made-up answers for them."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 17, size=(n, 64)).astype(np.float64)
    return x, rng.dirichlet(np.ones(10) * 0.3, n)


def test_a_caller_with_few_queries_holds_little_state() -> None:
    monitor = Monitor(summary())
    x, p = fresh_rows(2600, 0)
    held = []
    for i in range(len(x)):
        monitor.observe("k", x[i:i + 1], p[i:i + 1], now=T0 + i)
        if i + 1 in (1, 5, 100, 2100, 2600):
            held.append(monitor.state_bytes("k"))
    assert held[0] <= held[1] < 16_000, held  # not the 249 KB of full rings
    assert held[1] < held[2] < held[3], held  # grows with the queries...
    assert held[3] == held[4] <= 249_304, held  # ...up to the rings' sizes, then no more


def arrays_of(data: bytes) -> dict[str, Array]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def assert_same_snapshot(a: bytes, b: bytes) -> None:
    got, want = arrays_of(a), arrays_of(b)
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def populated(seed: int = 3) -> Monitor:
    """Callers of 1, 5, 40 and 700 fresh rows (grown and ungrown rings, wrapped windows)."""
    monitor = Monitor(summary())
    x, p = fresh_rows(746, seed)
    at = 0
    for who, n in (("one", 1), ("five", 5), ("forty", 40), ("many", 700)):
        for i in range(at, at + n, 10):
            j = slice(i, min(i + 10, at + n))
            monitor.observe(who, x[j], p[j], tenant="org", now=T0 + i)
        at += n
    return monitor


def test_a_snapshot_holds_used_rows_and_restores_to_the_same_outputs() -> None:
    a = populated()
    data = a.snapshot()
    arrays = arrays_of(data)
    # "one" sent one row: its re-send anchors are one row, not 2,048
    lengths = arrays["principal.lengths.resends.anchors"]
    assert lengths.tolist() == [1, 5, 40, 700]
    assert len(data) < 5 * 249_304 / 2  # against the five callers' full rings
    b = Monitor(summary())
    b.restore(data)
    assert_same_snapshot(b.snapshot(), data)
    for who in ("one", "five", "forty", "many"):
        assert b.state_bytes(who) == a.state_bytes(who)
    x, p = fresh_rows(120, 9)
    for i in range(len(x)):
        who = ("one", "five", "forty", "many", "new")[i % 5]
        for m in (a, b):
            m.observe(who, x[i:i + 1], p[i:i + 1], tenant="org", now=T0 + 800 + i)
        assert risks(b, who, "org") == risks(a, who, "org")
        assert b.risk(who) == a.risk(who)


def test_a_snapshot_written_before_version_5_restores_to_the_recorded_outputs() -> None:
    rec = recorded()
    monitor = Monitor(summary())
    monitor.restore(rec["snapshot"].tobytes())
    assert set(monitor._principals) == set(HISTORY)
    for i, who in enumerate(rec["next_who"].tolist()):
        monitor.observe(who, rec["next_x"][i:i + 1], rec["next_p"][i:i + 1], tenant="org",
                        now=T0 + 400 + i)
        np.testing.assert_allclose(risks(monitor, who, "org"), rec["expected"][i], rtol=0,
                                   atol=1e-12, err_msg=f"query {i} of {who}")
    assert rec["expected"][:, 1].max() > 0  # the recorded risks are not all zero


def test_a_snapshot_taken_while_callers_change_is_the_state_when_it_began() -> None:
    monitor = populated()
    before = monitor.snapshot()
    x, p = fresh_rows(8, 11)

    async def take() -> bytes:
        task = asyncio.create_task(monitor.snapshot_async(callers=1))
        await asyncio.sleep(0)  # the first caller is copied, the loop runs again
        for i, who in enumerate(("one", "many", "forty", "newcomer")):
            monitor.observe(who, x[i:i + 1], p[i:i + 1], tenant="org", now=T0 + 900 + i)
        return await task

    during = asyncio.run(take())
    assert_same_snapshot(during, before)
    assert monitor.risk("newcomer").queries == 1 and not monitor._captures


if __name__ == "__main__" and "--record" in sys.argv:
    record()
    print(f"recorded {FIXTURE} ({FIXTURE.stat().st_size:,} bytes)")


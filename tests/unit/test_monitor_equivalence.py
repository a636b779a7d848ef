"""The monitor's decisions do not move when its code is made faster.

A fixed, seeded set of honest and thief streams from the efficacy corpus (two small victims,
one kept as is and one seen through the anchors' random projection) is replayed through one
monitor per victim, request by request, principals and tenants together (so peers, Sybil
tenants, episodes and alerts all take part). After every request the principal's and the
tenant's effective and raw risk, each detector's score and the episode are compared with a
reference recorded by the code before the observe path was reworked for speed
(`fixtures/monitor_equivalence.npz`), and every alert and flag must be the same.

Scores are compared to 1e-6. The nearest held row is chosen and measured exactly
(`rings.nearest`, tests/unit/test_monitor_nearest.py) and anchors are projected in float64,
so a CPU whose BLAS rounds float32 products otherwise picks the same anchors; the reference
was re-recorded when that was made so (before, 54 of 10,972 `flips` scores depended on the
CPU the replay ran on). PRADA's score to 1e-5: its Shapiro-Wilk W was recorded with
scipy's single-precision swilk, and the monitor's own double-precision W (monitor/prada.py)
differs from it by about 1e-6. Decisions (flags, episodes' starts and ends, alerts) must be
equal. Re-record only when a decision is meant to change (with the code that changes it: the
fixture was last re-recorded when natural re-sends became echo anchors, monitor/resends.py),
or when a new scikit-learn moves the victims' answers (then with the code of the last commit,
from a git worktree): ``python tests/unit/test_monitor_equivalence.py --record``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfence.monitor.corpus.behaviours import behaviour, generate
from modelfence.monitor.corpus.fidelity import model_proba
from modelfence.monitor.corpus.harness import recommended, requests
from modelfence.monitor.corpus.victims import VictimSpec, build_world, victim
from modelfence.monitor.score import Monitor, MonitorSettings

FIXTURE = Path(__file__).parent / "fixtures" / "monitor_equivalence.npz"

#: wine: 13 features (anchors kept as they are), recorded at its own precision; the second
#: has 24 features (anchors through the projection) on a two-decimal grid.
VICTIMS = (victim("wine-3c-13f-lr"),
           VictimSpec("equiv-clf-4c-24f", "make_classification:rows=3000,classes=4,"
                      "features=24,informative=10,redundant=4,sep=1.5,clusters=2,round=2",
                      "lr", "dev"))
#: Honest callers of every kind the re-send filters and detectors treat apart, and thieves
#: that raise each detector, spread over keys and tenants.
BEHAVIOURS = ("random-order-20qps", "class-skewed-1class", "exact-repeats-retries",
              "resend-noise-10pct", "resend-noise-0.5pct", "small-batches-2to8",
              "bursts-20qps", "drift-class", "uniform-range", "jacobian-step0.1",
              "boundary-walk-stride0.1", "linesearch-6x16", "augment-noise-10pct-each-snapped",
              "active-uncertainty-10rounds", "active-kcenter-greedy", "sybil-10-keys-noise10",
              "knockoff-5qps")
#: Queries per stream; the last caller sends more, so its volume stands out from its peers'.
QUERIES, HEAVY = 240, 1600
DETECTORS = MonitorSettings().detectors
#: Per request and subject (principal, tenant): score, raw, flagged, the detectors' scores.
COLUMNS = ("score", "raw", "flagged", *DETECTORS)
PRADA_ATOL = 1e-5


def _requests(spec: VictimSpec) -> tuple[list[tuple[str, str, Any, Any, float]], str]:
    """Every stream's requests merged in time order (stable), and a digest of them."""
    world = build_world(spec, 0)
    out: list[tuple[float, int, tuple[str, str, Any, Any, float]]] = []
    for k, name in enumerate(BEHAVIOURS):
        s = generate(behaviour(name), world, HEAVY if name == BEHAVIOURS[-1] else QUERIES, k)
        proba = model_proba(world, s.x)
        t = s.t - s.t[0] + 1_700_000_000.0 + 7.0 * k  # streams overlap in time
        for a, b in requests(t, s.principals, s.tenants):
            out.append((float(t[a]), len(out),
                        (s.principals[a], s.tenants[a], s.x[a:b], proba[a:b], float(t[a]))))
    x, t = _cycler(world)
    proba = model_proba(world, x)
    for i in range(len(x)):
        out.append((float(t[i]), len(out), ("cycler", "tenant-cycler", x[i:i + 1],
                                            proba[i:i + 1], float(t[i]))))
    out.sort(key=lambda r: (r[0], r[1]))
    digest = hashlib.sha256()
    for _, _, (who, tenant, x, p, at) in out:
        digest.update(f"{who}|{tenant}|{at!r}".encode())
        digest.update(np.ascontiguousarray(x).tobytes())
        digest.update(np.round(p, 6).tobytes())
    return [r[2] for r in out], digest.hexdigest()[:16]


def _cycler(world: Any) -> tuple[Any, Any]:
    """A caller that asks about every k-means cell in turn (what `coverage` scores): natural
    rows of the pool, one of each cell round after round."""
    from modelfence.monitor.facts import Cells
    from modelfence.monitor.rings import ROW

    summary = world.summary
    z = np.divide(world.pool_x - summary.mean, summary.scale, dtype=ROW)
    cells = np.array(Cells(summary).of(z)[0])
    rng = np.random.default_rng(5)
    by_cell = [rng.permutation(np.nonzero(cells == c)[0]) for c in np.unique(cells)]
    order = [rows[r % len(rows)] for r in range(QUERIES // len(by_cell) + 1) for rows in by_cell]
    x = world.pool_x[order[:QUERIES]]
    return x, 1_700_000_100.0 + 2.0 * np.arange(len(x))


def trace(spec: VictimSpec, dtype: Any = np.float32) -> dict[str, Any]:
    """The replay of `spec`'s requests: per request and subject the values of `COLUMNS` and
    the episode (level, raised_at, since, hold_until, relative to the first request), and
    every crossing as (request, kind, subject). `dtype`: float64 compares bit for bit on
    one machine."""
    reqs, digest = _requests(spec)
    world = build_world(spec, 0)
    monitor = Monitor(world.summary, MonitorSettings(**recommended()[1]))
    values = np.zeros((len(reqs), 2, len(COLUMNS)), dtype)
    episodes = np.full((len(reqs), 2, 4), np.nan)
    crossings: list[str] = []
    t0 = reqs[0][4] if reqs else 0.0
    for i, (who, tenant, x, p, at) in enumerate(reqs):
        for c in monitor.observe(who, x, p, tenant=tenant, now=at):
            crossings.append(f"{i}|{c.subject_kind}|{c.subject}|"
                             f"{c.tenant_risk is not None}")
        for j, risk in enumerate((monitor.risk(who), monitor.tenant_risk(tenant))):
            values[i, j] = (risk.score, risk.raw, risk.flagged,
                            *(risk.readings[n].score if n in risk.readings else 0.0
                              for n in DETECTORS))
            episodes[i, j] = np.array(risk.episode.as_row()) - np.array([0.0, t0, t0, t0])
    return {"values": values, "episodes": episodes, "crossings": np.array(crossings),
            "inputs": np.array(digest)}


def record() -> None:
    arrays = {f"{spec.name}.{k}": v for spec in VICTIMS for k, v in trace(spec).items()}
    np.savez_compressed(FIXTURE, **arrays)


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    with np.load(FIXTURE, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("spec", VICTIMS, ids=[v.name for v in VICTIMS])
def test_every_risk_score_episode_and_alert_is_the_recorded_one(
        spec: VictimSpec, reference: dict[str, Any]) -> None:
    got = trace(spec)
    ref = {k: reference[f"{spec.name}.{k}"] for k in got}
    assert str(got["inputs"]) == str(ref["inputs"]), (
        "the corpus streams differ from those recorded (another sklearn or numpy?): "
        "re-record the reference with the code before any monitor change")
    assert len(ref["crossings"]) > 0, "the recorded replay should raise alerts"
    assert got["crossings"].tolist() == ref["crossings"].tolist()
    flagged = COLUMNS.index("flagged")
    np.testing.assert_array_equal(got["values"][:, :, flagged], ref["values"][:, :, flagged])
    # where each subject's episode starts and ends, to the second
    np.testing.assert_array_equal(np.isinf(got["episodes"]), np.isinf(ref["episodes"]))
    finite = np.isfinite(ref["episodes"])
    np.testing.assert_allclose(got["episodes"][finite], ref["episodes"][finite], atol=1e-6)
    for c, name in enumerate(COLUMNS):
        np.testing.assert_allclose(got["values"][:, :, c], ref["values"][:, :, c],
                                   atol=PRADA_ATOL if name == "prada" else 1e-6,
                                   rtol=0, err_msg=f"{spec.name}: {name}")


def test_the_reference_is_varied_enough_to_mean_something(reference: dict[str, Any]) -> None:
    """Every detector scores above zero somewhere, and callers are flagged and released."""
    for spec in VICTIMS:
        values = reference[f"{spec.name}.values"]
        flagged = values[:, :, COLUMNS.index("flagged")]
        assert flagged.any() and not flagged.all()
    both = np.concatenate([reference[f"{s.name}.values"] for s in VICTIMS])
    for c, name in enumerate(COLUMNS):
        assert (both[:, :, c] > 0).any(), name


if __name__ == "__main__" and "--record" in sys.argv:
    record()
    print(f"recorded {FIXTURE} ({FIXTURE.stat().st_size:,} bytes)")

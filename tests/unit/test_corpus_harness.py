"""The corpus harness: a victim behind an in-process gateway, the cells, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelfence.monitor.corpus import report, run
from modelfence.monitor.corpus.behaviours import behaviour, generate
from modelfence.monitor.corpus.fidelity import model_proba
from modelfence.monitor.corpus.harness import Alert, Gateway, Replay, requests
from modelfence.monitor.corpus.victims import CorpusWorld, build_world, victim
from modelfence.redteam.executors import InProcess
from modelfence.shaping.guard import ShapingGuard

#: Three bands, one edge below the threshold, so a replay crosses more than one.
BANDS = ((0.0, "none", "standard"), (0.2, "round:2", "rounded"), (0.5, "labels", "flagged"))


@pytest.fixture(scope="module")
def wine() -> CorpusWorld:
    return build_world(victim("wine-3c-13f-lr"), 0)


def test_band_choice_is_the_shaping_guards(wine: CorpusWorld) -> None:
    unordered = (BANDS[0], BANDS[2], BANDS[1])  # the guard takes the last band reached
    for bands in (BANDS, unordered):
        gw = Gateway(wine.summary, bands=bands)
        guard = ShapingGuard({"m": gw.bands})
        risks = np.r_[np.linspace(0.0, 1.0, 41), 0.2, 0.5, 0.4999, 0.19999]
        for r in risks:
            assert gw.bands[gw.band_of(float(r))] is guard.choose("m", float(r), ())
        assert gw.bands_of(risks).tolist() == [gw.band_of(float(r)) for r in risks]
    assert Gateway(wine.summary, bands=BANDS).strongest == 2


@pytest.mark.parametrize("bands", [BANDS, None], ids=["three-bands", "recommended"])
def test_replay_answers_row_by_row_as_the_gateway_would(
        wine: CorpusWorld, bands: tuple[tuple[float, str, str], ...] | None) -> None:
    stream = generate(behaviour("uniform-range"), wine, 150, 0)
    proba = model_proba(wine, stream.x)
    rep = Gateway(wine.summary, bands=bands).replay(stream.x, stream.t, proba,
                                                    stream.principals, stream.tenants)
    # the gateway by hand: risk read before the row, band, shape that row alone, observe
    gw = Gateway(wine.summary, bands=bands)
    guard, m = ShapingGuard({"m": gw.bands}), gw.monitor
    for i in range(len(stream)):
        who, tenant = stream.principals[i], stream.tenants[i]
        risk = max(m.peek(who), m.peek_tenant(tenant))
        band = guard.choose("m", risk, ())
        assert band is not None
        shown = np.asarray(band.defense.apply(proba[i:i + 1], inputs=stream.x[i:i + 1],
                                              principal=who), dtype=np.float32)
        assert rep.risk[i] == risk
        assert rep.band[i] == gw.bands.index(band)
        assert rep.labels[i] == shown.argmax()
        np.testing.assert_array_equal(rep.proba[i], shown[0])
        m.observe(who, stream.x[i:i + 1], proba[i:i + 1], tenant=tenant, now=float(stream.t[i]))
    assert len(set(rep.band.tolist())) >= 2, "the stream never left the first band"
    assert rep.alerts and rep.alerts[0].kind == "principal"
    assert rep.principal_flagged[-1]


def test_rows_sent_together_are_one_request() -> None:
    t = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 2.0])
    assert requests(t, ("a",) * 6, ("t",) * 6) == [(0, 2), (2, 5), (5, 6)]
    assert requests(t, ("a", "a", "a", "b", "b", "b"), ("t",) * 6) == [
        (0, 2), (2, 3), (3, 5), (5, 6)]


def _replay(pf: list[int], tf: list[int], alerts: tuple[Alert, ...],
            band: list[int] | None = None) -> Replay:
    n = len(pf)
    z = np.zeros(n)
    return Replay(z, np.asarray(band or [0] * n), z, np.zeros((n, 2)), z,
                  np.asarray(pf, bool), np.asarray(tf, bool), alerts)


def test_one_alert_per_episode_is_checked_per_subject() -> None:
    who, ten = ("k",) * 6, ("t",) * 6
    joint = (Alert(2, "principal", "k", "", "t"),)
    ok, episodes = run._episodes(_replay([0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0], joint),
                                 who, ten)
    assert ok and episodes == 1
    # a second episode of the key without its alert, and a tenant alert repeated
    ok, episodes = run._episodes(_replay([0, 1, 0, 1, 0, 0], [0, 1, 1, 1, 1, 0], joint),
                                 who, ten)
    assert not ok and episodes == 2
    twice = (*joint, Alert(4, "tenant", "t", ""))
    assert not run._episodes(_replay([0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0], twice),
                             who, ten)[0]
    # the tenant's episode alone (its keys below the threshold) needs an alert of its own
    keys = ("a", "b", "a", "b", "a", "b")
    alone = (Alert(3, "tenant", "t", ""),)
    assert run._episodes(_replay([0] * 6, [0, 0, 1, 1, 1, 1], alone), keys, ten) == (True, 1)
    assert run._episodes(_replay([0] * 6, [0, 0, 1, 1, 1, 1], ()), keys, ten) == (False, 1)
    changes, per = run._band_changes(_replay([0, 1, 1, 1, 0, 0], [0] * 6, joint,
                                             band=[0, 1, 1, 1, 0, 1]), who)
    assert changes == 3 and per == 3.0


def test_a_tiny_corpus_run_reports_every_target() -> None:
    cells = run.plan("dev", victims=["wine-3c-13f-lr", "breast-cancer-2c-30f-gb"],
                     behaviours=["uniform-range", "sybil-keys", "knockoff", "random-order",
                                 "resend-noise-1pct"], queries=200, benign_per_victim=3)
    assert len(cells) == 2 * (3 + 3)
    out = run.run(cells, InProcess(), suite="dev")
    assert len(out.results) == len(cells) and set(out.victims) == {c.victim for c in cells}
    for r in out.results:
        assert r.queries == 200 and len(r.curve) > 10
        if r.side == "thief":
            assert r.fidelity_defended is not None and r.fidelity_undefended is not None
            assert 0.0 <= r.fidelity_defended <= 1.0
            assert r.fidelity_knowing is not None and r.fidelity_knowing >= r.fidelity_defended
            if r.shaped_share == 0.0:  # nothing was shaped: knowing the defence is worth 0
                assert r.knowing_gain == 0.0
        else:
            assert r.accuracy_shown is not None and r.forced_kept is not None
    sybil = [r for r in out.results if r.family == "sybil-keys"]
    assert len(sybil) == 2 and all(r.alerts >= 0 for r in sybil)
    assert out.observe_p99_us is not None and out.observe_p99_us > 0
    doc = report.to_dict(out)
    json.dumps(doc)  # plain JSON: no numpy values, no NaN
    names = {t["name"] for t in doc["targets"]}
    assert {"benign streams flagged", "correct answers kept in the strongest band",
            "synthetic queries flagged in time", "Sybil over keys: tenant no later than one key",
            "band changes per episode", "alerts per episode", "defence-aware thief's gain",
            "observe cost p99", "natural-data thief: knockoff"} <= names
    assert all(t["half"] in ("dev", "all") for t in doc["targets"])
    md = report.markdown(out)
    assert "| dev | benign streams flagged | 0 |" in md and "**wine-3c-13f-lr**" in md
    page = report.html(out)
    assert page.count("<svg") == 1 + 2  # the detection CDF, one risk chart per victim

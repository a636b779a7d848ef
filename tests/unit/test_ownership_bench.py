"""The ownership bench's building blocks (bench/ownership.py), on the corpus's smallest victim.

The bench's numbers are only as good as these: the in-process gateway marks and records as
the guard does (repeats truthful or consistent), thieves draw the rows they should, fine-tuning
changes a copy without touching it, verification reads the bundle right (a copy that repeats
its marks is convicted, the protected model itself is not), and the targets are judged
met or missed from the numbers.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfence.monitor.corpus.victims import victim
from modelfence.watermark.keyring import row_bytes
from modelfence.watermark.settings import WatermarkKeySettings, WatermarkSettings

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ownership.py"


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("ownership_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ownership_bench"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def wine(bench: Any) -> Any:
    return bench.load_victim(victim("wine-3c-13f-gb"))


def settings(repeats: str, fraction: float = 0.2, limit: int = 1000) -> WatermarkSettings:
    return WatermarkSettings(keys=[WatermarkKeySettings(id="t", secret_file=Path("-"))],
                             fraction=fraction, fraction_at_risk=None, control_ratio=1.0,
                             repeats=repeats, truthful_limit=limit)


def test_victim_is_the_corpus_world(bench: Any, wine: Any) -> None:
    from modelfence.monitor.corpus.victims import build_world

    world = build_world(victim("wine-3c-13f-gb"))
    assert np.array_equal(wine.pool_x, world.pool_x)
    assert np.array_equal(wine.x_test, world.test_x)
    got = wine.oracle.ask(wine.x_test).labels
    assert np.array_equal(got, world.victim.ask(world.test_x).labels)
    # the fresh rows are nobody's: not in the pool, the test rows or the training rows
    seen = {r.tobytes() for part in (wine.pool_x, wine.x_test, wine.x_train) for r in part}
    assert not any(r.tobytes() in seen for r in wine.x_fresh)


@pytest.mark.parametrize("repeats", ["truthful", "consistent"])
def test_gateway_repeats_of_a_marked_input(bench: Any, wine: Any, repeats: str) -> None:
    gw = bench.Gateway(wine, settings(repeats), 0.1, b"k" * 32)
    x = bench.wire(wine.pool_x[:40])
    top = np.argmax(wine.oracle.ask(x).proba, axis=1)
    first = gw.answer(x, "bob", "honest")
    marked = first != top
    assert marked.any(), "a 20% rate marks some of 40 rows"
    again = gw.answer(x, "bob", "honest")
    other = gw.answer(x, "carol", "honest")
    if repeats == "truthful":
        assert np.array_equal(again, top)  # a repeat of a marked input: the truth
    else:
        assert np.array_equal(again, first)
    assert np.array_equal(other, first)  # another caller holds none of them yet
    wm = [r for r in gw.records if r.kind == "watermark"]
    per_ask = int(marked.sum())
    assert len(wm) == per_ask * (2 if repeats == "truthful" else 3)
    assert {r.principal for r in gw.records} == {"bob", "carol"}
    assert all(r.decoy_index != r.model_index for r in wm)


def test_gateway_truthful_repeats_up_to_the_limit(bench: Any, wine: Any) -> None:
    gw = bench.Gateway(wine, settings("truthful", limit=2), 0.1, b"k" * 32)
    x = bench.wire(wine.pool_x[:60])
    top = np.argmax(wine.oracle.ask(x).proba, axis=1)
    first = gw.answer(x, "bob", "honest")
    assert int(np.sum(first != top)) > 2
    again = gw.answer(x, "bob", "honest")
    # two distinct marked inputs are answered truthfully on repeat; the others keep their mark
    assert int(np.sum((first != top) & (again == top))) == 2
    assert int(np.sum(again != top)) == int(np.sum(first != top)) - 2


def test_planned_rate_is_the_unflagged_callers(bench: Any, wine: Any) -> None:
    from modelfence.watermark.power import model_rate

    s = bench.bench_settings()
    gw = bench.Gateway(wine, s, 0.2, b"k" * 32)
    assert gw.fraction == pytest.approx(model_rate(s, wine.n_classes, 0.2)[1].fraction)
    assert 0.0 < gw.fraction <= s.max_fraction


def test_thief_rows(bench: Any, wine: Any) -> None:
    rng = np.random.default_rng(0)
    nat = bench.thief_rows(wine, "natural", 200, rng)
    pool = {r.tobytes() for r in wine.pool_x}
    assert all(r.tobytes() in pool for r in nat)
    assert len({r.tobytes() for r in nat[:len(wine.pool_x)]}) == len(wine.pool_x)
    aug = bench.thief_rows(wine, "augmented", 2000, rng)
    assert not any(r.tobytes() in pool for r in aug)
    assert np.all(aug >= wine.pool_x.min(axis=0)) and np.all(aug <= wine.pool_x.max(axis=0))
    # noise of about 5% of each feature's spread: nearest pool row within a few spreads
    sd = wine.pool_x.std(axis=0)
    gap = np.min(np.abs((aug[:, None, :] - wine.pool_x[None]) / sd).max(axis=2), axis=1)
    assert 0.0 < np.median(gap) < 0.3
    with pytest.raises(Exception, match="natural or augmented"):
        bench.thief_rows(wine, "mixup", 10, rng)


def test_fresh_rows_hold_every_class(bench: Any, wine: Any) -> None:
    x, y = bench.fresh_rows(wine, 10, np.random.default_rng(1))
    assert len(x) == 10 and set(y.tolist()) == set(wine.y_fresh.tolist())
    x, y = bench.fresh_rows(wine, 10_000, np.random.default_rng(1))
    assert len(x) == len(wine.x_fresh)  # no more than there are


@pytest.mark.parametrize("family", ["mlp", "gb", "rf", "lr"])
def test_fine_tune_changes_a_copy_not_the_copy(bench: Any, wine: Any, family: str) -> None:
    rng = np.random.default_rng(2)
    x = bench.wire(bench.thief_rows(wine, "augmented", 300, rng))
    labels = wine.classes[np.argmax(wine.oracle.ask(x).proba, axis=1)]
    copy = bench.fit_copy(family, x, labels, 7)
    before = copy.predict_proba(wine.x_test)
    fx, fy = bench.fresh_rows(wine, 30, rng)
    tuned = bench.fine_tune(copy, family, fx, fy, (x, labels))
    assert np.array_equal(copy.predict_proba(wine.x_test), before)
    assert not np.allclose(tuned.predict_proba(wine.x_test), before)
    assert list(tuned.classes_) == list(copy.classes_)
    assert np.mean(tuned.predict(wine.x_test) == wine.y_test) > 0.5


def test_judge_convicts_a_copy_of_the_marks_not_the_model(bench: Any, wine: Any) -> None:
    gw = bench.Gateway(wine, settings("truthful", 0.08), 0.1, b"j" * 32)
    x = bench.wire(bench.thief_rows(wine, "augmented", 1500, np.random.default_rng(3)))
    given = bench.ask_all(gw, x, "thief", "t")
    bench.ask_all(gw, bench.wire(wine.x_test), "alice", "honest")
    answered = dict(zip(row_bytes(x), (str(wine.classes[i]) for i in given), strict=True))

    def parrot(rows: Any) -> list[str]:  # repeats every answer it was given
        own = wine.labeler()(rows)
        return [answered.get(b, o) for b, o in zip(row_bytes(rows), own, strict=True)]

    ev = gw.evidence(gw.records)
    copy = bench.judge(ev, parrot, None, "thief")
    assert copy["principal_marks"] >= 60
    assert copy["principal_mark_disagreements"] == copy["principal_marks"]
    assert copy["principal_log2_p"] <= -40 and copy["accused"]
    assert copy["log2_p"] <= copy["principal_log2_p"] + 3  # Bonferroni over a few sets
    model = bench.judge(ev, wine.labeler(), None, "thief")
    assert model["principal_log2_p"] == pytest.approx(0.0, abs=1e-9)
    assert not model["accused"]
    assert model["fingerprint_log2_p"] is None


def _result(name: str, k: int, copy_p: float, tuned_p: float, accused: bool = False,
            cost: float = 0.3, models: int = 60) -> dict[str, Any]:
    copies = [{"data": d, "budget": b, "family": f, "log2_p": copy_p * b / 2000,
               "tuned": {"log2_p": tuned_p}} for d in ("natural", "augmented")
              for b in (2000, 5000) for f in ("mlp", "rf")]
    innocents = [{"model": f"m{i}", "log2_p": -3.0, "accused": accused and i == 0}
                 for i in range(models)]
    rep = {"users": 10, "mean_points": 0.01, "users_marked": 2, "mean_points_marked": 0.1,
           "max_points": 0.2}
    return {"victim": name, "classes": k, "copies": copies, "innocents": innocents,
            "cost": {"points": cost, "repeat": {"truthful": rep, "consistent": rep}}}


def test_targets_met_and_missed(bench: Any) -> None:
    good = [_result("a", 2, -50, -30), _result("b", 10, -60, -25)]
    met = {t.name: t.met for t in bench.targets(good, (2000, 5000))}
    assert all(met.values()), met
    # one copy of one victim above the target: that victim misses, and with 2 victims the
    # share is 50%
    bad = [_result("a", 2, -50, -30), _result("b", 10, -60, -25)]
    bad[0]["copies"][0]["log2_p"] = -10.0
    ts = {t.name: t for t in bench.targets(bad, (2000, 5000))}
    first = next(t for n, t in ts.items() if n.startswith("copies of 2,000"))
    assert not first.met and "a (2c)" in first.detail
    assert next(t for n, t in ts.items() if n.startswith("copies of 5,000")).met
    # a false accusation, or fewer than 100 models, misses the innocents' target
    acc = {t.name: t.met for t in bench.targets(
        [_result("a", 2, -50, -30, accused=True), _result("b", 3, -50, -30)], (2000, 5000))}
    assert not acc[">= 100 independently trained models, 0 falsely accused"]
    few = {t.name: t.met for t in bench.targets(
        [_result("a", 2, -50, -30, models=40)], (2000, 5000))}
    assert not few[">= 100 independently trained models, 0 falsely accused"]
    costly = {t.name: t.met for t in bench.targets(
        [_result("a", 2, -50, -30, cost=0.9), _result("b", 3, -50, -30, cost=0.3)],
        (2000, 5000))}
    assert not costly["honest cost <= 0.5 points on average"]


def test_bad_arguments_exit_2(bench: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--victims", "no-such-victim"]) == 2
    assert "unknown corpus victim" in capsys.readouterr().err
    assert bench.main(["--families", "svm"]) == 2
    assert bench.main(["--budgets", "2000,x"]) == 2

"""Differential privacy's trade-off on the efficacy corpus, on a tiny budget: a mechanism that
changes nothing costs nothing, one that answers almost at random costs honest callers and
thieves alike, and bench/privacy.py saves the table it prints."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from modelfence.errors import ConfigurationError
from modelfence.evaluation import privacy_tradeoff as pt

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run() -> pt.PrivacyTradeoff:
    return pt.run("dev", ["labels", "dp-rr:0.1"], victim_names=["wine-3c-13f-lr"],
                  queries=240, honest_queries=120, fits=1)


def test_a_mechanism_that_keeps_every_label_costs_nothing(run: pt.PrivacyTradeoff) -> None:
    assert run.configs() == ["labels", "flagged:labels", "flagged-budget:labels", "dp-rr:0.1",
                             "flagged:dp-rr:0.1", "flagged-budget:dp-rr:0.1"]
    for config in ("labels", "flagged:labels", "flagged-budget:labels"):
        (r,) = [r for r in run.results if r.config == config]
        assert r.honest_loss_pts == 0.0 and r.honest_rows > 0
        assert set(r.fidelity) == {"active-uncertainty-10rounds", "active-kcenter-greedy",
                                   "boundary-walk-stride0.1"}
        # the same labels give the same copy (same seed): exactly no loss
        assert all(v == 0.0 for v in r.thief_loss_pts.values()) and not r.meets


def test_near_random_answers_cost_honest_callers_and_thieves(run: pt.PrivacyTradeoff) -> None:
    (always,) = [r for r in run.results if r.config == "dp-rr:0.1"]
    # 3 classes at ε = 0.1: the true label only 37% of the time
    assert always.honest_loss_pts > 30 and always.least_thief_loss_pts > 10
    assert not always.meets and set(always.flagged_share.values()) == {1.0}
    (flagged,) = [r for r in run.results if r.config == "flagged:dp-rr:0.1"]
    assert flagged.honest_loss_pts < always.honest_loss_pts  # honest callers are rarely flagged
    assert all(0.0 <= s <= 1.0 for s in flagged.flagged_share.values())
    (budget,) = [r for r in run.results if r.config == "flagged-budget:dp-rr:0.1"]
    assert budget.honest_loss_pts <= flagged.honest_loss_pts + 1e-9
    s = run.summary("dp-rr:0.1")
    assert s.victims == 1 and s.meeting == 0 and not s.met
    assert s.honest_loss_worst == pytest.approx(always.honest_loss_pts)
    table = run.markdown()
    assert "| `dp-rr:0.1` | 0/1 |" in table and "| `flagged:labels` | 0/1 | 0.00 |" in table
    assert "| wine-3c-13f-lr |" in run.victim_markdown("dp-rr:0.1")
    assert run.to_dict()["summaries"][0]["config"] == "labels"
    import orjson

    again = pt.PrivacyTradeoff.from_dict(orjson.loads(orjson.dumps(run.to_dict())))
    assert again.markdown() == table and again.results == run.results


def test_the_budget_allows_what_the_accountant_allows() -> None:
    from modelfence.privacy.accountant import Accountant

    n = pt.budget_answers("dp-rr:1", 100.0, 1e-6)
    acc = Accountant(1e-6)
    assert acc.single("dp-rr:1", n) <= 100.0 < acc.single("dp-rr:1", n + 1)
    assert pt.budget_answers("dp-rr:1", 0.5, 1e-6) == 0  # not even one answer of ε 1


def test_settings_are_checked_before_any_victim_is_built() -> None:
    with pytest.raises(ConfigurationError, match="needs ε"):
        pt.run("dev", ["dp-rr"])
    with pytest.raises(ConfigurationError, match="unknown placement"):
        pt.run("dev", ["dp-rr:1"], placements=["sometimes"])
    with pytest.raises(ConfigurationError, match="use dev or test"):
        pt.run("all", ["dp-rr:1"])


def _bench(name: str) -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_the_bench_saves_the_tables_it_prints(run: pt.PrivacyTradeoff, tmp_path: Path) -> None:
    bench, results = _bench("privacy"), _bench("results")
    path = tmp_path / "privacy.json"
    results.save(path, bench.summary_result(run, "python bench/privacy.py"))
    lines = results.table(results.load(path))
    assert lines[2].startswith("| dev | labels | 0/1 | 0.00 | 0.00 | 0.0 | 0.0 | **missed** |")
    results.save(path, bench.victims_result(run, "dp-rr:0.1", "python bench/privacy.py"))
    lines = results.table(results.load(path))
    assert lines[2].startswith("| wine-3c-13f-lr |") and lines[2].endswith("| no |")


def test_the_command_line_prints_the_table_and_refuses_bad_settings() -> None:
    from typer.testing import CliRunner

    from modelfence.cli.main import app

    runner = CliRunner()
    out = runner.invoke(app, ["shaping", "privacy", "--victims", "wine-3c-13f-lr",
                              "--queries", "100", "--honest-queries", "50", "-m", "dp-rr:1",
                              "-p", "flagged"])
    assert out.exit_code == 0, out.output
    assert "| `flagged:dp-rr:1` | " in out.output and "(dev half)" in out.output
    bad = runner.invoke(app, ["shaping", "privacy", "--suite", "all", "-m", "dp-rr:1"])
    assert bad.exit_code == 2 and "unknown suite 'all'; use dev or test" in bad.output

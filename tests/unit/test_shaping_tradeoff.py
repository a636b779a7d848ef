"""The trade-off table: its structure on a tiny budget, what label-only thieves are shown,
settings refused before any thief runs, and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from modelfence.cli.main import app
from modelfence.errors import ConfigurationError
from modelfence.evaluation.tradeoff import (
    Setting,
    ShapedAnswers,
    WatchedAnswers,
    make_oracle,
    prepare,
    tradeoff,
)
from modelfence.redteam.run import defense_secret
from modelfence.shaping import parse_defense

TINY = {"budgets": [40, 80], "augmented_budget": 80, "seeds": 1}


@pytest.fixture(scope="module")
def setting() -> Setting:
    return prepare("sklearn:digits")


def test_tradeoff_on_a_tiny_budget_has_every_cell(setting: Setting) -> None:
    ticks: list[tuple[int, int]] = []
    result = tradeoff(setting, defenses=["none", "labels", "misinfo", "rsig:0.95,1.05"],
                      progress=lambda done, total: ticks.append((done, total)), **TINY)
    keys = [c.key for c in result.columns]
    assert keys == ["random:labels@40", "random:labels@80", "random@40", "random@80",
                    "random:rescaled@80", "jacobian:labels@80", "uniform:labels@80"]
    assert [r.spec for r in result.rows] == ["none", "labels", "misinfo:1", "rsig:0.95,1.05"]
    assert ticks[-1] == (4 * 5, 4 * 5) and len(ticks) == 20  # defenses x thieves x seeds
    for row in result.rows:
        assert set(row.fidelity) == set(keys)
        assert all(0.0 <= v <= 1.0 for v in row.fidelity.values())
        assert row.benign_accuracy is not None and 0.8 < row.benign_accuracy <= 1.0
    none = result.row("none")
    assert none.top1_changes == 0 and none.benign_accuracy == result.victim_accuracy
    assert result.row("labels").top1_changes == 0
    # argmax-preserving defenses show label-only thieves the very same labels
    assert result.row("rsig:0.95,1.05").fidelity["random:labels@80"] == \
        none.fidelity["random:labels@80"]
    assert result.rows_test == len(setting.held.x) and result.rows_summary > 0
    doc = orjson.loads(orjson.dumps(result.to_dict()))
    assert doc["rows"][2]["spec"] == "misinfo:1" and doc["columns"][0]["key"] == keys[0]
    table = result.markdown()
    assert "| `misinfo:1` |" in table and "| defense | benign top-1 acc |" in table
    assert len([line for line in table.splitlines() if line.startswith("| `")]) == 4


def test_label_only_thieves_see_the_shaped_label(setting: Setting) -> None:
    """Misinformation changes the top class off-distribution; the label must follow it."""
    victim = setting.victim.load()
    far = np.full((5, victim.n_features), 16.0)
    d = parse_defense("misinfo", secret=defense_secret(0), summary=setting.summary)
    answers = ShapedAnswers(victim, d, "thief").ask(far)
    assert answers.proba is not None
    assert np.array_equal(answers.labels, answers.proba.argmax(1))
    assert np.all(answers.labels != victim.ask(far).labels)


def test_settings_are_refused_before_any_thief_runs(setting: Setting, tmp_path: Path) -> None:
    ran: list[int] = []
    with pytest.raises(ConfigurationError, match="would change answers"):
        tradeoff(setting, defenses=["none", "rsig:1,0.1"],
                 progress=lambda done, total: ran.append(done), **TINY)
    with pytest.raises(ConfigurationError, match="unknown defense"):
        tradeoff(setting, defenses=["blur:3"], **TINY)
    assert not ran
    unlabelled = tmp_path / "rows.npy"
    np.save(unlabelled, setting.pool.x)
    with pytest.raises(ConfigurationError, match="needs labelled data"):
        prepare(str(unlabelled))


def test_command_prints_markdown_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "tradeoff.json"
    result = CliRunner().invoke(app, [
        "shaping", "tradeoff", "--defense", "none", "--defense", "misinfo:1.2",
        "--budgets", "30", "--augmented-budget", "30", "--seeds", "1", "--markdown",
        "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "| `none` |" in result.output and "| `misinfo:1.2` |" in result.output
    assert [r["spec"] for r in orjson.loads(out.read_bytes())["rows"]] == ["none",
                                                                         "misinfo:1.2"]
    bad = CliRunner().invoke(app, ["shaping", "tradeoff", "--defense", "misinfo:0"])
    assert bad.exit_code == 2 and "tau must be at least 1" in bad.output


def test_watched_band_shapes_only_after_the_monitor_flags(setting: Setting) -> None:
    """The gateway's loop in-process: a benign caller keeps true answers; uniform rows are
    flagged within the share detectors' first window and lied to from then on."""
    victim = setting.victim.load()
    benign = make_oracle(setting, "watched:misinfo:1", 0, "reader")
    assert isinstance(benign, WatchedAnswers)
    x = setting.held.x
    assert (benign.ask(x).labels == setting.held.labels).all()

    thief = make_oracle(setting, "watched:misinfo:1", 0, "thief")
    lo, hi = setting.pool.bounds()
    rows = np.random.default_rng(0).uniform(lo, hi, size=(80, victim.n_features))
    got = np.concatenate([thief.ask(rows[i:i + 1]).labels for i in range(len(rows))])
    truth = victim.ask(rows).labels
    assert (got[:19] == truth[:19]).all()  # nothing is decided before 20 queries
    assert (got[40:] != truth[40:]).mean() > 0.75  # a keyed draw: the truth 1 time in 10

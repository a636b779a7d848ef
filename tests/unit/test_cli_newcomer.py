"""What a newcomer meets first on the command line: answers that match the gateway's, and
messages that name the file and the flag to change."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from modelfence.cli import common
from modelfence.cli.main import app

# a watermarked world with recorded evidence, and a copy trained on its answers
from .test_watermark_cli import Setup
from .test_watermark_cli import app as watermark_app
from .test_watermark_cli import setup as setup


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _policy_world(folder: Path) -> Path:
    (folder / "secret").write_text("s" * 48)
    (folder / "grants.cedar").write_text(
        '@id("own-grants")\npermit (principal, action, resource)\n'
        "when { principal.models.contains(resource.name) };\n")
    config = folder / "modelfence.yaml"
    config.write_text(yaml.safe_dump({
        "secret_file": "secret", "stores": {"keys": "sqlite:///keys.db"},
        "audit": {"sink": "none://", "disabled_acknowledged": True},
        "policy": {"files": ["grants.cedar"]}}))
    return config


def test_policy_check_denies_a_revoked_key_as_the_gateway_does(tmp_path: Path) -> None:
    config = str(_policy_world(tmp_path))
    made = run("keys", "create", "--config", config, "--principal", "bob", "--tenant", "acme",
               "--model", "fraud", "--json")
    assert made.exit_code == 0, made.output
    key_id = orjson.loads(made.stdout)["key_id"]
    check = ["policy", "check", "--config", config, "--key", key_id, "--model", "fraud"]
    allowed = run(*check)
    assert allowed.exit_code == 0, allowed.output
    assert "ALLOW" in allowed.stdout and "own-grants" in allowed.stdout
    assert run("keys", "revoke", "--config", config, key_id).exit_code == 0
    denied = run(*check)
    assert denied.exit_code == 1, denied.output
    assert "DENY" in denied.stdout and "ALLOW" not in denied.stdout
    assert f"key {key_id} was revoked" in denied.stdout
    as_json = run(*check, "--json")
    assert as_json.exit_code == 1
    outcome = orjson.loads(as_json.stdout)
    assert outcome["decision"] == "deny" and outcome["reason"] == "revoked_key"


ADAM = "sklearn.neural_network._stochastic_optimizers.AdamOptimizer"


def adam_copy(s: Setup) -> Path:
    """A copy whose skops file holds a type skops does not trust by default (Adam's state)."""
    import warnings

    import skops.io as sio
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        copy = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0)
        copy.fit(s.x, s.labels)
    path = s.folder / "suspect.skops"
    sio.dump(copy, path)
    assert sio.get_untrusted_types(file=path) == [ADAM]
    return path


def test_verify_ownership_names_the_untrusted_suspect_and_the_trust_flag(setup: Setup) -> None:
    stolen = adam_copy(setup)
    result = CliRunner().invoke(watermark_app(), [
        "verify-ownership", "--suspect", str(stolen), "--model", "digits",
        "--out", str(setup.folder / "case")])
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())  # as one line, whatever the terminal's width
    assert f"suspect {stolen} contains types skops does not trust" in said
    assert f"--trust {ADAM}" in said
    assert "backend.trusted_types" not in said and "model victim" not in said
    assert not (setup.folder / "case").exists()
    trusted = CliRunner().invoke(watermark_app(), [
        "verify-ownership", "--suspect", str(stolen), "--model", "digits",
        "--out", str(setup.folder / "case"), "--trust", ADAM, "--json"])
    assert trusted.exit_code == 0, trusted.output


def test_red_team_names_the_untrusted_target_and_the_trust_flag(setup: Setup) -> None:
    stolen = adam_copy(setup)
    result = run("attack", str(stolen), "--budgets", "10")
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert f"target {stolen} contains types skops does not trust" in said
    assert f"--trust {ADAM}" in said


LONG_PRINCIPAL = "svc-fraud-scoring-batch-nightly@payments.internal.example.com"
ALERT = ("extraction risk 1.00 for principal svc-fraud-scoring-batch-nightly on model "
         "fraud-scorer-v2 after 4,000 queries; its tenant payments is flagged too")


def _at_80(monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """What the command prints on an 80-column terminal (its lines, as a user sees them)."""
    monkeypatch.setattr(common.console, "width", 80)
    result = run(*args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, result.stdout
    assert "…" not in result.stdout, result.stdout  # nothing shortened with an ellipsis
    for line in lines:  # no table cut at the terminal's edge: each row ends in its border
        if line and line[0] in "┏┃┡│└":
            assert line[-1] in "┓┃┩│┘", result.stdout
    return result.stdout


def _joined(printed: str) -> str:
    """A table's cells read column by column: folded values become whole again."""
    rows = [line.split("│") for line in printed.splitlines() if line.startswith("│")]
    width = max(len(r) for r in rows)
    return " ".join("".join(r[i].strip() for r in rows if len(r) == width)
                    for i in range(width))


def test_main_tables_read_whole_at_80_columns(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    config = _policy_world(tmp_path)
    doc = yaml.safe_load(config.read_text())
    doc["audit"] = {"sink": "sqlite:///audit.db"}
    config.write_text(yaml.safe_dump(doc))
    made = run("keys", "create", "--config", str(config), "--principal", LONG_PRINCIPAL,
               "--tenant", "payments-europe-west", "--model", "fraud-scorer-v2",
               "--model", "churn-predictor", "--group", "partners", "--expires-in", "30d",
               "--json")
    assert made.exit_code == 0, made.output
    key_id = orjson.loads(made.stdout)["key_id"]
    asyncio.run(_write_alert(config))

    keys = _at_80(monkeypatch, "keys", "list", "--config", str(config))
    assert key_id in keys  # the key id is never folded
    assert LONG_PRINCIPAL in _joined(keys) and "fraud-scorer-v2,churn-predictor" in (
        _joined(keys))
    alerts = _at_80(monkeypatch, "alerts", "--config", str(config))
    assert "principal" in alerts and "result" in alerts  # headers whole
    assert ALERT.replace(" ", "") in _joined(alerts).replace(" ", "")
    tail = _at_80(monkeypatch, "audit", "tail", "--config", str(config))
    assert "admin:create-key" in _joined(tail) and "alert:extraction" in _joined(tail)
    monkeypatch.setattr(common.console, "width", 200)  # --wide: for a wide terminal
    wide = run("audit", "tail", "--config", str(config), "--wide")
    assert "tenant" in wide.stdout and "payments" in wide.stdout
    wide = run("keys", "list", "--config", str(config), "--wide")
    assert "groups" in wide.stdout and "partners" in wide.stdout
    policies = _at_80(monkeypatch, "policy", "validate", "--config", str(config))
    assert str(tmp_path / "grants.cedar") in _joined(policies)


def test_watermark_records_read_whole_at_80_columns(setup: Setup,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    records = _at_80(monkeypatch, "watermark", "records", "--model", "digits")
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in records.splitlines()
             if line.startswith("│")]
    kinds = [row[1] for row in cells]
    assert sorted(kinds) == ["control", "watermark"], records  # one line each: never folded
    assert all(row[0] == "mallory" for row in cells), records
    monkeypatch.setattr(common.console, "width", 200)
    wide = run("watermark", "records", "--model", "digits", "--wide")
    assert wide.exit_code == 0, wide.output
    assert "tenant" in wide.stdout and "acme" in wide.stdout


async def _write_alert(config: Path) -> None:
    from modelfence.audit.record import event_record
    from modelfence.audit.sinks import audit_sink_from_url
    from modelfence.config import load_settings

    settings = load_settings(config)
    sink = audit_sink_from_url(settings.audit.sink, settings.audit.model_copy(
        update={"durability": "strict"}))
    await sink.open()
    try:
        await sink.write(event_record(
            action="alert:extraction", reason=ALERT, principal=LONG_PRINCIPAL,
            tenant="payments", model="fraud-scorer-v2"))
    finally:
        await sink.close()


def test_a_table_too_wide_for_the_terminal_folds_rather_than_cuts() -> None:
    from rich.console import Console

    from modelfence.cli.tables import Grid

    grid = Grid(("key id", "first seen", "last seen"), whole=("key id", "first seen",
                                                              "last seen"))
    grid.add_row("3832278576fceb8e", "2026-12-03 14:19:35", "2026-12-04 09:00:01")
    console = Console(width=40, record=True, file=io.StringIO())
    console.print(grid)
    printed = console.export_text()
    assert max(len(line) for line in printed.splitlines()) <= 40
    assert "…" not in printed
    assert "3832278576fceb8e" in _joined(printed)


def test_the_shaping_trade_off_fits_80_columns_and_keeps_every_budget_for_wide(
        monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("shaping", "tradeoff", "--defense", "none", "--defense", "misinfo:1.2+round:2",
            "--budgets", "30,60", "--augmented-budget", "30", "--seeds", "1")
    narrow = _at_80(monkeypatch, *args)
    assert "--wide for all 7 thief columns" in narrow
    assert "none" in narrow and "misinfo:" in narrow  # both rows, the long name folded
    wide = run(*args, "--wide")
    assert wide.exit_code == 0, wide.output
    header = next(line for line in wide.stdout.splitlines() if line.split()[:1] == ["defense"])
    assert header.split()[-7:-5] == ["30", "60"]  # labels at both budgets
    assert "--wide for all" not in wide.stdout


def test_help_shows_every_default_and_env_note() -> None:
    """`[default: …]` in a help text is rich markup unless escaped: it vanished from --help."""
    import re

    import typer

    def walk(command: Any) -> Any:
        yield command
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    for command in walk(typer.main.get_command(app)):
        for param in command.params:
            text = getattr(param, "help", None) or ""
            assert not re.search(r"(?<!\\)\[[a-z]+:", text), (command.name, param.name, text)
    shown = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert "[default: port + 1]" in shown.stdout

"""What a newcomer meets first on the command line: answers that match the gateway's, and
messages that name the file and the flag to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml
from typer.testing import CliRunner

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

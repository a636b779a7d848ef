"""`modelfence watermark plan`: per model the marks needed, the rate, the reach, the cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from modelfence.cli import watermark as cli
from modelfence.watermark.power import honest_cost, marks_needed, read_plan


def app() -> typer.Typer:
    a = typer.Typer()
    cli.register(a)
    return a


def run(*args: str) -> Any:
    return CliRunner().invoke(app(), ["watermark", "plan", *args])


@pytest.fixture
def config(tmp_path: Path, digits_files: dict[str, Path]) -> Path:
    (tmp_path / "wm.secret").write_text("s" * 48)
    path = tmp_path / "modelfence.yaml"
    path.write_text(yaml.safe_dump({
        "secret_file": "secret",
        "audit": {"sink": "none://", "disabled_acknowledged": True},
        "models": [
            {"name": "digits", "backend": {"type": "skops",
                                           "path": str(digits_files["skops"])}},
            {"name": "remote", "backend": {"type": "oip",
                                           "url": "http://127.0.0.1:9/v2/models/remote"}}],
        "watermark": {"keys": [{"id": "k1", "secret_file": "wm.secret"}],
                      "plan_file": "plan.json"}}))
    return path


def test_plans_local_models_and_skips_what_it_cannot_count(config: Path) -> None:
    out = run("--config", str(config), "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    (digits,) = doc["models"]
    assert digits["model"] == "digits" and digits["n_classes"] == 10
    assert not digits["measured"] and digits["disagreement"] == 0.1
    assert digits["marks_needed"] == marks_needed(10, 0.1, -40.0, 10.0)
    assert [v["answers"] for v in digits["volumes"]] == [1000, 2000, 5000]
    at = {v["answers"]: v for v in digits["volumes"]}[2000]
    assert at["held_marks"] >= digits["marks_needed"] and at["log2_p_held"] <= -40
    assert [s["model"] for s in doc["skipped"]] == ["remote"]
    table = run("--config", str(config))
    assert table.exit_code == 0 and "marks needed" in table.output
    assert "skipped remote" in " ".join(table.output.split())


def test_measures_disagreement_on_labelled_data_and_writes_the_plan_file(
        config: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "digits.npz", x=x / 16.0, y=y)
    out = run("--config", str(config), "--model", "digits", "--data",
              str(tmp_path / "digits.npz"), "--references", "2", "--json",
              "--write", str(tmp_path / "plan.json"))
    assert out.exit_code == 0, out.output
    (digits,) = json.loads(out.output)["models"]
    refs = digits["measurement"]["references"]
    assert digits["measured"] and len(refs) == 2
    assert digits["disagreement"] == pytest.approx(sum(refs.values()) / 2)
    assert 0 < digits["disagreement"] < 0.5 and 0.8 < digits["accuracy"] <= 1
    assert digits["honest_cost_points"] == pytest.approx(
        honest_cost(digits["fraction"], 10, digits["accuracy"]))
    plan = read_plan(tmp_path / "plan.json")
    assert plan["digits"].measured and plan["digits"].n_classes == 10
    # read back: the plan file's measurement is used without --data
    again = json.loads(run("--config", str(config), "--model", "digits", "--json").output)
    assert again["models"][0]["disagreement"] == digits["disagreement"]
    assert again["models"][0]["measured"]


def test_a_remote_model_is_planned_from_the_plan_file(config: Path, tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(json.dumps({"version": 1, "models": {
        "remote": {"n_classes": 2, "disagreement": 0.05}}}))
    out = run("--config", str(config), "--model", "remote", "--json")
    assert out.exit_code == 0, out.output
    (remote,) = json.loads(out.output)["models"]
    assert remote["n_classes"] == 2 and remote["disagreement"] == 0.05
    assert remote["marks_needed"] == marks_needed(2, 0.05, -40.0, 10.0)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "nope"], "no model 'nope'"),
    (["--model", "remote"], "class count is unknown"),
    (["--model", "digits", "--data", "missing.npz"], "does not exist"),
    (["--model", "digits", "--data", "sklearn:iris"], "features but the model expects"),
    (["--data", "sklearn:digits"], "--data measures one model"),
    (["--model", "digits", "--data", "unlabelled.npy"], "has no labels"),
])
def test_bad_input_is_one_line_and_exit_2(config: Path, tmp_path: Path, args: list[str],
                                          message: str, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "unlabelled.npy", np.zeros((10, 64)))
    out = run("--config", str(config), *args)
    assert out.exit_code == 2, out.output
    assert message in " ".join(out.output.split()) and "Traceback" not in out.output


def test_a_broken_plan_file_is_one_line_and_exit_2(config: Path, tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text("{not json")
    out = run("--config", str(config))
    assert out.exit_code == 2 and "not JSON" in out.output


def test_nothing_to_plan_is_an_error(config: Path) -> None:
    text = yaml.safe_load(config.read_text())
    text["watermark"]["models"] = ["remote"]
    config.write_text(yaml.safe_dump(text))
    out = run("--config", str(config))
    assert out.exit_code == 2 and "no model could be planned" in " ".join(out.output.split())
    out = run("--config", str(config), "--model", "digits")
    assert out.exit_code == 2 and "not watermarked" in out.output

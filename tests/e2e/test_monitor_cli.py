"""`modelfence monitor fit|evaluate|calibrate` as a user runs them: files, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from modelfence.monitor import Summary

from ..support import cli, digits_rows


@pytest.fixture
def config(tmp_path: Path, digits_files: dict[str, Path]) -> Path:
    (tmp_path / "secret").write_text("s" * 48)
    cfg = tmp_path / "modelfence.yaml"
    cfg.write_text(yaml.safe_dump({
        "secret_file": "secret", "stores": {"keys": "memory://"},
        "models": [{"name": "digits", "backend": {"type": "skops",
                                                  "path": str(digits_files["skops"])}}]}))
    return cfg


def _rows(tmp_path: Path, name: str, n: int, width: int = 64) -> Path:
    path = tmp_path / name
    np.save(path, np.asarray(digits_rows(n))[:, :width])
    return path


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_fit_writes_the_summary_next_to_the_config(tmp_path: Path, config: Path) -> None:
    result = cli("monitor", "fit", "--config", str(config), "--model", "digits", "--data",
                 str(_rows(tmp_path, "rows.npy", 400)))
    path = tmp_path / "monitor" / "digits.summary.npz"
    assert f"wrote {path}" in result.stdout.replace("\n", "")
    summary = Summary.load(path)
    assert summary.n_features == 64 and summary.n_classes == 10
    out = tmp_path / "elsewhere" / "s.npz"
    cli("monitor", "fit", "--config", str(config), "--model", "digits", "--data",
        str(tmp_path / "rows.npy"), "--out", str(out))
    assert Summary.load(out).n_features == 64


def test_fit_bad_data_is_one_line_and_exit_2(tmp_path: Path, config: Path) -> None:
    narrow = cli("monitor", "fit", "--config", str(config), "--model", "digits", "--data",
                 str(_rows(tmp_path, "narrow.npy", 400, width=63)), check=False)
    assert narrow.returncode == 2
    assert "63 features per row but model digits expects 64" in _one_error_line(narrow.stderr)
    few = cli("monitor", "fit", "--config", str(config), "--model", "digits", "--data",
              str(_rows(tmp_path, "few.npy", 20)), check=False)
    assert few.returncode == 2 and "at least 64 rows" in _one_error_line(few.stderr)
    unknown = cli("monitor", "fit", "--config", str(config), "--model", "nope", "--data",
                  str(tmp_path / "few.npy"), check=False)
    assert unknown.returncode == 2 and "no model 'nope'" in _one_error_line(unknown.stderr)
    assert not (tmp_path / "monitor").exists()


def test_evaluate_prints_tables_and_writes_reports(tmp_path: Path) -> None:
    result = cli("monitor", "evaluate", "--attack-queries", "120", "--benign-streams", "2",
                 "--benign-queries", "200", "--json", str(tmp_path / "e.json"), "--html",
                 str(tmp_path / "e.html"), env={"COLUMNS": "160"})
    for name in ("jacobian", "uniform", "equation", "knockoff", "augmented", "active",
                 "heldout-1000", "fewclass-1001", "per-query false alarms", "tenant"):
        assert name in result.stdout, name
    doc = json.loads((tmp_path / "e.json").read_text())["evaluations"][0]
    assert doc["data"] == "sklearn:digits" and doc["victim"] == "lr"
    assert {a["kind"] for a in doc["attacks"]} >= {"jacobian", "uniform", "active"}
    assert doc["benign_queries"] == 400
    assert (tmp_path / "e.html").read_text().count("<svg") == len(doc["attacks"]) + 1 + 2


def test_calibrate_writes_a_yaml_snippet(tmp_path: Path) -> None:
    out = tmp_path / "monitor.yaml"
    result = cli("monitor", "calibrate", "--benign-streams", "2", "--benign-queries", "200",
                 "--false-alarm-rate", "0.01", "--yaml", str(out), env={"COLUMNS": "160"})
    assert "threshold" in result.stdout and "prada" in result.stdout
    threshold = yaml.safe_load(out.read_text())["monitor"]["threshold"]
    assert 0.0 < threshold <= 1.0 and f"threshold {threshold}" in result.stdout


def test_evaluate_bad_data_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = cli("monitor", "evaluate", "--data", "sklearn:nope", check=False)
    assert result.returncode == 2 and "nope" in _one_error_line(result.stderr)
    result = cli("monitor", "evaluate", "--victim", "svm", check=False)
    assert result.returncode == 2 and "--victim" in _one_error_line(result.stderr)


def test_calibrate_a_configured_model_on_its_own_traffic(tmp_path: Path, config: Path) -> None:
    rows = _rows(tmp_path, "traffic.npy", 600)
    cli("monitor", "fit", "--config", str(config), "--model", "digits", "--data", str(rows))
    doc = yaml.safe_load(config.read_text())
    doc["models"][0]["monitor"] = {"summary": "monitor/digits.summary.npz"}
    config.write_text(yaml.safe_dump(doc))
    out = tmp_path / "threshold.yaml"
    result = cli("monitor", "calibrate", "--config", str(config), "--model", "digits",
                 "--data", str(rows), "--benign-streams", "2", "--benign-queries", "300",
                 "--false-alarm-rate", "0.01", "--yaml", str(out))
    assert "keeps per-query false alarms" in " ".join(result.stdout.split())
    threshold = yaml.safe_load(out.read_text())["monitor"]["threshold"]
    assert 0.0 < threshold <= 1.0
    unfitted = cli("monitor", "calibrate", "--config", str(config), "--model", "nope",
                   "--data", str(rows), check=False)
    assert unfitted.returncode == 2
    assert "has no monitor.summary" in _one_error_line(unfitted.stderr)


def test_evaluate_suite_writes_the_corpus_report(tmp_path: Path) -> None:
    result = cli("monitor", "evaluate", "--suite", "dev", "--victims", "wine-3c-13f-lr",
                 "--behaviours", "uniform-range,random-order-1qps", "--queries", "200",
                 "--benign-per-victim", "2", "--workers", "1", "--json",
                 str(tmp_path / "c.json"), "--markdown", str(tmp_path / "c.md"), "--html",
                 str(tmp_path / "c.html"), env={"COLUMNS": "200"})
    assert "benign streams flagged" in result.stdout
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["suite"] == "dev" and {c["victim"] for c in doc["cells"]} == {"wine-3c-13f-lr"}
    assert sorted(c["behaviour"] for c in doc["cells"]) == [
        "random-order-1qps", "random-order-1qps", "uniform-range"]
    assert {t["name"] for t in doc["targets"]} >= {"benign streams flagged",
                                                   "synthetic queries flagged in time"}
    assert "| dev | synthetic queries flagged in time |" in (tmp_path / "c.md").read_text()
    assert "<svg" in (tmp_path / "c.html").read_text()


def test_evaluate_suite_unknown_names_are_one_line_and_exit_2() -> None:
    for args, text in ((["--suite", "nope"], "unknown suite 'nope'"),
                       (["--suite", "dev", "--victims", "nope"], "unknown corpus victim"),
                       (["--suite", "dev", "--behaviours", "nope"], "unknown corpus behaviour")):
        result = cli("monitor", "evaluate", *args, check=False)
        assert result.returncode == 2 and text in _one_error_line(result.stderr), args

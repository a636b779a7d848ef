"""Thief → gateway → verify, end to end over real HTTP.

A gateway watermarks 5% of its answers (keyed on the input) and records each marked answer
with the principal who got it. A label-only Knockoff thief takes 1,000 answers through it and
trains a copy; `modelfence verify-ownership` asks the copy the recorded questions and accuses
it with a tiny p-value; the signed evidence bundle verifies, and fails once edited.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import httpx2 as httpx
import pytest
import skops.io as sio
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from modelfence.audit.checkpoint import generate_keypair
from modelfence.redteam.attacks.knockoff import KnockoffAdaptive
from modelfence.redteam.data import Pool
from modelfence.redteam.http_oracle import HttpOracle
from modelfence.redteam.thieves import make_thief
from modelfence.redteam.victims import Recorder

from ..support import Gateway, cli

TRUST = ["--trust", "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
         "--trust", "sklearn.preprocessing._data.StandardScaler",
         "--trust", "sklearn.pipeline.Pipeline"]


def test_a_thief_through_the_gateway_is_identified(tmp_path: Path,
                                                   digits_files: dict[str, Path]) -> None:
    generate_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub.pem")
    (tmp_path / "wm.secret").write_text("w" * 48)
    (tmp_path / "evidence.key").write_text("ab" * 32)
    models = [{"name": "digits", "backend": {"type": "skops", "path": str(digits_files["skops"])},
               "limits": {"max_batch": 64}}]
    gw = Gateway(tmp_path, models, extra={
        "audit": {"sink": "jsonl:///audit.jsonl", "checkpoint_key_file": "audit.pem"},
        "watermark": {"fraction": 0.05, "fraction_at_risk": None,
                      "keys": [{"id": "k1", "secret_file": "wm.secret"}],
                      "evidence_store": "sqlite:///evidence.db",
                      "evidence_key_file": "evidence.key"}}).start()
    try:
        key = gw.key(principal="mallory")
        x, y = load_digits(return_X_y=True)
        pool, _ = Pool("digits", x / 16.0, y).split(0.25, 0)
        with threadpool_limits(1):
            oracle = HttpOracle(f"{gw.url}/v2/models/digits", key, batch=16)
            try:
                rec = Recorder(oracle, 1000, soft=False)
                KnockoffAdaptive("labels", 0).collect(rec, pool)
            finally:
                oracle.close()
            xs, labels, _ = rec.transcript()
            thief = make_thief("mlp", 0).fit(xs, labels, None, 10)
        sio.dump(cast(Any, thief)._model, tmp_path / "stolen.skops")

        records = cli("watermark", "records", "--model", "digits", "--config", str(gw.config))
        assert "mallory" in records.stdout
        metrics = httpx.get(f"{gw.admin_url}/metrics").text
        marked = [line for line in metrics.splitlines()
                  if line.startswith("modelfence_watermark_marked_rows_total")]
        assert marked and float(marked[0].split()[-1]) > 0

        case = tmp_path / "case"
        verdict = cli("verify-ownership", "--config", str(gw.config), "--suspect",
                      str(tmp_path / "stolen.skops"), "--model", "digits", "--principal",
                      "mallory", "--out", str(case), *TRUST, check=False)
        assert "Traceback" not in verdict.stderr
        doc = json.loads((case / "evidence.json").read_text())
        assert doc["verdict"]["accused"] is True, verdict.stdout
        assert doc["verdict"]["log2_p"] <= -64  # DAWN's bar, at 5% marked answers
        assert doc["verdict"]["convicting_set"] == "principal:mallory"
        assert doc["evidence"]["asked"]["control"] > doc["evidence"]["asked"]["watermark"]
        assert (case / "evidence.html").exists()

        ok = cli("evidence", "verify", str(case / "evidence.json"), "--public-key",
                 str(tmp_path / "audit.pub.pem"), check=False)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        doc["verdict"]["accused"] = False
        (tmp_path / "edited.json").write_text(json.dumps(doc))
        edited = cli("evidence", "verify", str(tmp_path / "edited.json"), "--public-key",
                     str(tmp_path / "audit.pub.pem"), check=False)
        assert edited.returncode == 1
        assert "edited" in edited.stdout + edited.stderr
    finally:
        gw.stop()


@pytest.mark.parametrize("bad", ["missing.skops"])
def test_verify_ownership_bad_suspect_is_one_line(tmp_path: Path, bad: str,
                                                  digits_files: dict[str, Path]) -> None:
    (tmp_path / "wm.secret").write_text("w" * 48)
    gw = Gateway(tmp_path, [{"name": "digits", "backend": {
        "type": "skops", "path": str(digits_files["skops"])}}], extra={"watermark": {
            "keys": [{"id": "k1", "secret_file": "wm.secret"}],
            "evidence_store": "sqlite:///evidence.db"}})
    gw.write_config()
    result = cli("verify-ownership", "--config", str(gw.config), "--suspect",
                 str(tmp_path / bad), "--model", "digits", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")

"""`modelfence verify-ownership`, `evidence verify` and `watermark keygen|records`.

Until the lead wires `watermark:` into the config model, the commands' settings lookup is
given the section here (`watermark_settings` is patched); everything else is real: the
config file, the evidence store on disk, the suspect file or OIP endpoint, the signing key.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import typer
import yaml
from typer.testing import CliRunner

from modelfence.audit.checkpoint import generate_keypair
from modelfence.cli import watermark as cli
from modelfence.config import Settings, load_settings
from modelfence.watermark.keyring import Keyring, WatermarkKey
from modelfence.watermark.marking import Watermarker
from modelfence.watermark.oracle import WatermarkedOracle
from modelfence.watermark.settings import WatermarkSettings
from modelfence.watermark.store import evidence_store_from_url

# the local time-stamping authority (openssl ts behind a local HTTP server) of the evidence tests
from .test_evidence_timestamp import Tsa
from .test_evidence_timestamp import tsa as tsa


def app() -> typer.Typer:
    a = typer.Typer()
    cli.register(a)
    return a


def run(*args: str) -> Any:
    return CliRunner().invoke(app(), list(args))


@dataclass
class Setup:
    folder: Path
    config: Path
    settings: Settings
    watermark: WatermarkSettings
    x: np.ndarray[Any, Any]
    oracle: WatermarkedOracle
    labels: np.ndarray[Any, Any]  # what the thief was answered (marks included)


@pytest.fixture
def setup(tmp_path: Path, digits_files: dict[str, Path],
          monkeypatch: pytest.MonkeyPatch) -> Setup:
    from sklearn.datasets import load_digits

    from modelfence.redteam.victims import victim_source

    generate_keypair(tmp_path / "signing.pem", tmp_path / "signing.pub.pem")
    (tmp_path / "wm.secret").write_text("s" * 48)
    config = tmp_path / "modelfence.yaml"
    config.write_text(yaml.safe_dump({
        "secret_file": "secret",
        "audit": {"sink": "none://", "disabled_acknowledged": True,
                  "checkpoint_key_file": "signing.pem"},
        "models": [{"name": "digits",
                    "backend": {"type": "skops", "path": str(digits_files["skops"])}}]}))
    settings = load_settings(config)
    ws = WatermarkSettings(keys=[{"id": "k1", "secret_file": "wm.secret"}], fraction=0.05,
                           fraction_at_risk=None, control_ratio=5,
                           evidence_store="sqlite:///evidence.db").resolved(tmp_path)
    monkeypatch.setattr(cli, "watermark_settings", lambda c: (config, settings, ws))
    # the thief's answers, through the watermark, recorded in the evidence store
    x = load_digits().data / 16.0
    victim = victim_source(digits_files["skops"]).load()
    oracle = WatermarkedOracle(victim, Watermarker.from_settings(ws), model="digits",
                               principal="mallory", tenant="acme")
    labels = oracle.ask(x).labels

    async def record() -> None:
        store = evidence_store_from_url(ws.evidence_store)
        await store.open()
        await store.add(oracle.records)
        await store.close()

    asyncio.run(record())
    return Setup(tmp_path, config, settings, ws, x, oracle, labels)


def thief_file(s: Setup) -> Path:
    """A copy trained on the watermarked answers, saved as the stolen model file."""
    import skops.io as sio
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        thief = MLPClassifier(hidden_layer_sizes=(64,), solver="lbfgs", alpha=1e-4,
                              max_iter=400, random_state=0).fit(s.x, s.labels)
    path = s.folder / "stolen.skops"
    sio.dump(thief, path)
    return path


def test_stolen_file_is_accused_and_the_bundle_verifies_until_edited(setup: Setup) -> None:
    stolen = thief_file(setup)
    out = setup.folder / "case"
    pool = setup.folder / "pool.npz"
    from sklearn.datasets import load_digits

    np.savez(pool, x=setup.x, y=load_digits().target)
    result = run("verify-ownership", "--suspect", str(stolen), "--model", "digits",
                 "--out", str(out), "--reference-pool", str(pool), "--references", "3",
                 "--fingerprint-points", "60", "--trust",
                 "sklearn.neural_network._multilayer_perceptron.MLPClassifier", "--json")
    assert result.exit_code == 0, result.output
    outcome = orjson.loads(result.stdout)
    assert outcome["accused"] and outcome["log2_p"] <= -64
    assert outcome["convicting_set"] == "principal:mallory"
    (only,) = outcome["sets"]  # one caller: principal, tenant and all records are one set
    assert only["tested"] and only["log2_p_adjusted"] <= -64
    assert outcome["fingerprint"]["points"] == 60
    assert outcome["combined"]["method"] == "Fisher"
    assert outcome["combined"]["inputs"] == [only["log2_p_adjusted"],
                                             outcome["fingerprint"]["log2_p"]]
    doc = orjson.loads((out / "evidence.json").read_bytes())
    assert doc["suspect"]["kind"] == "file" and len(doc["suspect"]["sha256"]) == 64
    asked = doc["evidence"]["asked"]
    # every recorded input once (fewer than the 2,000 default), and the 60 fingerprint points
    assert asked["watermark"] == doc["evidence"]["distinct_watermark_inputs"] > 0
    assert asked["control"] == doc["evidence"]["distinct_control_inputs"] > 0
    assert doc["suspect"]["queries"] == asked["watermark"] + asked["control"] + 60
    fingerprint = doc["tests"]["fingerprint"]
    assert fingerprint["points"] == 60 and fingerprint["calibration_models"] >= 3
    assert fingerprint["name"] == "fingerprint test"
    assert doc["verdict"]["reasons"][0].startswith("principal:mallory: the suspect disagrees")
    assert "Copy identified" in (out / "evidence.html").read_text()
    pub = str(setup.folder / "signing.pub.pem")
    ok = run("evidence", "verify", str(out / "evidence.json"), "--public-key", pub)
    assert ok.exit_code == 0 and "ok" in ok.output, ok.output
    doc["queries"][0]["suspect_label"] = "x"
    edited = setup.folder / "edited.json"
    edited.write_bytes(orjson.dumps(doc))
    bad = run("evidence", "verify", str(edited), "--public-key", pub)
    assert bad.exit_code == 1
    assert "signature does not match: the bundle was edited" in bad.output


def test_protected_model_behind_an_oip_endpoint_is_not_accused(
        setup: Setup, local_gateway: Any) -> None:
    key = local_gateway.key(models=["digits"])
    out = setup.folder / "case"
    result = run("verify-ownership", "--suspect", f"{local_gateway.url}/v2/models/digits",
                 "--suspect-key", key, "--model", "digits", "--principal", "mallory",
                 "--max-queries", "120", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "not identified" in result.output
    doc = orjson.loads((out / "evidence.json").read_bytes())
    assert doc["suspect"]["kind"] == "oip" and doc["suspect"]["queries"] == 120
    assert doc["evidence"]["asked"] == {"watermark": 60, "control": 60}  # half each
    (only,) = doc["tests"]["sets"]
    assert only["set"] == "principal:mallory"
    assert only["mark_disagreements"] == 0  # it agrees with the model everywhere
    assert doc["verdict"]["log2_p"] == 0.0 and doc["verdict"]["convicting_set"] is None
    assert doc["verdict"]["summary"].startswith("no evidence of copying")


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "nope"], "no model 'nope'"),
    (["--alpha", "2"], "--alpha 2.0: must be between 0 and 1"),
    (["--signing-key", "missing.pem"], "cannot read signing key"),
    (["--suspect", "missing.skops"], "model file missing.skops does not exist"),
    (["--suspect", "model.pkl"], "give a .skops or .onnx model file"),
])
def test_bad_inputs_are_one_line_and_exit_2(setup: Setup, args: list[str], message: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(setup.folder)
    base = {"--suspect": "stolen.skops", "--model": "digits"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = run("verify-ownership", *[v for kv in base.items() for v in kv])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_no_signing_key_and_no_watermark_section_exit_2(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    no_key = setup.settings.model_copy(update={"audit": setup.settings.audit.model_copy(
        update={"checkpoint_key_file": None})})
    monkeypatch.setattr(cli, "watermark_settings", lambda c: (setup.config, no_key,
                                                              setup.watermark))
    result = run("verify-ownership", "--suspect", "x.skops", "--model", "digits")
    assert result.exit_code == 2 and "no signing key" in result.output
    monkeypatch.undo()
    result = run("verify-ownership", "--suspect", "x.skops", "--model", "digits",
                 "--config", str(setup.config))
    assert result.exit_code == 2 and "no watermark: section" in result.output


def test_evidence_verify_bad_inputs(setup: Setup) -> None:
    pub = str(setup.folder / "signing.pub.pem")
    html = setup.folder / "page.html"
    html.write_text("<html>")
    result = run("evidence", "verify", str(html), "--public-key", pub)
    assert result.exit_code == 2 and "not JSON" in result.output
    result = run("evidence", "verify", str(html), "--public-key", str(setup.folder / "no.pem"))
    assert result.exit_code == 2 and "cannot read" in result.output


def test_keygen_and_records(setup: Setup) -> None:
    path = setup.folder / "new.secret"
    assert run("watermark", "keygen", str(path)).exit_code == 0
    assert len(path.read_text().strip()) == 64 and path.stat().st_mode & 0o777 == 0o600
    again = run("watermark", "keygen", str(path))
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    table = run("watermark", "records", "--model", "digits")
    assert table.exit_code == 0 and "mallory" in table.output and "control" in table.output
    Keyring([WatermarkKey("k", path.read_text().strip().encode())])  # usable as a secret


def test_an_unknown_principal_is_inconclusive_and_a_failed_timestamp_keeps_the_bundle(
        setup: Setup) -> None:
    stolen = thief_file(setup)
    out = setup.folder / "case"
    tsa = "http://127.0.0.1:9/tsa"  # nothing listens on the discard port
    result = run("verify-ownership", "--suspect", str(stolen), "--model", "digits",
                 "--principal", "nobody", "--out", str(out), "--timestamp-url", tsa,
                 "--trust", "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
                 "--json")
    assert result.exit_code == 0, result.output
    outcome = orjson.loads(result.stdout)
    assert not outcome["accused"] and outcome["sets"] == [] and outcome["log2_p"] == 0.0
    assert "no marked answers of model digits are recorded for principal nobody" in (
        outcome["summary"])
    assert "only" not in outcome["summary"]
    assert "not timestamped" in result.stderr
    doc = orjson.loads((out / "evidence.json").read_bytes())
    assert doc["timestamp"]["tsa"] == tsa and doc["timestamp"]["error"]
    assert doc["suspect"]["queries"] == 0
    pub = str(setup.folder / "signing.pub.pem")
    assert run("evidence", "verify", str(out / "evidence.json"), "--public-key",
               pub).exit_code == 0


def test_printed_outcome_names_the_convicting_set_and_each_test(setup: Setup) -> None:
    stolen = thief_file(setup)
    result = run("verify-ownership", "--suspect", str(stolen), "--model", "digits",
                 "--out", str(setup.folder / "case"), "--trust",
                 "sklearn.neural_network._multilayer_perceptron.MLPClassifier")
    assert result.exit_code == 0, result.output
    assert "copy identified" in result.output
    assert "convicting set: principal:mallory" in result.output
    assert "adjusted p" in result.output and "fingerprint not run" in result.output


def test_every_set_by_default_and_one_with_principal(setup: Setup) -> None:
    # an honest caller of another tenant holds answers too
    honest = WatermarkedOracle(setup.oracle._inner, setup.oracle.marker, model="digits",
                               principal="alice", tenant="globex")
    honest.ask(np.clip(setup.x + np.random.default_rng(3).normal(0, 0.05, setup.x.shape), 0, 1))

    async def record() -> None:
        store = evidence_store_from_url(setup.watermark.evidence_store)
        await store.open()
        await store.add(honest.records)
        await store.close()

    asyncio.run(record())
    stolen = thief_file(setup)
    trust = ["--trust", "sklearn.neural_network._multilayer_perceptron.MLPClassifier"]
    every = run("verify-ownership", "--suspect", str(stolen), "--model", "digits", "--out",
                str(setup.folder / "every"), *trust, "--json")
    assert every.exit_code == 0, every.output
    outcome = orjson.loads(every.stdout)
    names = [s["set"] for s in outcome["sets"]]
    assert sorted(names) == ["all", "principal:alice", "principal:mallory"]
    assert outcome["convicting_set"] == "principal:mallory" and outcome["accused"]
    alice = next(s for s in outcome["sets"] if s["set"] == "principal:alice")
    assert alice["log2_p_adjusted"] > -10
    one = run("verify-ownership", "--suspect", str(stolen), "--model", "digits", "--out",
              str(setup.folder / "one"), "--principal", "alice", *trust, "--json")
    assert one.exit_code == 0, one.output
    outcome = orjson.loads(one.stdout)
    assert [s["set"] for s in outcome["sets"]] == ["principal:alice"]
    assert not outcome["accused"] and outcome["convicting_set"] is None


def test_a_timestamped_bundle_from_a_local_tsa_verifies(setup: Setup, tsa: Tsa) -> None:
    stolen = thief_file(setup)
    out = setup.folder / "case"
    result = run("verify-ownership", "--suspect", str(stolen), "--model", "digits",
                 "--out", str(out), "--timestamp-url", tsa.url, "--trust",
                 "sklearn.neural_network._multilayer_perceptron.MLPClassifier")
    assert result.exit_code == 0, result.output
    assert "not timestamped" not in result.output
    doc = orjson.loads((out / "evidence.json").read_bytes())
    assert doc["timestamp"]["tsa"] == tsa.url and doc["timestamp"]["token"]
    pub = str(setup.folder / "signing.pub.pem")
    ok = run("evidence", "verify", str(out / "evidence.json"), "--public-key", pub,
             "--tsa-cert", str(tsa.cert))
    assert ok.exit_code == 0 and "timestamp valid" in ok.output, ok.output

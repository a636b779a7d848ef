"""Signing (key, PKCS#11), scanning, guarded loading and the `artifact` CLI."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from modelfence.artifacts import (
    KeyringProvider,
    NotScanned,
    Pkcs11Key,
    SignatureError,
    SignaturePolicy,
    UnsafeArtifact,
    Verdict,
    check_artifact,
    encrypt_file,
    scan_path,
    sign_model,
    verify_model,
)
from modelfence.cli.artifact import app

from ..support import ec_key_pair
from .test_artifact_crypto import softhsm  # noqa: F401  (fixture)

runner = CliRunner()


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned > /tmp/modelfence-pwned",))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    k, p = tmp_path / "k.pem", tmp_path / "p.pem"
    ec_key_pair(k, p)
    return k, p


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "weights.bin").write_bytes(os.urandom(10_000))
    (d / "config.json").write_text('{"a": 1}')
    return d


def test_sign_verify_folder_and_one_byte_tamper(model_dir: Path,
                                                keys: tuple[Path, Path]) -> None:
    k, p = keys
    sig = sign_model(model_dir, private_key=k)
    assert sig == model_dir.with_name("model.sig")
    verify_model(model_dir, SignaturePolicy(public_key=p))
    w = model_dir / "weights.bin"
    data = bytearray(w.read_bytes())
    data[1234] ^= 1
    w.write_bytes(data)
    with pytest.raises(SignatureError) as err:
        verify_model(model_dir, SignaturePolicy(public_key=p))
    msg = str(err.value)
    assert "\n" not in msg and "modified weights.bin" in msg and len(msg) < 200


def test_sign_single_file_with_signature_inside_folder(model_dir: Path,
                                                       keys: tuple[Path, Path]) -> None:
    k, p = keys
    sig = model_dir / "model.sig"
    sign_model(model_dir, private_key=k, signature=sig)
    verify_model(model_dir, SignaturePolicy(public_key=p, signature=sig))
    f = model_dir / "weights.bin"
    sign_model(f, private_key=k)
    verify_model(f, SignaturePolicy(public_key=p))
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    (model_dir.parent / "o.pem").write_bytes(other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(SignatureError, match="verification failed"):
        verify_model(f, SignaturePolicy(public_key=model_dir.parent / "o.pem"))


def test_pkcs11_signing_on_softhsm(softhsm: Path, model_dir: Path,  # noqa: F811
                                   tmp_path: Path) -> None:
    ref = Pkcs11Key(softhsm, "mf", "1234", "signer")
    ref.generate()
    pub = tmp_path / "token.pub.pem"
    pub.write_bytes(ref.public_pem())
    sign_model(model_dir, pkcs11_key=ref)
    verify_model(model_dir, SignaturePolicy(public_key=pub))  # the standard EC verifier
    (model_dir / "config.json").write_text('{"a": 2}')
    with pytest.raises(SignatureError, match=r"modified config\.json"):
        verify_model(model_dir, SignaturePolicy(public_key=pub))


def _sk_model() -> Any:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=200).fit(x, y), x


def test_scan_malicious_and_benign_pickles(tmp_path: Path) -> None:
    bad = tmp_path / "model"  # no extension: recognised by content
    bad.write_bytes(pickle.dumps(_Evil()))
    good = tmp_path / "good.joblib"
    good.write_bytes(pickle.dumps(_sk_model()[0]))
    r = scan_path(bad)
    assert r.verdict == Verdict.UNSAFE and "posix.system" in " ".join(r.files[0].findings)
    assert not Path("/tmp/modelfence-pwned").exists()
    with pytest.raises(UnsafeArtifact, match="unsafe pickle"):
        check_artifact(bad, require_scan=True)
    assert scan_path(good).verdict == Verdict.CLEAN
    assert check_artifact(good) == good
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a model at all")
    assert scan_path(junk).verdict == Verdict.NOT_SCANNED
    with pytest.raises(NotScanned):
        check_artifact(junk)


def test_safe_formats_recognised_by_content(tmp_path: Path) -> None:
    import skops.io as sio
    from skl2onnx import to_onnx

    model, x = _sk_model()
    sio.dump(model, tmp_path / "a")
    (tmp_path / "b").write_bytes(to_onnx(model, x[:1].astype("float32")).SerializeToString())
    header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    (tmp_path / "c").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    formats = {f.path.name: (f.format, f.verdict) for f in scan_path(tmp_path).files}
    assert formats == {"a": ("skops", Verdict.CLEAN), "b": ("onnx", Verdict.CLEAN),
                       "c": ("safetensors", Verdict.CLEAN)}


def test_guarded_load_decrypts_to_memory_and_scans(tmp_path: Path,
                                                   keys: tuple[Path, Path]) -> None:
    kr = KeyringProvider.create(tmp_path / "kr.json")
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps(_sk_model()[0]))
    encrypt_file(good, tmp_path / "good.enc", kr)
    sign_model(tmp_path / "good.enc", private_key=keys[0])
    before = set(tmp_path.iterdir())
    out = check_artifact(tmp_path / "good.enc", decrypt_with=kr,
                         require_signature=SignaturePolicy(public_key=keys[1]))
    assert out == good.read_bytes() and set(tmp_path.iterdir()) == before
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Evil()))
    encrypt_file(evil, tmp_path / "evil.enc", kr)
    with pytest.raises(UnsafeArtifact, match=r"evil\.enc"):
        check_artifact(tmp_path / "evil.enc", decrypt_with=kr)
    with pytest.raises(Exception, match="no key provider"):
        check_artifact(tmp_path / "evil.enc")


def _cli(*args: str) -> Any:
    return runner.invoke(app, [*args], catch_exceptions=False)


def test_cli_round_trips_and_errors(tmp_path: Path, model_dir: Path,
                                    keys: tuple[Path, Path]) -> None:
    k, p = keys
    assert _cli("sign", str(model_dir), "--key", str(k)).exit_code == 0
    assert _cli("verify", str(model_dir), "--public-key", str(p)).exit_code == 0
    (model_dir / "weights.bin").write_bytes(b"x")
    r = _cli("verify", str(model_dir), "--public-key", str(p))
    assert r.exit_code == 1 and "weights.bin" in r.output and "Traceback" not in r.output
    kr = tmp_path / "kr.json"
    assert _cli("keygen", "--keyring", str(kr)).exit_code == 0
    src = model_dir / "config.json"
    assert _cli("encrypt", str(src), "--keyring", str(kr)).exit_code == 0
    out = tmp_path / "plain.json"
    assert _cli("decrypt", f"{src}.enc", "-o", str(out), "--keyring", str(kr)).exit_code == 0
    assert out.read_bytes() == src.read_bytes()
    kr2 = tmp_path / "kr2.json"
    _cli("keygen", "--keyring", str(kr2))
    for args in (["decrypt", f"{src}.enc", "-o", str(tmp_path / "x"), "--keyring", str(kr2)],
                 ["encrypt", str(tmp_path / "missing"), "--keyring", str(kr)],
                 ["verify", str(tmp_path / "missing"), "--public-key", str(p)],
                 ["scan", str(tmp_path / "missing")]):
        r = _cli(*args)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and "error:" in lines[0], args
    assert not (tmp_path / "x").exists()
    evil = tmp_path / "e.pkl"
    evil.write_bytes(pickle.dumps(_Evil()))
    assert _cli("scan", str(evil)).exit_code == 1
    assert _cli("scan", str(model_dir / "config.json")).exit_code == 2


def test_cli_has_no_traceback_in_subprocess(tmp_path: Path) -> None:
    code = ("from modelfence.cli.artifact import app; app(['decrypt', 'nope.enc', '-o', 'x',"
            " '--keyring', 'nope.json'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "keyring not found" in r.stderr

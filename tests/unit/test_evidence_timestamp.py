"""RFC 3161 timestamps of evidence bundles, against a local time-stamping authority.

The TSA is real: a throwaway CA and TSA certificate made here with `cryptography`
(extendedKeyUsage timeStamping, critical), `openssl ts -reply` answering each request,
behind an http.server on 127.0.0.1. Only what the TSA answers is varied (HTTP error, a
token for a different hash, no server at all).
"""

from __future__ import annotations

import base64
import datetime as dt
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from modelfence.cli.evidence import evidence_app
from modelfence.watermark import bundle, timestamp
from modelfence.watermark.timestamp import TimestampError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the local TSA needs the openssl command")


Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: Key, issuer: str, issuer_key: Key, *, ca: bool,
          eku_critical: bool = True) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(days=1))
         .not_valid_after(now + dt.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False))
    if not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                            critical=eku_critical)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return bytes(obj.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


@dataclass
class Tsa:
    url: str
    cert: Path  # the TSA's certificate, PEM
    other_cert: Path  # another TSA's certificate (same CA), never used to sign
    mode: dict[str, str]  # "ok" | "http500" | "other-hash" | "garbage"


def _key(kind: str) -> Key:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _make_tsa(folder: Path, kind: str) -> tuple[Path, Path]:
    ca_key = _key(kind)
    ca = _cert("Test CA", ca_key, "Test CA", ca_key, ca=True)
    keys = [_key(kind) for _ in range(2)]
    certs = [_cert(f"Test TSA {i}", k, "Test CA", ca_key, ca=False)
             for i, k in enumerate(keys)]
    (folder / "ca.pem").write_bytes(_pem(ca))
    (folder / "tsa.pem").write_bytes(_pem(certs[0]))
    (folder / "tsa.key").write_bytes(_pem(keys[0]))
    (folder / "other.pem").write_bytes(_pem(certs[1]))
    (folder / "serial").write_text("01\n")
    (folder / "tsa.cnf").write_text(f"""
[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
dir = {folder}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/ca.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
""")
    return folder / "tsa.pem", folder / "other.pem"


def _openssl_reply(folder: Path, query: bytes) -> bytes:
    q, r = folder / "q.tsq", folder / "r.tsr"
    q.write_bytes(query)
    subprocess.run(["openssl", "ts", "-reply", "-config", str(folder / "tsa.cnf"),
                    "-queryfile", str(q), "-out", str(r)], check=True,
                   capture_output=True, timeout=30)
    return r.read_bytes()


@pytest.fixture
def tsa(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Tsa]:
    """An EC P-256 TSA, or an RSA one (`indirect` parameter "rsa")."""
    folder = tmp_path / "tsa"
    folder.mkdir()
    cert, other = _make_tsa(folder, getattr(request, "param", "ec"))
    mode = {"mode": "ok"}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if mode["mode"] == "http500":
                self.send_error(500, "TSA down")
                return
            if mode["mode"] == "other-hash":  # a valid token, for someone else's hash
                body = timestamp.request(b"\x01" * 32, 7)
            with lock:
                reply = (b"not asn.1" if mode["mode"] == "garbage"
                         else _openssl_reply(folder, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Tsa(f"http://127.0.0.1:{server.server_address[1]}/tsa", cert, other, mode)
    finally:
        server.shutdown()
        server.server_close()


def _signed() -> tuple[dict[str, Any], Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    doc = {"type": bundle.BUNDLE_TYPE, "v": 1, "model": "m", "verdict": {
        "accused": True, "summary": "copy", "alpha": 1e-6, "log2_p": -70.5}}
    return bundle.sign(doc, key), key


def _certs(path: Path) -> list[x509.Certificate]:
    return timestamp.load_certificates(path.read_bytes(), str(path))


@pytest.mark.parametrize("tsa", ["ec", "rsa"], indirect=True)
def test_stamp_and_check_against_a_local_tsa(tsa: Tsa) -> None:
    signed, key = _signed()
    stamped = timestamp.stamp(signed, tsa.url)
    ts = stamped["timestamp"]
    assert ts["tsa"] == tsa.url and ts["hash"] == "sha256"
    when = dt.datetime.fromisoformat(ts["time"])
    assert abs((when - dt.datetime.now(dt.UTC)).total_seconds()) < 120
    # the timestamp is outside what the signature covers: the signature still holds
    assert bundle.problem(stamped, key.public_key()) is None
    checked = timestamp.check(stamped, _certs(tsa.cert))
    assert checked.time == ts["time"] and checked.policy == "1.2.3.4.1"
    assert "Test TSA 0" in checked.signer
    assert timestamp.describe(stamped) == f"timestamped at {ts['time']} by {tsa.url}"


def test_the_tsa_ca_may_be_trusted_instead_of_the_tsa_itself(tsa: Tsa) -> None:
    signed, _ = _signed()
    stamped = timestamp.stamp(signed, tsa.url)
    checked = timestamp.check(stamped, _certs(tsa.cert.parent / "ca.pem"))
    assert "Test TSA 0" in checked.signer  # the token's own certificate, under the CA
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _cert("Test CA", stranger_key, "Test CA", stranger_key, ca=True)  # same name
    with pytest.raises(TimestampError, match="nor by a certificate issued under it"):
        timestamp.check(stamped, [stranger])


def test_a_token_does_not_check_under_another_certificate_or_bundle(tsa: Tsa) -> None:
    signed, _ = _signed()
    stamped = timestamp.stamp(signed, tsa.url)
    with pytest.raises(TimestampError, match="not signed by the given TSA certificate"):
        timestamp.check(stamped, _certs(tsa.other_cert))
    # the token moved onto another bundle: its imprint is another signature's hash
    other, _ = _signed()
    moved = {**other, "timestamp": stamped["timestamp"]}
    with pytest.raises(TimestampError, match="for a different hash"):
        timestamp.check(moved, _certs(tsa.cert))
    # the stated time edited
    edited = {**stamped, "timestamp": {**stamped["timestamp"], "time": "2020-01-01T00:00:00"}}
    with pytest.raises(TimestampError, match="the token says"):
        timestamp.check(edited, _certs(tsa.cert))


def test_a_token_with_its_content_or_signature_changed_fails(tsa: Tsa) -> None:
    signed, _ = _signed()
    stamped = timestamp.stamp(signed, tsa.url)
    der = bytearray(base64.b64decode(stamped["timestamp"]["token"]))
    from asn1crypto import cms

    info = cms.ContentInfo.load(bytes(der))
    tst = info["content"]["encap_content_info"]["content"].contents
    sig = info["content"]["signer_infos"][0]["signature"].native
    failures = []
    for what, needle in (("content", tst[-8:]), ("signature", sig[-8:])):
        at = bytes(der).index(needle)
        changed = bytearray(der)
        changed[at] ^= 0x01
        doc = {**stamped, "timestamp": {**stamped["timestamp"],
                                        "token": base64.b64encode(bytes(changed)).decode()}}
        with pytest.raises(TimestampError) as exc:
            timestamp.check(doc, _certs(tsa.cert))
        failures.append((what, str(exc.value)))
    assert failures == [
        ("content", "the token's content does not match its signed digest: edited"),
        ("signature", "the token's signature does not hold under the given TSA certificate")]


def test_a_certificate_not_for_time_stamping_is_refused(tsa: Tsa, tmp_path: Path) -> None:
    signed, _ = _signed()
    stamped = timestamp.stamp(signed, tsa.url)
    key = serialization.load_pem_private_key((tsa.cert.parent / "tsa.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    real = _certs(tsa.cert)[0]
    # same key, serial and issuer as the TSA's: only the key usage differs
    def like_real(eku: x509.ExtendedKeyUsage | None, critical: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(real.subject).issuer_name(real.issuer)
             .public_key(key.public_key()).serial_number(real.serial_number)
             .not_valid_before(real.not_valid_before_utc)
             .not_valid_after(real.not_valid_after_utc))
        if eku is not None:
            b = b.add_extension(eku, critical=critical)
        return b.sign(key, hashes.SHA256())

    stamping = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING])
    with pytest.raises(TimestampError, match="not marked critical"):
        timestamp.check(stamped, [like_real(stamping, False)])
    with pytest.raises(TimestampError, match="no extended key usage"):
        timestamp.check(stamped, [like_real(None, False)])
    server = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(TimestampError, match="is not for time stamping"):
        timestamp.check(stamped, [like_real(server, True)])
    # a critical time-stamping certificate that is not the one the token names
    with pytest.raises(TimestampError, match="another signing certificate"):
        timestamp.check(stamped, [like_real(stamping, True)])


@pytest.mark.parametrize(("mode", "message"), [
    ("http500", "answered HTTP 500"),
    ("other-hash", "for a different hash"),
    ("garbage", "did not answer an RFC 3161 reply"),
])
def test_tsa_failures_are_clear(tsa: Tsa, mode: str, message: str) -> None:
    tsa.mode["mode"] = mode
    signed, _ = _signed()
    with pytest.raises(TimestampError, match=message):
        timestamp.stamp(signed, tsa.url)
    # and the bundle is kept, marked as not timestamped, with the reason
    kept, why = timestamp.stamp_or_note(signed, tsa.url)
    assert why is not None and message in why
    assert kept["signature"] == signed["signature"] and "token" not in kept["timestamp"]
    assert "not timestamped" in timestamp.describe(kept)


def test_unreachable_tsa_and_bad_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    signed, _ = _signed()
    with pytest.raises(TimestampError, match="cannot reach the time-stamping authority"):
        timestamp.stamp(signed, f"http://127.0.0.1:{port}/tsa", timeout=5)
    _, why = timestamp.stamp_or_note(signed, "file:///etc/passwd")
    assert why is not None and "http:// or https://" in why
    assert timestamp.stamp_or_note(signed, None) == (signed, None)
    with pytest.raises(TimestampError, match="no signature"):
        timestamp.stamp({"type": bundle.BUNDLE_TYPE}, "http://127.0.0.1:1/")


# the CLI ---------------------------------------------------------------------------------------


def run(*args: str) -> Any:
    app = typer.Typer()
    app.add_typer(evidence_app, name="evidence")
    return CliRunner().invoke(app, ["evidence", *args])


@pytest.fixture
def signed_file(tmp_path: Path) -> tuple[Path, Path]:
    signed, key = _signed()
    (tmp_path / "k.pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    json_path, _ = bundle.write(signed, tmp_path / "case")
    return json_path, tmp_path / "k.pub.pem"


def test_cli_timestamp_then_verify_with_and_without_the_tsa_cert(
        tsa: Tsa, signed_file: tuple[Path, Path]) -> None:
    path, pub = signed_file
    before = path.read_bytes()
    out = run("timestamp", str(path), "--timestamp-url", tsa.url)
    assert out.exit_code == 0, out.output
    assert "timestamped at" in out.output
    doc = orjson.loads(path.read_bytes())
    assert doc["timestamp"]["tsa"] == tsa.url
    assert bundle.file_problem(path.read_bytes(), doc) is None  # still canonical bytes
    assert "Timestamped at" in (path.parent / "evidence.html").read_text()
    unchecked = run("verify", str(path), "--public-key", str(pub))
    assert unchecked.exit_code == 0, unchecked.output
    assert "not checked" in unchecked.output
    checked = run("verify", str(path), "--public-key", str(pub), "--tsa-cert", str(tsa.cert))
    assert checked.exit_code == 0, checked.output
    assert "timestamp valid" in checked.output and doc["timestamp"]["time"] in checked.output
    wrong = run("verify", str(path), "--public-key", str(pub), "--tsa-cert",
                str(tsa.other_cert))
    assert wrong.exit_code == 1 and "not signed by the given TSA certificate" in wrong.output
    bad_pem = path.parent / "bad.pem"
    bad_pem.write_text("nope")
    bad = run("verify", str(path), "--public-key", str(pub), "--tsa-cert", str(bad_pem))
    assert bad.exit_code == 2 and "not a PEM certificate" in bad.output
    assert before != path.read_bytes()


def test_cli_timestamp_failure_keeps_the_bundle(tsa: Tsa, signed_file: tuple[Path, Path]) -> None:
    path, pub = signed_file
    tsa.mode["mode"] = "http500"
    out = run("timestamp", str(path), "--timestamp-url", tsa.url)
    assert out.exit_code == 1 and "answered HTTP 500" in out.output
    assert "left as it was" in out.output
    assert run("verify", str(path), "--public-key", str(pub)).exit_code == 0
    # no timestamp, but one is asked to be checked: that fails
    no_ts = run("verify", str(path), "--public-key", str(pub), "--tsa-cert", str(tsa.cert))
    assert no_ts.exit_code == 1 and "carries no timestamp" in no_ts.output


def test_a_failed_timestamp_still_writes_the_signed_bundle(tsa: Tsa, tmp_path: Path) -> None:
    """The flow of verify-ownership: sign, stamp_or_note, write; a TSA error loses nothing."""
    tsa.mode["mode"] = "http500"
    signed, key = _signed()
    kept, why = timestamp.stamp_or_note(signed, tsa.url)
    assert why is not None
    json_path, html_path = bundle.write(kept, tmp_path / "case")
    pub = tmp_path / "k.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ok = run("verify", str(json_path), "--public-key", str(pub))
    assert ok.exit_code == 0, ok.output
    assert "not timestamped: requesting one from" in ok.output and "HTTP 500" in ok.output
    assert "requesting a timestamp from" in html_path.read_text()

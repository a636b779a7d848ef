"""Signing with a certificate chain: a leaf signed by a CA; verified against the CA, refused
against another CA and after a one-byte change."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from modelfence.artifacts.errors import SignatureError
from modelfence.artifacts.signing import SignaturePolicy, sign_model, verify_model


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(folder: Path, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    path = folder / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def _leaf(folder: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
          ) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("model-release"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_path, cert_path = folder / "leaf.key.pem", folder / "leaf.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_certificate_chain_signing(tmp_path: Path) -> None:
    ca_key, ca, ca_path = _ca(tmp_path, "owner-ca")
    _, _, other_ca = _ca(tmp_path, "someone-else")
    key, cert = _leaf(tmp_path, ca_key, ca)
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 1000)
    sig = tmp_path / "model.bin.sig"
    sign_model(model, signature=sig, private_key=key, certificate=cert,
               certificate_chain=[ca_path])
    verify_model(model, SignaturePolicy(certificate_chain=(ca_path,), signature=sig))
    with pytest.raises(SignatureError):
        verify_model(model, SignaturePolicy(certificate_chain=(other_ca,), signature=sig))
    data = bytearray(model.read_bytes())
    data[10] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(SignatureError):
        verify_model(model, SignaturePolicy(certificate_chain=(ca_path,), signature=sig))

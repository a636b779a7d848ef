"""RFC 3161 timestamps of evidence bundles, from a time-stamping authority (TSA).

Why: the Ed25519 signature says who made the bundle, not when; a key holder could make a
bundle later and back-date its `finished`. A token from an independent TSA proves the
signature existed at the TSA's time. The token is over SHA-256 of the signature's bytes
(which cover everything else), so it is added after signing and kept in
doc["timestamp"] = {"tsa", "token" (base64 DER TimeStampToken), "time", "hash"}.

`stamp` asks the TSA (HTTP POST, application/timestamp-query) and checks the reply is for
our hash and nonce; `stamp_or_note` never loses the signed bundle: on failure it records
why in doc["timestamp"]["error"]. `check` verifies a token offline against the TSA
certificates a person trusts (given as PEM): the imprint is our signature's hash, the CMS
signature holds under the TSA's certificate (which must be for time stamping, critical),
the signed attributes bind the token's content and name that certificate, and the time lies
within the validity of every certificate used. The trusted PEM may be the TSA's own
certificate (pinned) or a CA certificate that issued it (the token carries the TSA's
certificate; the chain is checked, revocation is not): whoever checks chooses whom to trust.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asn1crypto import cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..errors import ConfigurationError, ModelfenceError

HASH = "sha256"
DEFAULT_TIMEOUT_S = 10.0
MAX_REPLY = 1 << 20
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


class TimestampError(ModelfenceError):
    """A timestamp could not be made, or a token does not check."""


def imprint(doc: dict[str, Any]) -> bytes:
    """SHA-256 of the bundle's signature bytes: what the TSA stamps."""
    sig = doc.get("signature")
    value = sig.get("value") if isinstance(sig, dict) else None
    if not isinstance(value, str):
        raise TimestampError("the bundle carries no signature to timestamp: sign it first")
    try:
        return hashlib.sha256(bytes.fromhex(value)).digest()
    except ValueError:
        raise TimestampError("the bundle's signature is not hex: edited") from None


def request(digest: bytes, nonce: int) -> bytes:
    """A DER TimeStampReq for a SHA-256 `digest`, asking for the TSA's certificate."""
    return bytes(tsp.TimeStampReq({
        "version": 1,
        "message_imprint": {"hash_algorithm": {"algorithm": HASH}, "hashed_message": digest},
        "nonce": nonce, "cert_req": True}).dump())


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"timestamp URL {url!r}: give an http:// or https:// URL of "
                                 "an RFC 3161 time-stamping authority")


def _post(url: str, body: bytes, timeout: float) -> bytes:
    req = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310
        "Content-Type": "application/timestamp-query",
        "Accept": "application/timestamp-reply"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (checked)
            return bytes(resp.read(MAX_REPLY))
    except urllib.error.HTTPError as exc:
        raise TimestampError(f"the time-stamping authority {url} answered HTTP {exc.code} "
                             f"{exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TimestampError(f"cannot reach the time-stamping authority {url}: "
                             f"{reason}") from None


def _status_text(info: tsp.PKIStatusInfo) -> str:
    words = [str(info["status"].native)]
    if info["status_string"].native:
        words.append("; ".join(info["status_string"].native))
    if info["fail_info"].native:
        words.append(", ".join(sorted(info["fail_info"].native)))
    return ": ".join(words)


def _tst_info(token: cms.ContentInfo) -> tuple[tsp.TSTInfo, bytes]:
    """The token's TSTInfo and its exact DER bytes (what the signed attributes digest)."""
    if token["content_type"].native != "signed_data":
        raise TimestampError("the token is not CMS SignedData")
    encap = token["content"]["encap_content_info"]
    if encap["content_type"].native != "tst_info":
        raise TimestampError("the token does not hold a TSTInfo")
    raw = encap["content"].contents
    return tsp.TSTInfo.load(raw), raw


def _iso(info: tsp.TSTInfo) -> str:
    time: datetime = info["gen_time"].native
    return time.isoformat()


def _check_imprint(info: tsp.TSTInfo, digest: bytes) -> None:
    mi = info["message_imprint"]
    if mi["hash_algorithm"]["algorithm"].native != HASH:
        raise TimestampError(f"the token's imprint uses {mi['hash_algorithm']['algorithm'].native}"
                             f", not {HASH}")
    if mi["hashed_message"].native != digest:
        raise TimestampError("the token is for a different hash: its imprint is not SHA-256 of "
                             "this bundle's signature")


def stamp(doc: dict[str, Any], url: str, *,
          timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """`doc` (signed) with a timestamp member from the TSA at `url`; TimestampError when
    the TSA cannot be reached, refuses, or answers for another hash or nonce."""
    _check_url(url)
    digest = imprint(doc)
    nonce = secrets.randbits(63)
    reply = _post(url, request(digest, nonce), timeout)
    try:
        resp = tsp.TimeStampResp.load(reply)
        status = resp["status"]["status"].native
        token = resp["time_stamp_token"]
        if status not in ("granted", "granted_with_mods"):
            raise TimestampError(f"the time-stamping authority {url} refused: "
                                 f"{_status_text(resp['status'])}")
        if not token.native:
            raise TimestampError(f"the time-stamping authority {url} granted but sent no token")
        info, _ = _tst_info(token)
        _check_imprint(info, digest)
        if info["nonce"].native != nonce:
            raise TimestampError(f"the time-stamping authority {url} answered another "
                                 "request: the nonce differs")
        time = _iso(info)
    except TimestampError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise TimestampError(f"the time-stamping authority {url} did not answer an RFC 3161 "
                             f"reply ({exc})") from None
    return {**doc, "timestamp": {"tsa": url, "token": base64.b64encode(token.dump()).decode(),
                                 "time": time, "hash": HASH}}


def stamp_or_note(doc: dict[str, Any], url: str | None, *,
                  timeout: float = DEFAULT_TIMEOUT_S) -> tuple[dict[str, Any], str | None]:
    """(`doc` stamped, None), or (`doc` with timestamp {"tsa", "error"}, why) when stamping
    failed: the signed bundle is never lost for want of a timestamp. No URL: (doc, None)."""
    if not url:
        return doc, None
    try:
        return stamp(doc, url, timeout=timeout), None
    except (TimestampError, ConfigurationError) as exc:
        return {**doc, "timestamp": {"tsa": url, "error": str(exc)}}, str(exc)


@dataclass(frozen=True)
class Checked:
    """A token that checked: the TSA's time, serial, policy and who signed it."""

    time: str
    serial: int
    policy: str
    signer: str


def load_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigurationError(f"{source}: not a PEM certificate of a time-stamping "
                                 "authority") from None


def token_of(doc: dict[str, Any]) -> tuple[cms.ContentInfo, dict[str, Any]]:
    """The token and the timestamp member; TimestampError when there is none to check."""
    ts = doc.get("timestamp")
    if not isinstance(ts, dict):
        raise TimestampError("the bundle carries no timestamp")
    if "error" in ts and "token" not in ts:
        raise TimestampError(f"the bundle carries no timestamp: requesting one from "
                             f"{ts.get('tsa')} failed ({ts['error']})")
    if ts.get("hash") != HASH:
        raise TimestampError(f"timestamp hash {ts.get('hash')!r} is not {HASH!r}")
    try:
        token = cms.ContentInfo.load(base64.b64decode(str(ts.get("token")), validate=True))
        token.native  # parse it all now, so damage is reported here  # noqa: B018
    except (binascii.Error, ValueError, TypeError) as exc:
        raise TimestampError(f"the timestamp token is damaged ({exc})") from None
    return token, ts


def _signer_matches(sid: cms.SignerIdentifier, cert: x509.Certificate) -> bool:
    if sid.name == "issuer_and_serial_number":
        parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
        return bool(sid.chosen["serial_number"].native == cert.serial_number
                    and sid.chosen["issuer"].dump() == parsed.issuer.dump())
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return False
    return bool(sid.chosen.native == ski)


def _signed_attrs(si: cms.SignerInfo, content: bytes, cert: x509.Certificate) -> bytes:
    """The DER that the TSA signed, after checking it binds the content and this cert."""
    attrs = si["signed_attrs"]
    if not attrs.native:
        raise TimestampError("the token has no signed attributes")
    by_type = {a["type"].native: a["values"] for a in attrs}
    if [v.native for v in by_type.get("content_type", [])] != ["tst_info"]:
        raise TimestampError("the token's signed content type is not TSTInfo")
    algo = si["digest_algorithm"]["algorithm"].native
    if algo not in _HASHES:
        raise TimestampError(f"the token's digest algorithm {algo} is not supported")
    if [v.native for v in by_type.get("message_digest", [])] != [
            hashlib.new(algo, content).digest()]:
        raise TimestampError("the token's content does not match its signed digest: edited")
    der = cert.public_bytes(serialization.Encoding.DER)
    for name, default in (("signing_certificate_v2", "sha256"), ("signing_certificate", "sha1")):
        for value in by_type.get(name, []):
            first = value["certs"][0]
            halg = first["hash_algorithm"]["algorithm"].native if name.endswith("v2") else default
            if first["cert_hash"].native != hashlib.new(halg or default, der).digest():
                raise TimestampError("the token names another signing certificate than the "
                                     "given one")
    raw = bytes(attrs.dump())
    return b"\x31" + raw[1:]  # signed as a SET OF, not as the [0] IMPLICIT field


def _verify_signature(si: cms.SignerInfo, data: bytes, cert: x509.Certificate) -> None:
    key = cert.public_key()
    sig = si["signature"].native
    algo = si["digest_algorithm"]["algorithm"].native
    h = _HASHES[algo]()
    sig_algo = si["signature_algorithm"].signature_algo
    try:
        if isinstance(key, rsa.RSAPublicKey) and sig_algo == "rsassa_pss":
            params = si["signature_algorithm"]["parameters"]
            key.verify(sig, data, padding.PSS(padding.MGF1(h), params["salt_length"].native), h)
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, data, padding.PKCS1v15(), h)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, data, ec.ECDSA(h))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, data)
        else:
            raise TimestampError(f"the TSA certificate's key ({type(key).__name__}) is not "
                                 "supported")
    except InvalidSignature:
        raise TimestampError("the token's signature does not hold under the given TSA "
                             "certificate") from None


def _check_cert(cert: x509.Certificate) -> None:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        raise TimestampError("the given certificate is not for time stamping (no extended "
                             "key usage)") from None
    if ExtendedKeyUsageOID.TIME_STAMPING not in eku.value:
        raise TimestampError("the given certificate is not for time stamping")
    if not eku.critical:
        raise TimestampError("the given certificate's time-stamping key usage is not marked "
                             "critical (RFC 3161 2.3)")


def _embedded(token: cms.ContentInfo) -> list[x509.Certificate]:
    """The certificates the TSA sent inside the token (we ask for them: cert_req)."""
    out = []
    for choice in token["content"]["certificates"] or []:
        if choice.name == "certificate":
            out.append(x509.load_der_x509_certificate(choice.chosen.dump()))
    return out


def _valid_at(cert: x509.Certificate, time: datetime) -> None:
    if not cert.not_valid_before_utc <= time <= cert.not_valid_after_utc:
        raise TimestampError(f"the token's time {time.isoformat()} is outside the validity of "
                             f"{cert.subject.rfc4514_string()}")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not bc.ca:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _signer(sid: cms.SignerIdentifier, trusted: list[x509.Certificate],
            embedded: list[x509.Certificate], time: datetime) -> x509.Certificate:
    """The certificate that signed: one of the `trusted` ones itself (pinned), or one the
    token carries that chains to a trusted CA through certificates it carries (at most a
    few links), every one valid at the token's time."""
    pinned = next((c for c in trusted if _signer_matches(sid, c)), None)
    if pinned is not None:
        _valid_at(pinned, time)
        return pinned
    signer = next((c for c in embedded if _signer_matches(sid, c)), None)
    if signer is None:
        raise TimestampError("the token was not signed by the given TSA certificate (and "
                             "carries no certificate of its signer)")
    current = signer
    for _ in range(5):
        _valid_at(current, time)
        anchor = next((c for c in trusted if _issued_by(current, c)), None)
        if anchor is not None:
            _valid_at(anchor, time)
            return signer
        step = next((c for c in embedded if c != current and _issued_by(current, c)), None)
        if step is None:
            break
        current = step
    raise TimestampError("the token was not signed by the given TSA certificate, nor by a "
                         "certificate issued under it")


def check(doc: dict[str, Any], certificates: list[x509.Certificate]) -> Checked:
    """The token in `doc` checked against the trusted TSA `certificates` (see the module's
    docstring); TimestampError says why it does not hold."""
    token, ts = token_of(doc)
    try:
        info, content = _tst_info(token)
        _check_imprint(info, imprint(doc))
        infos = token["content"]["signer_infos"]
        if len(infos) != 1:
            raise TimestampError(f"the token has {len(infos)} signers, not one")
        si = infos[0]
        time: datetime = info["gen_time"].native
        cert = _signer(si["sid"], certificates, _embedded(token), time)
        _check_cert(cert)
        _verify_signature(si, _signed_attrs(si, content, cert), cert)
        if ts.get("time") != time.isoformat():
            raise TimestampError(f"the bundle says it was stamped at {ts.get('time')}, the "
                                 f"token says {time.isoformat()}: edited")
        return Checked(time.isoformat(), int(info["serial_number"].native),
                       str(info["policy"].native), cert.subject.rfc4514_string())
    except TimestampError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise TimestampError(f"the timestamp token is damaged ({exc})") from None


def describe(doc: dict[str, Any]) -> str:
    """The timestamp as stated by the bundle, unchecked (for people)."""
    ts = doc.get("timestamp")
    if not isinstance(ts, dict):
        return "not timestamped"
    if "token" not in ts:
        return f"not timestamped: requesting one from {ts.get('tsa')} failed ({ts.get('error')})"
    return f"timestamped at {ts.get('time')} by {ts.get('tsa')}"

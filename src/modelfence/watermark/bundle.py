"""Evidence bundles: RFC 8785 canonical JSON signed with Ed25519, and a readable HTML page.

The signature covers the RFC 8785 (JSON Canonicalization Scheme) bytes of the bundle
without its `signature` and `timestamp` members, so any edit to what was asked, what came
back, the statistics or the times breaks it. The file itself is written as the exact
canonical bytes of the whole signed document, so a reader can also insist that the file is
byte for byte what was signed: a changed space, key order or number spelling fails too
(`file_problem`). The timestamp (RFC 3161, `timestamp`) is over the signature's bytes, so
it is added after signing and is not part of what the signature covers.

It is made with the gateway's audit checkpoint key (or one given by path) and checked with
the public key alone (`modelfence evidence verify`). The HTML file is a rendering for
people; only the JSON is signed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..audit.checkpoint import key_id
from ..errors import ConfigurationError

BUNDLE_TYPE = "modelfence.ownership.evidence"
#: An investigation's evidence from the console (a principal's alerts, the monitor's
#: explanation and audit records), signed the same way and checked by the same command.
INVESTIGATION_TYPE = "modelfence.investigation.evidence"
BUNDLE_TYPES = (BUNDLE_TYPE, INVESTIGATION_TYPE)
EDITED = "signature does not match: the bundle was edited"
NOT_CANONICAL = ("the file is not byte for byte the canonical (RFC 8785) form of its content: "
                 "it was re-formatted or edited after signing")
UNSIGNED_MEMBERS = ("signature", "timestamp")
MAX_SAFE_INT = 2**53 - 1  # RFC 8785 numbers are IEEE doubles


def plain(value: Any, where: str = "bundle") -> Any:
    """`value` as JSON that RFC 8785 can write exactly: dicts with string keys, lists, str,
    bool, None, integers within +-(2^53 - 1) and finite floats (numpy scalars become Python
    ones). Anything else is a ConfigurationError naming the member, not a silent change."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise ConfigurationError(f"{where} = {value}: integers beyond 2^53 cannot be "
                                     "written exactly in canonical JSON (RFC 8785)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"{where} = {value}: canonical JSON (RFC 8785) has no "
                                     "NaN or infinity; the bundle must hold finite numbers")
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigurationError(f"{where}: member name {k!r} is not a string")
            out[k] = plain(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return plain(item(), where)
    raise ConfigurationError(f"{where}: a {type(value).__name__} cannot be written as JSON")


def jcs(doc: Any) -> bytes:
    """The RFC 8785 bytes of `doc` (checked by `plain` first, for a clear error)."""
    return rfc8785.dumps(plain(doc))


def canonical(doc: dict[str, Any]) -> bytes:
    """The signed bytes: RFC 8785 of the bundle without its signature and timestamp."""
    return jcs({k: v for k, v in doc.items() if k not in UNSIGNED_MEMBERS})


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read signing key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigurationError(f"{path}: not a PEM private key (make one with "
                                 "`modelfence audit keygen`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path}: the signing key must be an Ed25519 private key")
    return key


def sign(doc: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """`doc` with its signature member (any old signature or timestamp is dropped: the
    timestamp is over the signature, so it cannot survive a new one)."""
    public = key.public_key()
    signed: dict[str, Any] = plain({k: v for k, v in doc.items()
                                    if k not in UNSIGNED_MEMBERS})
    signed["signature"] = {"algorithm": "Ed25519", "key_id": key_id(public),
                           "value": key.sign(canonical(signed)).hex()}
    return signed


def problem(doc: dict[str, Any], public: Ed25519PublicKey) -> str | None:
    """Why the bundle cannot be trusted under `public`, or None when its signature holds."""
    sig = doc.get("signature")
    if not isinstance(sig, dict) or not isinstance(sig.get("value"), str):
        return "the bundle carries no signature"
    expected = key_id(public)
    if sig.get("key_id") != expected:
        return f"signed by key {sig.get('key_id')}, not by the given key {expected}"
    if sig.get("algorithm") != "Ed25519":
        return f"signature algorithm {sig.get('algorithm')!r} is not Ed25519: edited"
    try:
        public.verify(bytes.fromhex(sig["value"]), canonical(doc))
    except (InvalidSignature, ValueError, ConfigurationError):
        return EDITED
    return None


def file_problem(data: bytes, doc: dict[str, Any]) -> str | None:
    """Why the file's bytes are not exactly the canonical form of `doc` (their parse)."""
    try:
        expected = jcs(doc)
    except ConfigurationError as exc:
        return f"{NOT_CANONICAL} ({exc})"
    if data == expected:
        return None
    at = next((i for i, (a, b) in enumerate(zip(data, expected, strict=False)) if a != b),
              min(len(data), len(expected)))
    return f"{NOT_CANONICAL} (first difference at byte {at})"


class Damaged(ConfigurationError):
    """The file claims to be a bundle but cannot be read as one: it was damaged or edited
    (the CLI answers exit 1, as for a bad signature, not exit 2 as for a wrong file)."""


def parse(data: bytes, source: str) -> dict[str, Any]:
    """The bundle in `data`. A file that is not a bundle at all is a ConfigurationError; one
    that names itself a bundle (its type, or a signature member) but does not parse as one
    is `Damaged`."""
    looks_like = BUNDLE_TYPE.encode() in data or b'"signature"' in data
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if looks_like:
            raise Damaged(f"{source}: damaged: not valid JSON ({exc})") from None
        raise ConfigurationError(f"{source}: not JSON (give the evidence .json file, not the "
                                 "HTML rendering)") from None
    if not isinstance(doc, dict):
        if looks_like:
            raise Damaged(f"{source}: damaged: not a JSON object")
        raise ConfigurationError(f"{source}: not a modelfence evidence bundle")
    if doc.get("type") not in BUNDLE_TYPES:
        if "signature" in doc or looks_like:
            raise Damaged(f"{source}: damaged: its type is {str(doc.get('type'))[:80]!r}, "
                          f"not {BUNDLE_TYPE!r}")
        raise ConfigurationError(f"{source}: not a modelfence evidence bundle")
    return doc


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read bundle: {exc.strerror}") from None


def read(path: Path) -> dict[str, Any]:
    return parse(read_bytes(path), str(path))


def write_json(doc: dict[str, Any], path: Path) -> None:
    """The exact RFC 8785 bytes of the whole signed document."""
    path.write_bytes(jcs(doc))


def write(doc: dict[str, Any], folder: Path, stem: str = "evidence") -> tuple[Path, Path]:
    """`stem`.json (the canonical bytes of the signed document) and `stem`.html; returns
    both paths."""
    from .report import render_html

    data = jcs(doc)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / f"{stem}.json", folder / f"{stem}.html"
    json_path.write_bytes(data)
    html_path.write_text(render_html(doc), encoding="utf-8")
    return json_path, html_path

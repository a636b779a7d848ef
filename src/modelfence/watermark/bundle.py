"""Evidence bundles: canonical JSON signed with Ed25519, and a readable HTML rendering.

The signature covers the canonical JSON (sorted keys, orjson's exact float text) of the
whole bundle except its `signature` member, so any edit to what was asked, what came back,
the statistics or the timestamps breaks it. It is made with the gateway's audit checkpoint
key (or one given by path) and checked with the public key alone
(`modelfence evidence verify`). The HTML file is a rendering for people; only the JSON is
signed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..audit.checkpoint import key_id
from ..errors import ConfigurationError

BUNDLE_TYPE = "modelfence.ownership.evidence"
EDITED = "signature does not match: the bundle was edited"


def canonical(doc: dict[str, Any]) -> bytes:
    """The signed bytes: the bundle without its signature, keys sorted."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


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
    """`doc` with its signature member."""
    public = key.public_key()
    signed = {k: v for k, v in doc.items() if k != "signature"}
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
    try:
        public.verify(bytes.fromhex(sig["value"]), canonical(doc))
    except (InvalidSignature, ValueError):
        return EDITED
    return None


def read(path: Path) -> dict[str, Any]:
    try:
        doc = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read bundle: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        raise ConfigurationError(f"{path}: not JSON (give the evidence .json file, not the "
                                 "HTML rendering)") from None
    if not isinstance(doc, dict) or doc.get("type") != BUNDLE_TYPE:
        raise ConfigurationError(f"{path}: not a modelfence evidence bundle")
    return doc


def write(doc: dict[str, Any], folder: Path, stem: str = "evidence") -> tuple[Path, Path]:
    """`stem`.json (signed, indented for reading; the signature is over the canonical form)
    and `stem`.html; returns both paths."""
    from .report import render_html

    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / f"{stem}.json", folder / f"{stem}.html"
    json_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    html_path.write_text(render_html(doc))
    return json_path, html_path

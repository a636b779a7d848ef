"""Signed checkpoints: an Ed25519 signature over (position, hash) of the chain's head.

A hash chain alone shows that rows were changed, removed or reordered, but not that the
newest rows were cut off: a shorter chain is still a valid chain. A checkpoint says
"the chain had `seq` rows and row `seq` hashed to `hash`" under a key the attacker of
the database does not hold, so removing rows a checkpoint covers is caught, and so is
re-hashing the chain before it. Verifying needs only the public key, so auditors can
check a log without being able to sign one.

The signed message is canonical JSON (sorted keys)::

    {"hash": "<hex>", "key_id": "<16 hex>", "seq": N, "time_us": T,
     "type": "modelfence.audit.checkpoint", "v": 1}
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigurationError

_TYPE = "modelfence.audit.checkpoint"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: bytes
    ts_us: int
    key_id: str
    signature: bytes

    def message(self) -> bytes:
        return orjson.dumps({"v": 1, "type": _TYPE, "seq": self.seq, "hash": self.hash.hex(),
                             "time_us": self.ts_us, "key_id": self.key_id},
                            option=orjson.OPT_SORT_KEYS)

    def to_dict(self) -> dict[str, Any]:
        return {"type": _TYPE, "seq": self.seq, "hash": self.hash.hex(), "time_us": self.ts_us,
                "key_id": self.key_id, "signature": self.signature.hex()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Checkpoint:
        """Parse an exported or logged checkpoint (an anchor); ValueError when malformed."""
        try:
            return cls(int(d["seq"]), bytes.fromhex(d["hash"]), int(d["time_us"]),
                       str(d["key_id"]), bytes.fromhex(d["signature"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a checkpoint: {exc.__class__.__name__} {exc}") from None

    def problem(self, public: Ed25519PublicKey | None) -> str | None:
        """Why this checkpoint cannot be trusted under `public`, or None when it can."""
        return signature_problem(public, self.key_id, self.signature, self.message())


class Signer:
    """Holds the private key in memory only; it is never logged, printed or stored."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    def sign(self, seq: int, hash_: bytes, ts_us: int) -> Checkpoint:
        unsigned = Checkpoint(seq, hash_, ts_us, self.key_id, b"")
        return Checkpoint(seq, hash_, ts_us, self.key_id, self.sign_message(unsigned.message()))

    def sign_message(self, message: bytes) -> bytes:
        """An Ed25519 signature over canonical bytes (checkpoints, sealed-segment manifests)."""
        return self._private.sign(message)


def signature_problem(public: Ed25519PublicKey | None, signer_id: str, signature: bytes,
                      message: bytes) -> str | None:
    """Why a signature made by key `signer_id` does not verify under `public`, or None."""
    if public is None:
        return None
    expected = key_id(public)
    if signer_id != expected:
        return f"signed by key {signer_id}, not by the given key {expected}"
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return "its signature is not valid (forged or altered)"
    return None


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """Sign the head every `every` rows, or when `interval_s` passed since the last one."""

    every: int = 1000
    interval_s: float = 60.0

    def due(self, head_seq: int, last: Checkpoint | None, now_us: int) -> bool:
        last_seq, last_us = (last.seq, last.ts_us) if last else (0, 0)
        if head_seq <= last_seq:
            return False
        return (head_seq - last_seq >= self.every
                or now_us - last_us >= self.interval_s * 1_000_000)


def _read_pem(path: Path, what: str) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        pass
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigurationError(f"{path}: not a PEM key (make one with "
                                 "`modelfence audit keygen`)") from None


def load_signer(path: Path) -> Signer:
    key = _read_pem(path, "audit checkpoint key")
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path}: audit checkpoint key must be an Ed25519 private key")
    return Signer(key)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The verifying key from a public PEM, or derived from a private one."""
    key = _read_pem(path, "audit public key")
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"{path}: audit checkpoint key must be an Ed25519 key")
    return key


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (private file mode 0600, never overwritten); return its key id."""
    for p in (private_path, public_path):
        if p.exists():
            raise ConfigurationError(f"{p} exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(private.public_key())

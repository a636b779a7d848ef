"""The keyed function behind the watermark, and the key that seals recorded inputs.

For an input row (its float32 bytes, as the OIP wire carries it for these models),
``HMAC-SHA256(secret, "mf-watermark" || row)`` gives 32 bytes: the first 8 read as a
number ``u`` uniform in [0, 1), the next 8 choose the decoy. A row is *marked* when
``u < fraction`` and is a *control* when ``u >= 1 - fraction`` (recorded, answered
truthfully): both are keyed samples of the same caller's queries. The decoy is uniform
among the classes other than the model's top-1, so for anyone without the secret it is
a fair draw; that is what the ownership test relies on. The same row always gives the same
``u`` and decoy, so asking twice returns the same answer.

A `Keyring` holds several secrets by id: the active one marks new answers, the others
(retired) still re-derive old decoys, so evidence survives a rotation. Records carry the
key id. `EvidenceCipher` encrypts recorded inputs with AES-256-GCM, bound to their digest.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from .settings import WatermarkSettings

Array = np.ndarray[Any, Any]
_PREFIX = b"mf-watermark\x00"
_TWO64 = float(2**64)
MIN_SECRET = 32


def row_bytes(inputs: Any) -> Iterator[bytes]:
    """Each row of `inputs` as little-endian float32 bytes: the canonical form of an input."""
    rows = np.ascontiguousarray(np.asarray(inputs, dtype="<f4").reshape(len(inputs), -1))
    data, step = rows.tobytes(), rows.shape[1] * 4
    for start in range(0, len(data), step) if step else ():
        yield data[start:start + step]


def input_digest(row: bytes) -> str:
    return hashlib.sha256(row).hexdigest()


@dataclass(frozen=True, slots=True)
class Draw:
    """What the keyed function says about one row."""

    u: float
    pick: int  # 64 bits that choose the decoy

    def decoy(self, top: int, n_classes: int) -> int:
        """A class other than `top`, uniform among the other n-1 (bias < 2^-60)."""
        return (top + 1 + self.pick % (n_classes - 1)) % n_classes


class WatermarkKey:
    """One secret, never printed; `draw` is the keyed function."""

    def __init__(self, key_id: str, secret: bytes) -> None:
        if len(secret) < MIN_SECRET:
            raise ConfigurationError(f"watermark key {key_id}: the secret must be at least "
                                     f"{MIN_SECRET} bytes")
        self.id = key_id
        self._secret = secret

    def draw(self, row: bytes) -> Draw:
        d = hmac.new(self._secret, _PREFIX + row, hashlib.sha256).digest()
        return Draw(int.from_bytes(d[:8], "big") / _TWO64, int.from_bytes(d[8:16], "big"))

    def derive(self, purpose: bytes) -> bytes:
        """A sub-key for another keyed use of this secret (the fingerprint set)."""
        return hmac.new(self._secret, b"mf-derive\x00" + purpose, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"WatermarkKey({self.id!r})"


class Keyring:
    """Watermark secrets by id; `active` marks new answers."""

    def __init__(self, keys: list[WatermarkKey], active: str | None = None) -> None:
        if not keys:
            raise ConfigurationError("watermark: at least one key is needed")
        self._keys = {k.id: k for k in keys}
        if len(self._keys) != len(keys):
            raise ConfigurationError("watermark: key ids must be unique")
        self.active = self._keys[active] if active is not None else keys[-1]

    @classmethod
    def from_settings(cls, settings: WatermarkSettings) -> Keyring:
        keys = [WatermarkKey(k.id, _read_secret(k.secret_file, f"watermark key {k.id}"))
                for k in settings.keys]
        return cls(keys, settings.active_id)

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def get(self, key_id: str) -> WatermarkKey:
        try:
            return self._keys[key_id]
        except KeyError:
            raise ConfigurationError(
                f"evidence was marked with watermark key {key_id!r}, which the configuration "
                f"no longer lists (keys: {', '.join(self._keys)}); keep retired keys in "
                "watermark.keys") from None


def _read_secret(path: Path, what: str) -> bytes:
    try:
        raw = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read {what}: {exc.strerror}") from None
    if len(raw) < MIN_SECRET:
        raise ConfigurationError(f"{path}: {what} must be at least {MIN_SECRET} characters")
    return raw


class EvidenceCipher:
    """AES-256-GCM over a recorded input; the digest is the associated data."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigurationError("evidence key must be 32 bytes")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"mf-evidence-key\x00" + key).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: Path) -> EvidenceCipher:
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ConfigurationError(f"{path}: cannot read evidence key: {reason}") from None
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ConfigurationError(f"{path}: evidence key must be 64 hex characters "
                                     "(`modelfence watermark keygen --evidence-key`)")
        return cls(key)

    def seal(self, plain: bytes, digest: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plain, digest.encode())

    def open(self, blob: bytes, digest: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(blob[:12], blob[12:], digest.encode())
        except InvalidTag:
            raise ConfigurationError(f"evidence record {digest[:16]}: the input does not "
                                     "decrypt (wrong evidence key, or the record was "
                                     "altered)") from None


def write_new_key(path: Path, *, hex_bytes: int = 32) -> None:
    """A fresh random key as hex text, mode 0600; never overwrites a file."""
    if path.exists():
        raise ConfigurationError(f"{path} exists; refusing to overwrite a key")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(hex_bytes) + "\n")

"""Key providers: who holds the key-encryption key (KEK) that wraps each artifact's data key.

- `KeyringProvider`: a local JSON keyring file (mode 0600) of named 256-bit KEKs; the data
  key is wrapped with AES key wrap (RFC 3394), so a wrong KEK is detected on unwrap.
- `Pkcs11Provider`: an AES KEK that never leaves a PKCS#11 token (HSM, SoftHSM2); the data
  key is sealed with CKM_AES_GCM inside the token. Needs the `artifacts` extra
  (python-pkcs11), imported lazily.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from .errors import DecryptionError, KeyProviderError


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with a KEK it holds."""

    def describe(self) -> dict[str, str]:
        """Public, non-secret description stored in the artifact header (provider, key id)."""
        ...

    def wrap(self, dek: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, described: dict[str, Any], *, name: str) -> bytes: ...


def provider_for_header(described: dict[str, Any]) -> KeyProvider:
    raise KeyProviderError(
        f"no key provider given; the artifact needs {described.get('provider', '?')} key "
        f"{described.get('key_id', described.get('key_label', '?'))!r}")


class KeyringProvider:
    """Named KEKs in a local JSON file: {"default": id, "keys": {id: base64 key}}."""

    def __init__(self, path: str | Path, key_id: str | None = None) -> None:
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
            self._keys = {k: base64.b64decode(v) for k, v in data["keys"].items()}
            self.key_id = key_id or str(data["default"])
        except FileNotFoundError:
            raise KeyProviderError(f"{self.path}: keyring not found") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyProviderError(f"{self.path}: not a valid keyring ({exc})") from None
        if self.key_id not in self._keys:
            raise KeyProviderError(f"{self.path}: no key {self.key_id!r} in keyring")
        if any(len(k) != 32 for k in self._keys.values()):
            raise KeyProviderError(f"{self.path}: keyring keys must be 32 bytes")

    @staticmethod
    def create(path: str | Path, key_id: str = "default") -> KeyringProvider:
        """Add a fresh random KEK (made the default) to a keyring, creating it with mode 0600."""
        path = Path(path)
        data: dict[str, Any] = {"keys": {}}
        if path.exists():
            data = json.loads(path.read_text())
            if key_id in data["keys"]:
                raise KeyProviderError(f"{path}: key {key_id!r} already exists")
        data["keys"][key_id] = base64.b64encode(secrets.token_bytes(32)).decode()
        data["default"] = key_id
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        return KeyringProvider(path)

    def describe(self) -> dict[str, str]:
        return {"provider": "keyring", "key_id": self.key_id}

    def wrap(self, dek: bytes) -> bytes:
        return aes_key_wrap(self._keys[self.key_id], dek)

    def unwrap(self, wrapped: bytes, described: dict[str, Any], *, name: str) -> bytes:
        key_id = str(described.get("key_id", ""))
        if described.get("provider") != "keyring":
            raise KeyProviderError(
                f"{name}: encrypted for provider {described.get('provider')!r}, not keyring")
        kek = self._keys.get(key_id)
        if kek is None:
            raise KeyProviderError(f"{name}: key {key_id!r} is not in keyring {self.path}")
        try:
            return aes_key_unwrap(kek, wrapped)
        except (InvalidUnwrap, ValueError):
            raise DecryptionError(f"{name}: wrong key (data key does not unwrap)") from None


class Pkcs11Provider:
    """An AES-256 KEK held in a PKCS#11 token, found by label."""

    def __init__(self, module: str | Path, *, token_label: str, pin: str,
                 key_label: str) -> None:
        try:
            import pkcs11
        except ImportError:
            raise KeyProviderError(
                "PKCS#11 needs python-pkcs11: pip install 'modelfence[artifacts]'") from None
        self._pkcs11 = pkcs11
        self.token_label, self.key_label, self._pin = token_label, key_label, pin
        try:
            self._token = pkcs11.lib(str(module)).get_token(token_label=token_label)
        except Exception as exc:
            raise KeyProviderError(
                f"PKCS#11 token {token_label!r} in {module}: {type(exc).__name__}") from None

    def _with_key(self, op: str, fn: Any, *, create: bool = False) -> bytes:
        p = self._pkcs11
        try:
            with self._token.open(user_pin=self._pin, rw=create) as session:
                try:
                    key = session.get_key(object_class=p.ObjectClass.SECRET_KEY,
                                          key_type=p.KeyType.AES, label=self.key_label)
                except p.NoSuchKey:
                    if not create:
                        raise KeyProviderError(
                            f"PKCS#11 token {self.token_label!r} has no AES key "
                            f"{self.key_label!r}") from None
                    key = session.generate_key(p.KeyType.AES, 256, label=self.key_label,
                                               store=True)
                return bytes(fn(session, key))
        except (KeyProviderError, DecryptionError):
            raise
        except Exception as exc:
            raise KeyProviderError(
                f"PKCS#11 {op} with key {self.key_label!r} failed: {type(exc).__name__}"
            ) from None

    def ensure_key(self) -> None:
        """Generate the KEK inside the token if it does not exist yet."""
        self._with_key("key generation", lambda s, k: b"", create=True)

    def describe(self) -> dict[str, str]:
        return {"provider": "pkcs11", "token": self.token_label, "key_label": self.key_label}

    def wrap(self, dek: bytes) -> bytes:
        p = self._pkcs11
        aad = self.key_label.encode()

        def seal(session: Any, key: Any) -> bytes:
            nonce = session.generate_random(96)
            ct = key.encrypt(dek, mechanism=p.Mechanism.AES_GCM,
                             mechanism_param=p.mechanisms.GCMParams(nonce, aad, 128))
            return bytes(nonce) + bytes(ct)

        return self._with_key("wrap", seal)

    def unwrap(self, wrapped: bytes, described: dict[str, Any], *, name: str) -> bytes:
        p = self._pkcs11
        if described.get("provider") != "pkcs11":
            raise KeyProviderError(
                f"{name}: encrypted for provider {described.get('provider')!r}, not pkcs11")
        if described.get("key_label") != self.key_label:
            raise KeyProviderError(
                f"{name}: needs PKCS#11 key {described.get('key_label')!r}, "
                f"not {self.key_label!r}")

        def open_(session: Any, key: Any) -> bytes:
            try:
                return bytes(key.decrypt(
                    wrapped[12:], mechanism=p.Mechanism.AES_GCM,
                    mechanism_param=p.mechanisms.GCMParams(wrapped[:12],
                                                           self.key_label.encode(), 128)))
            except Exception:
                raise DecryptionError(
                    f"{name}: wrong key (data key does not unwrap in the token)") from None

        return self._with_key("unwrap", open_)

"""Shared state chosen by URL, like `limits.storage_from_string`: one factory, one error."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .keys import KeyStore, MemoryKeyStore, PostgresKeyStore, SqliteKeyStore

__all__ = ["KeyStore", "key_store_from_url"]


def key_store_from_url(url: str) -> KeyStore:
    """memory://, sqlite:///relative/or////absolute.db, postgresql://user@host/db."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryKeyStore()
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:///")
        if not path or path == url:
            raise ConfigurationError(f"stores.keys: sqlite URL needs a path: {_redact(url)}")
        return SqliteKeyStore(Path(path))
    if scheme in ("postgresql", "postgres"):
        return PostgresKeyStore(url)
    raise ConfigurationError(
        f"stores.keys: unknown store scheme {scheme!r} in {_redact(url)}; "
        "use memory://, sqlite:///PATH or postgresql://USER@HOST/DB")


def _redact(url: str) -> str:
    """A URL fit for an error message: the password replaced."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url

"""Shared state chosen by URL, like `limits.storage_from_string`: one registry, one error.

`registry.StoreKind` is the one way from a URL to a store; each kind is declared next to
its stores (`KEY_STORES` here, `BUDGET_STORES`, `EVIDENCE_STORES`, `AUDIT_STORES`,
`AUDIT_SINKS` in their packages).
"""

from __future__ import annotations

from .keys import KeyStore, MemoryKeyStore, PostgresKeyStore, SqliteKeyStore
from .registry import Scheme, StoreKind, memory, postgresql, sqlite

__all__ = ["KEY_STORES", "KeyStore", "Scheme", "StoreKind", "key_store_from_url"]

#: API keys: memory://, sqlite:///relative/or////absolute.db, postgresql://user@host/db.
KEY_STORES: StoreKind[KeyStore] = StoreKind(
    "stores.keys", memory(MemoryKeyStore), sqlite(SqliteKeyStore),
    postgresql(PostgresKeyStore))

key_store_from_url = KEY_STORES.open

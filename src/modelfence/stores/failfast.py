"""Fail fast while a store is down, instead of holding every client for a full timeout.

After a failed call, further calls are refused at once for `hold_s`; the first call after
that tries the store again, so recovery is noticed within `hold_s` of the store returning.
"""

from __future__ import annotations

import time

from ..errors import StoreError


class FailFast:
    def __init__(self, store: str, *, hold_s: float = 0.5) -> None:
        self._store = store
        self._hold = hold_s
        self._until = 0.0

    def check(self) -> None:
        """Raise at once if the store failed less than `hold_s` ago."""
        if time.monotonic() < self._until:
            raise StoreError(f"{self._store} store unavailable (failed moments ago)",
                             store=self._store)

    def failed(self) -> None:
        self._until = time.monotonic() + self._hold

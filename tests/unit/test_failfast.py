"""While a store is down, requests are refused at once instead of each waiting a timeout."""

from __future__ import annotations

import time

import pytest

from modelfence.errors import StoreError
from modelfence.stores.failfast import FailFast


def test_refuses_for_the_hold_then_lets_a_retry_through() -> None:
    gate = FailFast("keys", hold_s=0.2)
    gate.check()  # healthy: nothing raised
    gate.failed()
    with pytest.raises(StoreError) as info:
        gate.check()
    assert info.value.store == "keys"
    time.sleep(0.25)
    gate.check()  # the next call may try the store again


async def test_postgres_key_store_fails_fast_after_a_failure() -> None:
    from modelfence.stores import key_store_from_url

    store = key_store_from_url("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    store._pool = object()  # type: ignore[attr-defined]  # "open", but nothing answers
    with pytest.raises(StoreError):
        await store.get("0" * 16)
    started = time.monotonic()
    with pytest.raises(StoreError, match="failed moments ago"):
        await store.get("0" * 16)
    assert time.monotonic() - started < 2.0  # well short of the 3 s pool timeout

"""A replica that restarts while the shared pin store is down keeps the pins it last read
(from its state_dir), so an outage never lifts an operator's pin there."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from modelfence.monitor.pins import Pin, PinBook

DOWN = "redis://127.0.0.1:9/0"  # discard port: nothing listens


async def test_a_replica_restarted_during_an_outage_keeps_the_pins_it_read(
        redis_url: str, tmp_path: Path) -> None:
    prefix = f"test-pins-{uuid.uuid4().hex[:8]}:"
    console = PinBook(shared=redis_url, prefix=prefix)
    replica = PinBook(shared=redis_url, prefix=prefix, state_dir=tmp_path)
    await console.start()
    await replica.start()
    try:
        await console.put(Pin("m", "mallory", "labels", 0.5, time.time() + 600, "ops"))
        await replica.refresh()  # its loop's read, every second
        assert replica.floor("m", "mallory") == 0.5
        await replica.stop()
        restarted = PinBook(shared=DOWN, prefix=prefix, state_dir=tmp_path)
        await restarted.start()  # the shared store cannot be read
        try:
            assert restarted.floor("m", "mallory") == 0.5
        finally:
            await restarted.stop()
    finally:
        await console._shared("delete", f"{prefix}pins")
        await console.stop()

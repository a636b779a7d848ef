"""What the investigation pages read and change in the monitor: the ranking (`Monitor.top`)
and operators' pins (`PinBook`, alone and shared through a real Redis), and the shaping
guard keeping a pin's band under a policy's looser one."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfence.errors import BadRequest
from modelfence.monitor.pins import Pin, PinBook
from modelfence.monitor.score import Monitor, MonitorSettings
from modelfence.monitor.summary import Summary
from modelfence.shaping.base import LabelOnly, Rounding
from modelfence.shaping.guard import Band, ShapingGuard

Array = np.ndarray[Any, Any]


RNG = np.random.default_rng(0)
CENTRES = RNG.normal(0, 1, size=(4, 8))
WEIGHTS = RNG.normal(0, 1, size=(8, 4))


def _natural(n: int, rng: np.random.Generator) -> Array:
    return CENTRES[rng.integers(0, 4, n)] + rng.normal(0, 0.3, size=(n, 8))


def _proba(x: Array) -> Array:
    logits = x @ WEIGHTS
    p = np.exp(logits - logits.max(1, keepdims=True))
    out: Array = p / p.sum(1, keepdims=True)
    return out


def _monitor() -> Monitor:
    x = _natural(600, np.random.default_rng(5))
    return Monitor(Summary.fit(x, _proba(x)), MonitorSettings(min_dwell_s=0.0))


def _feed(monitor: Monitor, who: str, rows: Array) -> None:
    monitor.observe(who, rows, _proba(rows), now=1000.0)


def test_top_is_the_head_of_a_full_sort_and_keeps_only_what_it_is_told() -> None:
    monitor = _monitor()
    rng = np.random.default_rng(1)
    for i in range(12):  # natural rows, and from none to many wild ones: a spread of risks
        wild = rng.uniform(-4, 4, size=(2 * i, 8))
        _feed(monitor, f"p{i}", np.concatenate([_natural(30, rng), wild]))
    everyone = sorted(((name, monitor.risk(name)) for name in (f"p{i}" for i in range(12))),
                      key=lambda nr: nr[1].score, reverse=True)
    assert len({r.score for _, r in everyone}) >= 5  # the ranking is not trivial
    assert [n for n, _ in monitor.top("principal", 5)] == [n for n, _ in everyone[:5]]
    assert len(monitor.top("principal", 50)) == 12 == monitor.count("principal")
    odd = monitor.top("principal", 3, keep=lambda n: int(n[1:]) % 2 == 1)
    assert [n for n, _ in odd] == [n for n, _ in everyone if int(n[1:]) % 2 == 1][:3]
    assert monitor.top("tenant", 5) == []


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_pin_is_a_floor_until_it_ends_or_is_lifted(tmp_path: Path) -> None:
    clock = Clock()
    book = PinBook(state_dir=tmp_path, clock=clock)
    await book.start()
    assert book.floor("m", "mallory") == 0.0
    await book.put(Pin("m", "mallory", "labels", 0.5, clock.now + 60, "admin"))
    assert book.floor("m", "mallory") == 0.5 and book.floor("m", "other") == 0.0
    assert book.floor("other-model", "mallory") == 0.0
    # a restart keeps it (state_dir), and it ends at its time
    again = PinBook(state_dir=tmp_path, clock=clock)
    await again.start()
    assert again.get("m", "mallory") == book.get("m", "mallory")
    clock.now += 61
    assert book.floor("m", "mallory") == 0.0 and book.get("m", "mallory") is None
    await book.put(Pin("m", "mallory", "labels", 0.5, clock.now + 60, "admin"))
    assert await book.remove("m", "mallory") and book.floor("m", "mallory") == 0.0
    assert not await book.remove("m", "mallory")
    with pytest.raises(BadRequest):  # past its end already, or far too long
        await book.put(Pin("m", "x", "labels", 0.5, clock.now - 1, "admin"))
    with pytest.raises(BadRequest):
        await book.put(Pin("m", "x", "labels", 0.5, clock.now + 400 * 86400, "admin"))
    await book.stop()
    await again.stop()


async def test_a_disk_that_refuses_the_pins_file_does_not_lose_the_pin(tmp_path: Path) -> None:
    clock = Clock()
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the state_dir should be")
    book = PinBook(state_dir=blocked, clock=clock)
    await book.put(Pin("m", "mallory", "labels", 0.5, clock.now + 60, "admin"))
    assert book.floor("m", "mallory") == 0.5  # kept in memory, the failure only logged


async def test_a_pin_reaches_every_replica_through_the_shared_store(redis_url: str) -> None:
    prefix = f"test-pins-{uuid.uuid4().hex[:8]}:"
    one = PinBook(shared=redis_url, prefix=prefix)
    two = PinBook(shared=redis_url, prefix=prefix)
    await one.start()
    await two.start()
    try:
        await one.put(Pin("m", "mallory", "labels", 0.5, one._clock() + 60, "admin"))
        assert one.floor("m", "mallory") == 0.5  # at once where it was made
        await two.refresh()  # what its loop does every second
        assert two.floor("m", "mallory") == 0.5
        await one.remove("m", "mallory")
        await two.refresh()
        assert two.floor("m", "mallory") == 0.0
        # an ended pin is dropped from the shared store by the next replica that reads it
        clock = Clock()
        three = PinBook(shared=redis_url, prefix=prefix, clock=clock)
        await three.put(Pin("m", "eve", "labels", 0.5, clock.now + 5, "admin"))
        clock.now += 6
        await three.refresh()
        assert await one._shared("hlen", f"{prefix}pins") == 0
        await three.stop()
    finally:
        await one._shared("delete", f"{prefix}pins")
        await one.stop()
        await two.stop()


def test_the_shaping_guard_never_goes_below_a_pin() -> None:
    bands = [Band("full", 0.0, Rounding(6)), Band("reduced", 0.3, Rounding(2)),
             Band("labels", 0.5, LabelOnly())]
    guard = ShapingGuard({"m": bands})
    assert guard.choose("m", 0.1, ()).name == "full"  # type: ignore[union-attr]
    assert guard.choose("m", 0.1, (), 0.5).name == "labels"  # type: ignore[union-attr]
    # a policy's pin to full answers does not lift an operator's pin
    assert guard.choose("m", 0.1, ("full",), 0.3).name == "reduced"  # type: ignore[union-attr]
    # and a pin never loosens: a riskier caller keeps its stricter band
    assert guard.choose("m", 0.9, (), 0.3).name == "labels"  # type: ignore[union-attr]
    assert guard.choose("m", 0.1, ("labels",), 0.3).name == "labels"  # type: ignore[union-attr]

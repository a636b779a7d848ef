"""memory:// rate limits decide as `limits`' own memory storage does, hit for hit.

The same random hits (costs, callers, clock steps) go to `LocalWindows` and to `limits.aio`
with its MemoryStorage, on one fake clock; every grant or refusal, and the window stats a
refusal reports, must be the same. Also: memory stays bounded by the callers seen lately.
"""

from __future__ import annotations

import random
import time

import pytest
from limits import parse
from limits.aio import storage as limits_storage
from limits.aio import strategies

from modelfence.quota.local import LocalWindows

STRATEGIES: dict[str, type[strategies.RateLimiter]] = {
    "moving-window": strategies.MovingWindowRateLimiter,
    "fixed-window": strategies.FixedWindowRateLimiter,
    "sliding-window-counter": strategies.SlidingWindowCounterRateLimiter}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.123

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("seed", range(4))
async def test_same_decisions_as_limits_memory_storage(monkeypatch: pytest.MonkeyPatch,
                                                       strategy: str, seed: int) -> None:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    rng = random.Random(seed)
    theirs = STRATEGIES[strategy](limits_storage.MemoryStorage())
    ours = LocalWindows(strategy)
    items = [parse("5/second"), parse("7/10 seconds"), parse("12/minute")]
    callers = ["alice", "bob", "carol"]
    granted = refused = 0
    for step in range(3000):
        # small steps, some landing exactly on window edges (whole and tenth seconds)
        clock.now += rng.choice([0.0, 0.0, 0.05, 0.1, 0.3, 1.0, 2.5, 10.0])
        item = rng.choice(items)
        who = rng.choice(callers)
        cost = rng.choice([1, 1, 1, 2, 4, 10])
        want = await theirs.hit(item, "principal", who, cost=cost)
        key = (("principal", who), (item.amount, item.multiples, item.GRANULARITY.name))
        got = ours.hit(key, item.amount, item.get_expiry(), cost)
        assert got == want, f"step {step}: {strategy} {item} {who} cost {cost}"
        if got:
            granted += 1
            continue
        refused += 1
        stats = ours.stats(key, item.amount, item.get_expiry())
        expected = await theirs.get_window_stats(item, "principal", who)
        assert stats.remaining == expected.remaining, f"step {step}"
        if strategy != "moving-window" or expected.remaining < item.amount:
            # limits reports the reset of an empty moving window from a stale entry
            assert stats.reset_time == pytest.approx(expected.reset_time), f"step {step}"
    assert granted > 300 and refused > 300  # both outcomes were exercised


def test_windows_of_callers_gone_quiet_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    for strategy in STRATEGIES:
        windows = LocalWindows(strategy)
        for i in range(5000):  # 5000 callers, one hit each
            windows.hit(("p", i), 10, 60, 1)
        assert len(windows) >= 5000
        clock.now += 180  # every window has run out
        for _ in range(5000):  # one caller now: the sweeps drop the others
            windows.hit(("p", "one"), 10**9, 60, 1)
        assert len(windows) <= 2, strategy


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown rate limit strategy"):
        LocalWindows("leaky-bucket")

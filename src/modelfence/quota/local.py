"""Rate-limit windows for one process (`memory://`), with the decisions of `limits`' own.

`limits.aio`'s MemoryStorage takes an asyncio lock per hit and, after every hit, schedules
a task that walks every key and hands each one's list to a worker thread
(`asyncio.to_thread`) to find its expired entries: measured here at ~100 µs of CPU per
check once the event loop turns between requests, against ~20 µs when it does not
(bench/guard_cpu.py micro). One event loop needs neither the lock nor the thread: these
windows are plain dicts, changed without awaiting, so no other request can run in between.

Each strategy decides as `limits`' memory storage does (tests/unit/test_quota_local.py
replays random hits against both):

- moving window: a hit of cost c is granted when the entries of the last `expiry` seconds
  (an entry counts while `now - expiry <= its time`) plus c stay within the limit;
- fixed window: a counter started by its first hit and dropped `expiry` seconds later;
  every hit adds its cost, granted or not, and is granted while the sum is within the limit;
- sliding-window counter: the previous window's count, weighted by how much of it is still
  inside the last `expiry` seconds, plus the current one.

Expired windows go when next touched, and in a sweep that runs once as many hits have
happened as there were keys at the last sweep, so memory follows the callers seen lately
and a sweep costs O(1) per hit.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable
from math import floor, inf
from typing import NamedTuple

_MIN_SWEEP_EVERY = 1024  # hits between sweeps at least (a sweep walks every key)


class WindowStats(NamedTuple):
    """When the window frees capacity again (Unix seconds), and how much is left."""

    reset_time: float
    remaining: int


class _Moving:
    """One key's moving window: (time, cost) entries oldest first, and their sum."""

    __slots__ = ("entries", "expiry", "total")

    def __init__(self, expiry: int) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.expiry = expiry  # a key belongs to one limit: its window length never changes
        self.total = 0

    def trim(self, cutoff: float) -> None:
        entries = self.entries
        while entries and entries[0][0] < cutoff:
            self.total -= entries.popleft()[1]


class LocalWindows:
    """Every strategy's windows for one process; keys are any hashable (a tuple here)."""

    def __init__(self, strategy: str) -> None:
        if strategy not in ("moving-window", "fixed-window", "sliding-window-counter"):
            raise ValueError(f"unknown rate limit strategy {strategy!r}")
        self.strategy = strategy
        self._moving: dict[Hashable, _Moving] = {}
        self._counts: dict[Hashable, int] = {}
        self._expires: dict[Hashable, float] = {}
        self._hits = 0
        self._sweep_at = _MIN_SWEEP_EVERY

    def __len__(self) -> int:
        return len(self._moving) + len(self._counts)

    def hit(self, key: Hashable, limit: int, expiry: int, cost: int = 1) -> bool:
        """Take `cost` from the window of `key` if the limit allows it."""
        self._hits += 1
        if self._hits >= self._sweep_at:
            self._sweep()
        if self.strategy == "moving-window":
            return self._hit_moving(key, limit, expiry, cost)
        if self.strategy == "fixed-window":
            return self._incr(key, expiry, cost) <= limit
        return self._hit_sliding(key, limit, expiry, cost)

    def stats(self, key: Hashable, limit: int, expiry: int) -> WindowStats:
        now = time.time()
        if self.strategy == "moving-window":
            window = self._moving.get(key)
            if window is None:
                return WindowStats(now + expiry, limit)
            cutoff = now - expiry
            window.trim(cutoff)
            # as limits reports it: an entry exactly `expiry` old no longer counts here
            used, oldest = window.total, now
            for when, cost in window.entries:
                if when > cutoff:
                    oldest = when
                    break
                used -= cost
            return WindowStats(oldest + expiry, limit - used)
        if self.strategy == "fixed-window":
            return WindowStats(self._expires.get(key, now), max(0, limit - self._get(key, now)))
        prev, prev_ttl, current, current_ttl = self._sliding(key, expiry, now)
        remaining = max(0, limit - floor(prev * prev_ttl / expiry + current))
        if not (prev or current):
            return WindowStats(now, remaining)
        prev_reset, current_reset = inf, inf
        if prev:
            prev_reset = prev_ttl % (expiry / prev)
        if current:
            current_reset = current_ttl % expiry
        return WindowStats(now + min(prev_reset, current_reset), remaining)

    def _hit_moving(self, key: Hashable, limit: int, expiry: int, cost: int) -> bool:
        if cost > limit:
            return False
        now = time.time()
        window = self._moving.get(key)
        if window is None:
            window = self._moving[key] = _Moving(expiry)
        else:
            window.trim(now - expiry)
        if window.total + cost > limit:
            return False
        window.entries.append((now, cost))
        window.total += cost
        return True

    def _get(self, key: Hashable, now: float) -> int:
        if self._expires.get(key, 0.0) <= now:
            self._counts.pop(key, None)
            self._expires.pop(key, None)
            return 0
        return self._counts.get(key, 0)

    def _incr(self, key: Hashable, expiry: float, amount: int) -> int:
        now = time.time()
        count = self._get(key, now) + amount
        self._counts[key] = count
        if count == amount:
            self._expires[key] = now + expiry
        return count

    def _sliding(self, key: Hashable, expiry: int, now: float
                 ) -> tuple[int, float, int, float]:
        prev = self._get((key, int((now - expiry) / expiry)), now)
        current = self._get((key, int(now / expiry)), now)
        prev_ttl = 0.0 if prev == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return prev, prev_ttl, current, current_ttl

    def _hit_sliding(self, key: Hashable, limit: int, expiry: int, cost: int) -> bool:
        if cost > limit:
            return False
        now = time.time()
        prev, prev_ttl, current, _ = self._sliding(key, expiry, now)
        if floor(prev * prev_ttl / expiry + current) + cost > limit:
            return False
        current_key = (key, int(now / expiry))
        current = self._incr(current_key, 2 * expiry, cost)
        if floor(prev * prev_ttl / expiry + current) > limit:  # as limits does: give it back
            self._counts[current_key] = max(self._counts[current_key] - cost, 0)
            return False
        return True

    def _sweep(self) -> None:
        """Drop every window with nothing left in it; the next sweep after as many hits."""
        now = time.time()
        for key in [k for k, when in self._expires.items() if when <= now]:
            self._counts.pop(key, None)
            self._expires.pop(key, None)
        for key, window in list(self._moving.items()):
            window.trim(now - window.expiry)
            if not window.entries:
                del self._moving[key]
        self._hits = 0
        self._sweep_at = max(_MIN_SWEEP_EVERY, len(self))

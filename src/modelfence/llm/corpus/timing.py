"""When people send requests over a simulated day: working hours, sessions, think time,
bursts. Seconds since midnight; a tenant's users share its working hours."""

from __future__ import annotations

import math

import numpy as np

from .callers import DAY_S


def session_times(rng: np.random.Generator, n: int, *, start_h: float = 8.5,
                  end_h: float = 18.0, per_session: tuple[int, int] = (1, 8),
                  think_s: float = 70.0, burst: float = 0.15) -> list[float]:
    """`n` request times: sessions spread over working hours (a lunch dip), within a session
    a think time between requests (log-normal around `think_s`), and now and then a burst
    (several requests seconds apart: pasting, retrying, quick follow-ups)."""
    times: list[float] = []
    while len(times) < n:
        k = int(rng.integers(per_session[0], per_session[1] + 1))
        hour = rng.uniform(start_h, end_h)
        if 12.0 <= hour < 13.5 and rng.random() < 0.6:  # lunch: fewer sessions
            hour = rng.uniform(start_h, end_h)
        t = hour * 3600.0
        bursty = rng.random() < burst
        for _ in range(min(k, n - len(times))):
            times.append(min(t, DAY_S - 1))
            gap = rng.uniform(2.0, 9.0) if bursty else rng.lognormal(math.log(think_s), 0.8)
            t += gap
    return sorted(times)


def steady(rng: np.random.Generator, n: int, *, start_s: float, gap_s: tuple[float, float]
           ) -> list[float]:
    """A script's pace: one request after another, `gap_s` apart (uniform)."""
    out, t = [], start_s
    for _ in range(n):
        out.append(t)
        t += float(rng.uniform(*gap_s))
    return out


def every(n: int, *, start_s: float, period_s: float, rng: np.random.Generator,
          jitter_s: float = 60.0) -> list[float]:
    """A patient caller: one request per `period_s`, give or take `jitter_s`."""
    return [start_s + i * period_s + float(rng.uniform(0, jitter_s)) for i in range(n)]

"""The detectors that see only fresh rows are calibrated on the fresh rows honest callers send.

Where natural rows come closer than the re-send radius, a caller's re-send filter takes some
of its distinct natural rows for re-sends; the ones it keeps are the sparse ones (nearer the
boundary, off the weak directions). `null.fresh_orders` gives each simulated honest caller's
rows as the filter would let them through, and the share detectors' and coverage's nulls are
measured on those.
"""

from __future__ import annotations

import numpy as np

from modelfence.monitor.null import fresh_orders


def test_the_null_is_measured_on_the_rows_the_filter_lets_through() -> None:
    rng = np.random.default_rng(0)
    far = rng.standard_normal((50, 3)) * 10.0  # rows farther apart than the radius
    near = far + 0.01  # each one's twin, within the radius
    z = np.concatenate([far, near])
    order = rng.permutation(len(z))
    (kept,) = fresh_orders(z, [order], radius=0.5, key=0)
    assert len(kept) == 50  # one of each pair, whichever came first
    assert sorted(int(i) % 50 for i in kept) == list(range(50))
    assert kept.tolist() == [int(i) for i in order if int(i) in set(kept.tolist())]


def test_rows_farther_apart_than_the_radius_are_all_kept() -> None:
    rng = np.random.default_rng(1)
    z = rng.standard_normal((40, 20)) * 10.0  # projected to 16 dimensions, still far apart
    orders = [rng.permutation(40), np.arange(40)]
    got = fresh_orders(z, orders, radius=0.5, key=3)
    assert [g.tolist() for g in got] == [o.tolist() for o in orders]

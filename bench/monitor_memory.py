"""Extraction monitor: memory per caller, and what a snapshot of many callers costs.

Three measurements on the digits victim (64 features, 10 classes, default detectors):

- bytes of monitor state (`Monitor.state_bytes`) of one principal after 1, 10, 100, 1,000
  and 2,500 queries, every row fresh (random rows on the data's grid: the re-send filters
  keep every one, the worst case for memory);
- the snapshot of `--callers` principals with a realistic mix (most send a few queries, a
  few send thousands): seconds to build it and its size in bytes;
- the longest event-loop stall while the local snapshot file is saved (`LocalLog`, what the
  gateway runs every `snapshot_interval_s`): a probe task sleeps 10 ms in a loop, and the
  stall is how late its latest wake-up came.

`--save PATH` writes the table as a `modelfence-bench/1` result (bench/results.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modelfence.monitor.replication import LocalLog
from modelfence.monitor.score import Monitor
from modelfence.monitor.summary import Summary
from results import result, save

Array = np.ndarray[Any, Any]
#: Queries per caller in the mix: (share of callers, fewest, most).
MIX = ((0.80, 1, 5), (0.15, 10, 50), (0.045, 100, 300), (0.005, 2000, 2500))
T0 = 1_700_000_000.0


class Digits:
    """The digits victim: a logistic regression and a monitor summary fitted on its rows."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        x, y = load_digits(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(x))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model = LogisticRegression(max_iter=2000).fit(x[order[:450]], y[order[:450]])
        fit = x[order[450:800]]
        self.summary = Summary.fit(fit, self.model.predict_proba(fit))

    def rows(self, n: int, seed: int) -> tuple[Array, Array]:
        """`n` distinct random rows on the data's integer grid, and the model's answers."""
        x = np.random.default_rng(seed).integers(0, 17, size=(n, 64)).astype(np.float64)
        return x, self.model.predict_proba(x)


def per_caller(world: Digits, points: list[int]) -> list[tuple[int, int]]:
    """(queries, bytes of state) of one principal as its fresh queries accumulate."""
    monitor = Monitor(world.summary)
    x, p = world.rows(max(points), 1)
    out, sent = [], 0
    for n in points:
        for i in range(sent, n):
            monitor.observe("caller", x[i:i + 1], p[i:i + 1], now=T0 + i)
        sent = n
        out.append((n, monitor.state_bytes("caller")))
    return out


def populate(world: Digits, callers: int, seed: int = 2) -> tuple[Monitor, int]:
    """A monitor of `callers` principals in the `MIX` (rows in batches of up to 50)."""
    rng = np.random.default_rng(seed)
    monitor = Monitor(world.summary)
    pool_x, pool_p = world.rows(4000, seed)
    total = 0
    for c in range(callers):
        u, acc = rng.random(), 0.0
        lo, hi = MIX[-1][1:]
        for share, a, b in MIX:
            acc += share
            if u < acc:
                lo, hi = a, b
                break
        n = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, len(pool_x)))
        idx = (start + np.arange(n)) % len(pool_x)
        for i in range(0, n, 50):
            j = idx[i:i + 50]
            monitor.observe(f"key-{c}", pool_x[j], pool_p[j], tenant=f"org-{c % 50}",
                            now=T0 + c + i)
        total += n
    return monitor, total


async def stalled_save(monitor: Monitor, state_dir: Path) -> tuple[float, float]:
    """(longest loop stall, seconds) of one local snapshot save while a probe runs."""
    take: Any = getattr(monitor, "snapshot_async", None)  # the off-loop save, where it exists
    if take is None:  # the code before it: a plain function
        def take() -> bytes:
            return monitor.snapshot()
    log = LocalLog(["m"], "r", lambda obs, mine: None, lambda _m: take(), monitor.restore,
                   interval_s=3600.0, state_dir=state_dir)
    lags: list[float] = []

    async def probe() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t - 0.01)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.1)
    lags.clear()
    t0 = time.perf_counter()
    await log.stop()  # stop saves once
    took = time.perf_counter() - t0
    await asyncio.sleep(0.05)
    task.cancel()
    return max(lags, default=took), took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=10_000)
    parser.add_argument("--save", type=Path, help="write the result (modelfence-bench/1)")
    parser.add_argument("--commit", help="the commit of the code measured, when it is not "
                                         "the checkout's (an older tree on PYTHONPATH)")
    args = parser.parse_args()
    world = Digits()
    rows: list[dict[str, Any]] = []
    for n, b in per_caller(world, [1, 5, 10, 100, 1000, 2500]):
        rows.append({"what": f"state of one principal after {n:,} fresh queries", "bytes": b})
        print(f"{n:>6,} queries: {b:>9,} bytes", flush=True)
    started = time.perf_counter()
    monitor, total = populate(world, args.callers)
    print(f"{args.callers:,} callers, {total:,} queries, populated in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    t0 = time.perf_counter()
    data = monitor.snapshot()
    took = time.perf_counter() - t0
    t0 = time.perf_counter()
    Monitor(world.summary).restore(data)
    back = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        stall, save_s = asyncio.run(stalled_save(monitor, Path(tmp)))
    state = sum(monitor.state_bytes(k) for k in list(monitor._principals))
    for what, value, unit in (
            (f"state of {args.callers:,} principals ({total:,} queries)", state, "bytes"),
            ("snapshot size", len(data), "bytes"),
            ("snapshot build (Monitor.snapshot)", took, "seconds"),
            ("snapshot restore", back, "seconds"),
            ("local save (LocalLog, to a file)", save_s, "seconds"),
            ("longest event-loop stall during the save", stall, "seconds")):
        rows.append({"what": what, unit: value})
        print(f"{what}: {value:,.3f} s" if unit == "seconds" else f"{what}: {value:,} bytes",
              flush=True)
    if args.save:
        columns = [{"key": "what", "title": "measure"},
                   {"key": "bytes", "title": "bytes", "format": "{:,}"},
                   {"key": "seconds", "title": "seconds", "format": "{:.3f}"}]
        doc = result(
            "monitor-memory", " ".join(["python bench/monitor_memory.py", *sys.argv[1:]]),
            columns, rows, note=f"digits victim, default detectors; mix {MIX} "
                                "(share of callers, fewest, most queries)")
        if args.commit:
            doc["commit"] = args.commit
        save(args.save, doc)


if __name__ == "__main__":
    main()

"""Metrics shared by workers: the cost of prometheus_client's multiprocess mode.

With `workers > 1` every worker writes its counters to memory-mapped files in one folder
and /metrics sums them (kernel/metrics.py). This measures, in one process, what one
answered request costs in metric updates (a counter and a histogram, as MetricsGuard
does) with and without the files, and how long one /metrics rendering takes.

    python bench/metrics_workers.py [--updates 100000]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime

CHILD = """
import sys, time
from modelfence.config import metrics_dir
from modelfence.kernel.metrics import GatewayMetrics
m, n = GatewayMetrics(metrics_dir()), int(sys.argv[1])
t = time.perf_counter()
for _ in range(n):
    m.answered.add("infer", "digits", 200, 0.003)
update = (time.perf_counter() - t) / n
t = time.perf_counter()
for _ in range(50):
    m.render()
print(update * 1e6, (time.perf_counter() - t) / 50 * 1e3)
"""


def run(updates: int, folder: str | None) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if folder is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = folder
    out = subprocess.run([sys.executable, "-c", CHILD, str(updates)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=100_000)
    args = ap.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    single = run(args.updates, None)
    with tempfile.TemporaryDirectory(prefix="modelfence-metrics-bench-") as folder:
        shared = run(args.updates, folder)
    for name, (update_us, render_ms) in (("one process", single),
                                         ("workers share files", shared)):
        print(f"{name:20s} {update_us:6.2f} us of metric updates per request   "
              f"/metrics rendered in {render_ms:5.2f} ms")


if __name__ == "__main__":
    main()

"""Red-team speed: one attack run at budget 2,000 on one core, and the default assessment.

Targets (issue 5): one run (budget 2,000, MLP thief, digits) ≤ 1 s on one core (IBM ART's
comparable runs took 1.9-3.9 s here); the default assessment on digits (7 attacks x 6
defenses x 3 budgets x 3 seeds) ≤ 5 minutes on a 2-core machine. The victim is the demo
model (an MLP on digits, trained once into ~/.modelfence/demo).

    python bench/redteam.py [--repeats 5] [--skip-matrix] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime

from modelfence.redteam import ATTACKS, LocalProcesses, assess, run_attack


def one_run(attack: str, repeats: int) -> tuple[float, float, float, float]:
    """(median wall s, median CPU s, median thief-training s, fidelity) of one budget-2,000 run."""
    walls, cpus, trains, fidelity = [], [], [], 0.0
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run = run_attack("demo", attack=attack, thief="mlp", budgets=[2000], seed=0)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        trains.append(run.result.points[0].train_s)
        fidelity = run.result.points[0].fidelity
    return (statistics.median(walls), statistics.median(cpus), statistics.median(trains),
            fidelity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-matrix", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}, "
          f"load {os.getloadavg()[0]:.1f}")
    run_attack("demo", attack="random", budgets=[50])  # warm up: demo model, imports
    print("one run, budget 2,000, MLP thief, digits, one thread (median of "
          f"{args.repeats}):")
    print(f"{'attack':<18}{'wall s':>8}{'cpu s':>8}{'train s':>9}{'fidelity':>10}")
    for kind in ATTACKS:
        for variant in ("labels", "soft"):
            name = kind if variant == "soft" else f"{kind}:labels"
            wall, cpu, train, fid = one_run(name, args.repeats)
            print(f"{name:<18}{wall:>8.2f}{cpu:>8.2f}{train:>9.2f}{fid:>10.3f}")
    if args.skip_matrix:
        return
    started = time.perf_counter()
    result = assess("demo", executor=LocalProcesses(args.workers))
    elapsed = time.perf_counter() - started
    cells = len(result.cells)
    print(f"default assessment: {len(result.attacks)} attacks x {len(result.defenses)} "
          f"defenses x {len(result.budgets)} budgets x {len(result.seeds)} seeds = {cells} "
          f"cells on {result.executor}: {elapsed:.1f} s wall "
          f"({sum(c.total_s for c in result.cells) / cells:.2f} s per cell)")


if __name__ == "__main__":
    main()

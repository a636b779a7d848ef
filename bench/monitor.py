"""Extraction monitor: queries until each attack is flagged, false alarms, cost per query.

Runs `modelfence.evaluation.monitor` on digits (1,797 images, 64 features) and on a synthetic
tabular set (`make_classification`, 20,000 rows x 20 features, 5 classes of 2 clusters each:
the bundled tabular sets are too small, breast_cancer has 569 rows and wine 178, so a
5,000-query user would resend each row dozens of times), each with a logistic-regression
and an MLP victim.
Then the cost of `Monitor.observe` for one row when the caller already has 100,000 queries of
history, and the bytes of state per caller.

Targets (issue): Jacobian augmentation, uniform and equation solving flagged within 200
queries; augmented natural rows and active learning within 500; Knockoff on clean natural
rows reported, target < 2,000, also at tenant level when split over 10 keys; zero alarms on
the benign suite (>= 20 streams x 5,000 queries) and per-query false alarms <= 0.1%;
observe <= 100 us at p99.

    python bench/monitor.py [--data sklearn:digits,make_classification] [--victim lr,mlp]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime

import numpy as np

from modelfence.evaluation import monitor as ev
from modelfence.evaluation.streams import benign_stream
from modelfence.monitor import Monitor

TARGETS = {"jacobian": 200, "uniform": 200, "equation": 200, "linesearch": 200,
           "augmented": 500, "active": 500, "knockoff": 2000}


def attack_table(e: ev.Evaluation) -> list[str]:
    out = [f"**{e.data}**, victim {e.victim} (accuracy {e.accuracy:.3f}), threshold "
           f"{e.threshold}", "",
           "| attack stream | queries | flagged at | target | met | top risk | top detector |",
           "|---|---:|---:|---:|:---:|---:|---|"]
    rows = [*e.attacks, *([e.tenant] if e.tenant else [])]
    for r in rows:
        target = TARGETS.get(r.kind)
        met = "—" if target is None else ("yes" if r.flagged_at is not None
                                           and r.flagged_at <= target else "**no**")
        at = "never" if r.flagged_at is None else f"{r.flagged_at:,}"
        out.append(f"| {r.name} | {r.queries:,} | {at} | ≤ {target:,} | {met} | "
                   f"{r.top_risk:.2f} | {r.top_detector} |")
    key = "never" if e.tenant_key_flagged_at is None else f"{e.tenant_key_flagged_at:,}"
    out.append(f"\n(tenant split: first single key flagged at {key})")
    return out


def benign_table(e: ev.Evaluation) -> list[str]:
    out = ["", "| benign kind | streams | queries | flagged | alarm queries | top risk | "
           "top detector (worst stream) |", "|---|---:|---:|---:|---:|---:|---|"]
    for kind in dict.fromkeys(r.kind for r in e.benign):
        rs = [r for r in e.benign if r.kind == kind]
        worst = max(rs, key=lambda r: r.top_risk)
        out.append(f"| {kind} | {len(rs)} | {sum(r.queries for r in rs):,} | "
                   f"{sum(r.flagged_at is not None for r in rs)} | {sum(r.alarms for r in rs):,} "
                   f"| {worst.top_risk:.2f} | {worst.top_detector} |")
    out.append(f"| **all** | {len(e.benign)} | {e.benign_queries:,} | {e.benign_flagged} | "
               f"{sum(r.alarms for r in e.benign):,} ({e.false_alarm_rate:.3%}) | | |")
    return out


def cost(world: ev.World, history: int, samples: int, repeat: int = 1) -> list[str]:
    """observe() of one row after `history` queries of one caller (held-out rows).

    With `repeat` > 1 the same replay runs that many times on fresh monitors and each sample
    keeps its fastest time: on a machine shared with other jobs, what observe costs rather
    than how often the scheduler took the core away."""
    s = benign_stream("heldout", world.pool.x, world.labels, history + samples, seed=7)
    p = ev._proba(world.victim, s.x)
    out = []
    for tenant in (None, "t"):
        obs = np.full(samples, np.inf)
        risk = np.full(samples, np.inf)
        for _ in range(repeat):
            monitor = Monitor(world.summary)
            for i in range(0, history, 1000):
                monitor.observe("caller", s.x[i:i + 1000], p[i:i + 1000], tenant=tenant,
                                now=float(s.t[min(i + 999, history - 1)]))
            for k, i in enumerate(range(history, history + samples)):
                t0 = time.perf_counter_ns()
                monitor.observe("caller", s.x[i:i + 1], p[i:i + 1], tenant=tenant,
                                now=float(s.t[i]))
                t1 = time.perf_counter_ns()
                monitor.risk("caller")
                risk[k] = min(risk[k], time.perf_counter_ns() - t1)
                obs[k] = min(obs[k], t1 - t0)
        o, r = obs / 1e3, risk / 1e3
        who = "principal only" if tenant is None else "principal + its tenant"
        how = f", fastest of {repeat} replays per sample" if repeat > 1 else ""
        out.append(f"- observe one row ({who}), {history:,} queries of history, {samples:,} "
                   f"samples{how}: p50 {np.percentile(o, 50):.0f} µs, p99 "
                   f"{np.percentile(o, 99):.0f} µs (target p99 ≤ 100 µs); risk() p99 "
                   f"{np.percentile(r, 99):.1f} µs")
    out.append(f"- state per caller: {monitor.state_bytes('caller'):,} bytes "
               f"({monitor.risk('caller').queries:,} queries seen)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="sklearn:digits,make_classification")
    parser.add_argument("--victim", default="lr,mlp", help="lr, mlp or lr,mlp")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--attack-queries", type=int, default=2000)
    parser.add_argument("--benign-streams", type=int, default=22)
    parser.add_argument("--benign-queries", type=int, default=5000)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--cost-only", action="store_true",
                        help="only the cost of observe() on the last victim of each data set")
    parser.add_argument("--repeat", type=int, default=1,
                        help="replay the cost samples this many times, keep each one's fastest")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}, "
          f"load {os.getloadavg()[0]:.1f}\n")
    for data in args.data.split(","):
        for victim in args.victim.split(","):
            started = time.perf_counter()
            world = ev.build_world(data, victim)
            if args.cost_only:
                continue
            e = ev.evaluate(world, threshold=args.threshold, attack_queries=args.attack_queries,
                            benign_streams=args.benign_streams,
                            benign_queries=args.benign_queries)
            print("\n".join([*attack_table(e), *benign_table(e)]))
            print(f"\n({time.perf_counter() - started:.0f} s)\n", flush=True)
        print("\n".join(cost(world, args.history, args.samples, args.repeat)) + "\n",
              flush=True)


if __name__ == "__main__":
    main()

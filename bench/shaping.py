"""Output shaping: the cost of each defense per answer, and the trade-off table.

Targets (issue 7): at most 20 µs to shape one answer (a single [1, classes] row, the
gateway's common case), for every defense; the trade-off table (benign accuracy against
thief fidelity, the same code as ``modelfence shaping tradeoff``) printed as markdown.
The cost is the best of 40 interleaved rounds of 200 calls of `Defense.apply` on one
digits row (and on an outlier, where misinformation lies), after a warm-up call.

    python bench/shaping.py [--seeds 3] [--budgets 500,2000,5000] [--skip-table]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from modelfence.evaluation.tradeoff import (
    DEFAULT_BUDGETS,
    DEFAULT_DEFENSES,
    WATCHED,
    prepare,
    tradeoff,
)
from modelfence.redteam.run import defense_secret
from modelfence.shaping import parse_defense

COST_TARGET_US = 20.0
# misinfo:1.5 lies only farther out; a watched row costs its defense plus the monitor's observe
COST_DEFENSES = (*(d for d in DEFAULT_DEFENSES if not d.startswith(WATCHED)), "misinfo:1.5")


def costs_us(specs: tuple[str, ...], x: np.ndarray, proba: np.ndarray, summary: object,
             rounds: int = 40, calls: int = 200) -> dict[tuple[str, str], float]:
    """µs per single-row `apply` per (defense, row kind): the best of `rounds` rounds, as
    timeit advises, since the machine's other load only ever adds time; the rounds of all
    defenses interleave, so a busy spell does not fall on one of them."""
    rows = {"in distribution": x[:1], "outlier": np.full_like(x[:1], 8.0)}  # a flat grey square
    cases = {}
    for spec in specs:
        d = parse_defense(spec, secret=defense_secret(0), summary=summary)  # type: ignore[arg-type]
        for kind, row in rows.items():
            d.apply(proba[:1], inputs=row, principal="bench")  # warm-up (checks run once)
            cases[(spec, kind)] = (d, row)
    best = dict.fromkeys(cases, float("inf"))
    p = proba[:1]
    for _ in range(rounds):
        for key, (d, row) in cases.items():
            t = time.perf_counter()
            for _ in range(calls):
                d.apply(p, inputs=row, principal="bench")
            best[key] = min(best[key], (time.perf_counter() - t) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", default=",".join(str(b) for b in DEFAULT_BUDGETS))
    parser.add_argument("--skip-table", action="store_true")
    args = parser.parse_args()
    setting = prepare("sklearn:digits")
    victim = setting.victim.load()
    x = setting.held.x
    proba = victim.ask(x).proba
    assert proba is not None
    best = costs_us(COST_DEFENSES, x, proba, setting.summary)
    print("| defense | µs per answer (in distribution) | µs (outlier) | ≤ 20 µs |")
    print("|---|---:|---:|---|")
    for spec in COST_DEFENSES:
        inside, outside = best[(spec, "in distribution")], best[(spec, "outlier")]
        ok = "yes" if max(inside, outside) <= COST_TARGET_US else "**no**"
        print(f"| `{spec}` | {inside:.1f} | {outside:.1f} | {ok} |")
    if not args.skip_table:
        print()
        result = tradeoff(setting, budgets=[int(b) for b in args.budgets.split(",")],
                          seeds=args.seeds)
        print(result.markdown())


if __name__ == "__main__":
    main()

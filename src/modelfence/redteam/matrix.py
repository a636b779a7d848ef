"""The assessment: attacks x defenses x budgets x seeds, in-process against a model file.

Each (attack, defense, seed) is one cell: one run to the largest budget, with a thief
trained at every budget (see `attacks.base`). Cells run through an `Executor` (local
processes by default, Dask on request) and carry only picklable recipes: every worker loads
its own copy of the victim, so ONNX sessions and skops models never cross a process
boundary. Defenses are the `shaping` objects the gateway uses, applied to the victim's
answers for one thief principal; keyed noise gets a secret fixed per seed so that a seed
repeats exactly. What a defense costs honest callers is measured on the held-out rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..shaping import DEFAULT_DEFENSES, parse_defense
from .attacks import make_attack, split_attack
from .data import Pool, load_pool
from .executors import Executor, LocalProcesses
from .results import Assessment, AttackResult, DefenseSummary
from .run import HeldOut, accuracy, check_budgets, defense_secret, execute
from .thieves import check_thief, make_thief
from .victims import Oracle, ShapedOracle, VictimSource, victim_source

Array = np.ndarray[Any, Any]

#: Six strategies with soft labels, plus the label-only Knockoff thief as the reference
#: that no top-1-preserving defense can stop.
DEFAULT_ATTACKS = ("random", "random:labels", "adaptive", "jacobian", "equation", "uniform",
                   "active")
DEFAULT_BUDGETS = (100, 300, 1000)
DEFAULT_SEEDS = (0, 1, 2)
Progress = Callable[[AttackResult, int, int], None]


@dataclass(frozen=True)
class Cell:
    """Everything one worker needs for one (attack, defense, seed); picklable."""

    source: VictimSource
    pool: Pool
    held: HeldOut
    attack: str
    defense: str
    seed: int
    budgets: tuple[int, ...]
    thief: str


def canonical_attack(spec: str) -> str:
    """``random:soft`` → ``random``; ``random:label`` → ``random:labels``."""
    kind, variant = split_attack(spec)
    return kind if variant == "soft" else f"{kind}:labels"


def run_cell(cell: Cell) -> AttackResult:
    """One cell, in whatever process the executor chose."""
    victim = cell.source.load()
    defense = parse_defense(cell.defense, secret=defense_secret(cell.seed))
    oracle: Oracle = victim if defense.kind == "none" else ShapedOracle(victim, defense)
    return execute(make_attack(cell.attack, cell.seed), oracle, cell.pool, cell.held,
                   budgets=cell.budgets, thief=cell.thief, defense=defense.spec)


def summarise_defense(spec: str, proba: Array, x: Array, classes: Array | None,
                      y: Array | None) -> DefenseSummary:
    """Benign cost of a defense: accuracy and agreement of the shaped argmax, distortion."""
    d = parse_defense(spec, secret=defense_secret(0))
    shaped = d.apply(proba, inputs=x, principal="benign-caller")
    top = np.argmax(shaped, axis=1)
    return DefenseSummary(d.spec, d.description, accuracy(top, classes, y),
                          float(np.mean(top == np.argmax(proba, axis=1))),
                          float(np.mean(0.5 * np.abs(shaped - proba).sum(axis=1))))


def assess(target: Any, *, attacks: Sequence[str] = DEFAULT_ATTACKS,
           defenses: Sequence[str] = DEFAULT_DEFENSES, budgets: Sequence[int] = DEFAULT_BUDGETS,
           seeds: Sequence[int] | int = DEFAULT_SEEDS, thief: str = "mlp",
           pool: str | Path | Pool = "sklearn:digits", executor: Executor | None = None,
           progress: Progress | None = None, eval_fraction: float = 0.25,
           label_column: str | None = None, trusted_types: tuple[str, ...] = ()) -> Assessment:
    """Run the matrix and return an `Assessment` (write it with `write_report`).

    `target` is a model file (.skops/.onnx), ``"demo"`` or a fitted estimator. Every
    setting is checked before the first cell runs (a reverse-sigmoid setting that would
    change the model's answers is refused here, naming the pair of probabilities it flips).
    `seeds` is a list or a count; `executor` defaults to local processes, one per core,
    which are spawned: a script calling `assess` needs the usual
    ``if __name__ == "__main__":`` guard (notebooks do not).

    Example::

        from modelfence.redteam import assess, write_report
        result = assess("demo", attacks=["random", "random:labels"],
                        defenses=["none", "rsig:0.8,1.2"], budgets=[100, 500], seeds=2)
        write_report(result, "redteam-out")
    """
    started = time.perf_counter()
    seed_list = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
    budget_list = check_budgets(budgets)
    attack_list = tuple(dict.fromkeys(canonical_attack(a) for a in attacks))
    check_thief(thief)
    source = victim_source(target, trusted_types=trusted_types)
    victim = source.load()
    defense_list = tuple(dict.fromkeys(
        parse_defense(d, secret=defense_secret(0)).spec for d in defenses))
    for spec in defense_list:
        parse_defense(spec, secret=defense_secret(0)).check(victim.n_classes)
    data = pool if isinstance(pool, Pool) else load_pool(
        pool, n_features=victim.n_features, label_column=label_column)
    attack_pool, held_pool = data.split(eval_fraction)
    answers = victim.ask(held_pool.x)
    assert answers.proba is not None
    held = HeldOut(held_pool.x, answers.labels, held_pool.y)
    summaries = tuple(summarise_defense(d, answers.proba, held.x, victim.classes, held.y)
                      for d in defense_list)
    cells = [Cell(source, attack_pool, held, a, d, s, budget_list, thief)
             for a in attack_list for d in defense_list for s in seed_list]
    runner = executor or LocalProcesses()
    results: list[AttackResult] = []
    for result in runner.map_unordered(run_cell, cells):
        results.append(result)
        if progress is not None:
            progress(result, len(results), len(cells))
    order = {(a, d, s): i for i, (a, d, s) in enumerate(
        (c.attack, c.defense, c.seed) for c in cells)}
    results.sort(key=lambda r: order[(r.name, r.defense, r.seed)])
    return Assessment(
        victim.description, data.name, make_thief(thief, 0, n_features=victim.n_features).name,
        budget_list,
        seed_list, attack_list, summaries, tuple(results), victim.n_classes, victim.n_features,
        len(attack_pool.x), len(held.x), accuracy(held.labels, victim.classes, held.y),
        runner.name, datetime.now(UTC).isoformat(timespec="seconds"),
        round(time.perf_counter() - started, 2))

"""The red team: run real extraction attacks against your own model before a thief does.

For notebooks and scripts::

    from modelfence.redteam import run_attack, assess, write_report

    run = run_attack("model.skops", attack="random:labels", budgets=[100, 500, 2000])
    for p in run.result.points:
        print(p.budget, p.fidelity, p.accuracy)

    result = assess("model.skops", pool="data.npy", budgets=[100, 300, 1000], seeds=3)
    write_report(result, "redteam-out")      # assessment.json and report.html

`run_attack` also takes the address of a modelfence gateway and an API key, and attacks
through it: quotas and policies act on it as on any caller, and a 401, 403 or 429 stops the
attack with what it stole so far. `assess` runs in-process against a model file, with the
`modelfence.shaping` defenses applied to the victim's answers, its cells spread over local
processes (`LocalProcesses`) or a Dask cluster (`DaskCluster`).
"""

from .attacks import ATTACKS, make_attack
from .data import Pool, load_pool
from .executors import DaskCluster, Executor, InProcess, LocalProcesses
from .matrix import DEFAULT_ATTACKS, DEFAULT_BUDGETS, DEFAULT_SEEDS, assess
from .report import render_html, write_report
from .results import Assessment, AttackResult, AttackRun, BudgetPoint, DefenseSummary, Stop
from .run import run_attack
from .thieves import THIEVES, make_thief
from .victims import Oracle, victim_source

__all__ = [
    "ATTACKS",
    "DEFAULT_ATTACKS",
    "DEFAULT_BUDGETS",
    "DEFAULT_SEEDS",
    "THIEVES",
    "Assessment",
    "AttackResult",
    "AttackRun",
    "BudgetPoint",
    "DaskCluster",
    "DefenseSummary",
    "Executor",
    "InProcess",
    "LocalProcesses",
    "Oracle",
    "Pool",
    "Stop",
    "assess",
    "load_pool",
    "make_attack",
    "make_thief",
    "render_html",
    "run_attack",
    "victim_source",
    "write_report",
]

"""One attack run: prepare the target, collect answers up to the budget, train a thief per
budget, measure it on held-out rows.

Fidelity is the share of held-out rows on which the thief and the victim decide alike; it is
what "how much of the model was stolen" means here (an owner cares that the copy behaves
like the model, right or wrong). Accuracy against the true labels is reported when the pool
has them. The held-out rows are never queried by the attack: in-process the victim labels
them directly; over HTTP they are asked first (with `eval_key` if given), so that an attack
stopped by a quota still has its evaluation, and those requests are reported apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError, RequestError
from ..shaping import Defense, parse_defense
from .attacks import Attack, make_attack
from .data import Pool, load_pool
from .executors import one_thread
from .results import AttackResult, AttackRun, BudgetPoint, Stop
from .thieves import check_thief, make_thief
from .victims import Oracle, Recorder, ShapedOracle, victim_source

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class HeldOut:
    """The evaluation rows and what the victim (undefended) decided on them."""

    x: Array
    labels: Array
    y: Array | None


def check_budgets(budgets: Any) -> tuple[int, ...]:
    out = tuple(sorted({int(b) for b in budgets}))
    if not out or out[0] < 1:
        raise ConfigurationError("budgets must be positive numbers of queries")
    return out


def accuracy(pred: Array, classes: Array | None, y: Array | None) -> float | None:
    """Share of `pred` (class indices) whose class value equals the true label."""
    if y is None or classes is None or len(y) == 0:
        return None
    values = np.asarray(classes, dtype=object)[pred]
    return float(np.mean([str(v) == str(t) for v, t in zip(values, y, strict=True)]))


def execute(attack: Attack, oracle: Oracle, pool: Pool, held: HeldOut, *,
            budgets: tuple[int, ...], thief: str, defense: str) -> AttackResult:
    """Run `attack` against `oracle` and measure a thief at every budget."""
    started = time.perf_counter()
    rec = Recorder(oracle, budgets[-1], soft=attack.soft)
    try:
        attack.collect(rec, pool)
    except RequestError as exc:
        if rec.stopped is not exc:
            raise
    collected = time.perf_counter()

    def factory() -> Any:
        return make_thief(thief, attack.seed, n_features=oracle.n_features)

    points: list[BudgetPoint] = []
    for budget in budgets:
        n = min(budget, rec.used)
        if n == 0 or (points and points[-1].queries == n):
            break
        t = time.perf_counter()
        x, labels, proba = rec.transcript(n)
        model = attack.surrogate(x, labels, proba, oracle.n_classes, factory)
        pred = np.asarray(model.predict(held.x), dtype=np.int64)
        points.append(BudgetPoint(
            budget, n, float(np.mean(pred == held.labels)),
            accuracy(pred, oracle.classes, held.y), round(time.perf_counter() - t, 4)))
    stop = None
    if rec.stopped is not None:
        stop = Stop(rec.stopped.status, rec.stopped.message, rec.used)
    done = time.perf_counter()
    return AttackResult(
        attack.kind, attack.variant, attack.title, attack.thief_name(factory()), defense,
        attack.seed, tuple(points), rec.used, rec.requests, stop,
        round(collected - started, 4), round(done - started, 4))


def run_attack(target: Any, *, attack: str = "random", thief: str = "mlp",
               pool: str | Path | Pool = "sklearn:digits", budgets: Any = (100, 500, 1000),
               seed: int = 0, defense: str | Defense | None = None,
               key: str | None = None, eval_key: str | None = None,
               model_name: str | None = None, batch: int = 1,
               label_column: str | None = None, eval_fraction: float = 0.25,
               trusted_types: tuple[str, ...] = ()) -> AttackRun:
    """Run one extraction attack and return fidelity and accuracy per budget.

    `target` is a model file (.skops/.onnx), ``"demo"``, a fitted scikit-learn estimator,
    or the ``http(s)://`` address of a modelfence gateway (with `key`; `model_name` if the
    address does not end in ``/v2/models/NAME``). `attack` is ``random``, ``adaptive``,
    ``jacobian``, ``equation``, ``uniform`` or ``active``, with ``:labels`` for the
    label-only variant. `defense` (in-process only) shapes the victim's answers, e.g.
    ``"rsig:0.8,1.2"``. Over HTTP, a 401, 403 or 429 stops the attack cleanly: the result
    covers what was stolen until then and `result.stopped` says why.

    Example::

        from modelfence.redteam import run_attack
        run = run_attack("demo", attack="random:labels", budgets=[100, 500])
        [(p.budget, p.fidelity) for p in run.result.points]
    """
    with one_thread():
        return _run_attack(target, attack, thief, pool, budgets, seed, defense, key, eval_key,
                           model_name, batch, label_column, eval_fraction, trusted_types)


def _run_attack(target: Any, attack: str, thief: str, pool: str | Path | Pool, budgets: Any,
                seed: int, defense: str | Defense | None, key: str | None,
                eval_key: str | None, model_name: str | None, batch: int,
                label_column: str | None, eval_fraction: float,
                trusted_types: tuple[str, ...]) -> AttackRun:
    spec = make_attack(attack, seed)
    budget_list = check_budgets(budgets)
    check_thief(thief)
    if str(target).startswith(("http://", "https://")):
        if defense not in (None, "none"):
            raise ConfigurationError("defenses are applied in-process; over HTTP the "
                                     "gateway's own output shaping is what is measured")
        return _run_http(str(target), spec, key, eval_key, model_name, batch, pool,
                         label_column, eval_fraction, budget_list, thief)
    victim = victim_source(target, trusted_types=trusted_types).load()
    shaper = parse_defense(defense, secret=defense_secret(seed)) if isinstance(
        defense, str) else defense
    data = pool if isinstance(pool, Pool) else load_pool(
        pool, n_features=victim.n_features, label_column=label_column)
    attack_pool, held_pool = data.split(eval_fraction)
    held = HeldOut(held_pool.x, victim.ask(held_pool.x).labels, held_pool.y)
    oracle: Oracle = victim if shaper is None else ShapedOracle(victim, shaper)
    result = execute(spec, oracle, attack_pool, held, budgets=budget_list, thief=thief,
                     defense=shaper.spec if shaper else "none")
    return AttackRun(result, victim.description, data.name, len(attack_pool.x),
                     len(held.x), 0, accuracy(held.labels, victim.classes, held.y),
                     victim.n_classes, victim.n_features)


def defense_secret(seed: int) -> bytes:
    """The keyed-noise secret of an in-process run: fixed per seed, so runs repeat."""
    import hashlib

    return hashlib.sha256(f"modelfence-redteam-{seed}".encode()).digest()


def _run_http(url: str, spec: Attack, key: str | None, eval_key: str | None,
              model_name: str | None, batch: int, pool: str | Path | Pool,
              label_column: str | None, eval_fraction: float, budgets: tuple[int, ...],
              thief: str) -> AttackRun:
    from .http_oracle import EVAL_BATCH, HttpOracle

    if not key:
        raise ConfigurationError("attacking an endpoint needs an API key (--key or "
                                 "MODELFENCE_KEY)")
    oracle = HttpOracle(url, key, model=model_name, batch=batch)
    try:
        data = pool if isinstance(pool, Pool) else load_pool(
            pool, n_features=oracle.n_features, label_column=label_column)
        attack_pool, held_pool = data.split(eval_fraction)
        judge = oracle if not eval_key or eval_key == key else HttpOracle(
            url, eval_key, model=model_name, batch=EVAL_BATCH)
        try:
            judge.batch = EVAL_BATCH
            eval_rec = Recorder(judge, len(held_pool.x), soft=False)
            eval_rec.ask(held_pool.x)
        finally:
            judge.batch = batch
            if judge is not oracle:
                judge.close()
                oracle.classes = judge.classes  # class values learnt from the answers
        held = HeldOut(held_pool.x, eval_rec.transcript()[1], held_pool.y)
        result = execute(spec, oracle, attack_pool, held, budgets=budgets, thief=thief,
                         defense="gateway")
        return AttackRun(result, oracle.description, data.name, len(attack_pool.x),
                         len(held.x), eval_rec.requests,
                         accuracy(held.labels, oracle.classes, held.y), oracle.n_classes,
                         oracle.n_features)
    finally:
        oracle.close()

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

import contextlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError, ModelfenceError, RequestError
from ..shaping import Defense, parse_defense
from .attacks import Attack, make_attack
from .data import Pool, load_pool
from .executors import one_thread
from .http_oracle import (
    EVAL_BATCH,
    RISK_EVERY,
    AdminClient,
    Endpoint,
    HttpOracle,
    MintedKey,
    RiskWatch,
)
from .results import Assessment, AttackResult, AttackRun, BudgetPoint, DefenseSummary, Stop
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
               trusted_types: tuple[str, ...] = (), admin_token: str | None = None,
               principal: str | None = None, risk_every: int = RISK_EVERY,
               admin_url: str | None = None) -> AttackRun:
    """Run one extraction attack and return fidelity and accuracy per budget.

    `target` is a model file (.skops/.onnx), ``"demo"``, a fitted scikit-learn estimator,
    or the ``http(s)://`` address of a modelfence gateway (with `key`; `model_name` if the
    address does not end in ``/v2/models/NAME``). `attack` is ``random``, ``adaptive``,
    ``jacobian``, ``equation``, ``uniform`` or ``active``, with ``:labels`` for the
    label-only variant. `defense` (in-process only) shapes the victim's answers, e.g.
    ``"rsig:0.8,1.2"``. Over HTTP, a 401, 403 or 429 stops the attack cleanly: the result
    covers what was stolen until then and `result.stopped` says why; `result.bands` counts
    the answers per output-shaping band, and with the gateway's `admin_token` the monitor's
    risk score for the key's principal (looked up by key id unless `principal` is given) is
    read every `risk_every` queries and at each budget into `result.risk_trail`, from the
    gateway's admin listener at `admin_url` (default: port 9090 of the gateway's host).

    Example::

        from modelfence.redteam import run_attack
        run = run_attack("demo", attack="random:labels", budgets=[100, 500])
        [(p.budget, p.fidelity) for p in run.result.points]
    """
    with one_thread():
        return _run_attack(target, attack, thief, pool, budgets, seed, defense, key, eval_key,
                           model_name, batch, label_column, eval_fraction, trusted_types,
                           admin_token, principal, risk_every, admin_url)


def _run_attack(target: Any, attack: str, thief: str, pool: str | Path | Pool, budgets: Any,
                seed: int, defense: str | Defense | None, key: str | None,
                eval_key: str | None, model_name: str | None, batch: int,
                label_column: str | None, eval_fraction: float,
                trusted_types: tuple[str, ...], admin_token: str | None,
                principal: str | None, risk_every: int,
                admin_url: str | None = None) -> AttackRun:
    spec = make_attack(attack, seed)
    budget_list = check_budgets(budgets)
    check_thief(thief)
    if str(target).startswith(("http://", "https://")):
        if defense not in (None, "none"):
            raise ConfigurationError("defenses are applied in-process; over HTTP the "
                                     "gateway's own output shaping is what is measured")
        return _run_http(str(target), spec, key, eval_key, model_name, batch, pool,
                         label_column, eval_fraction, budget_list, thief,
                         admin_token=admin_token, principal=principal, risk_every=risk_every,
                         admin_url=admin_url)
    if admin_token or principal:
        raise ConfigurationError("an admin token and principal are for a gateway address; "
                                 "in-process there is no monitor to read")
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


def _evaluate(judge: HttpOracle, held_x: Array) -> tuple[Array, int]:
    """The endpoint's labels for the held-out rows, asked in batches; and the requests."""
    batch = judge.batch
    try:
        judge.batch = EVAL_BATCH
        rec = Recorder(judge, len(held_x), soft=False)
        rec.ask(held_x)
    finally:
        judge.batch = batch
    return rec.transcript()[1], rec.requests


def _run_http(url: str, spec: Attack, key: str | None, eval_key: str | None,
              model_name: str | None, batch: int, pool: str | Path | Pool,
              label_column: str | None, eval_fraction: float, budgets: tuple[int, ...],
              thief: str, *, admin_token: str | None = None, principal: str | None = None,
              risk_every: int = RISK_EVERY, admin_url: str | None = None) -> AttackRun:
    if not key:
        raise ConfigurationError("attacking an endpoint needs an API key (--key or "
                                 "MODELFENCE_KEY)")
    oracle = HttpOracle(url, key, model=model_name, batch=batch)
    admin = (AdminClient(oracle.endpoint.admin_at(admin_url), admin_token) if admin_token
             else None)
    try:
        who = principal or (admin.principal_of(key) if admin else None)
        data = pool if isinstance(pool, Pool) else load_pool(
            pool, n_features=oracle.n_features, label_column=label_column)
        attack_pool, held_pool = data.split(eval_fraction)
        if not eval_key or eval_key == key:
            held_labels, eval_requests = _evaluate(oracle, held_pool.x)
        else:
            judge = HttpOracle(url, eval_key, model=model_name, batch=batch)
            try:
                held_labels, eval_requests = _evaluate(judge, held_pool.x)
            finally:
                judge.close()
            oracle.classes = judge.classes  # class values learnt from the answers
        held = HeldOut(held_pool.x, held_labels, held_pool.y)
        oracle.reset_counts()
        watch, note = _watch(admin, oracle.model, who, risk_every, budgets)
        oracle.watch = watch
        result = execute(spec, oracle, attack_pool, held, budgets=budgets, thief=thief,
                         defense="gateway")
        if watch is not None:
            watch.finish(oracle.answered)
            if watch.problem:
                note = f"the risk trail stopped early: {watch.problem}"
        result = replace(result, principal=who, bands=dict(oracle.bands),
                         risk_trail=tuple(watch.trail) if watch else ())
        return AttackRun(result, oracle.description, data.name, len(attack_pool.x),
                         len(held.x), eval_requests,
                         accuracy(held.labels, oracle.classes, held.y), oracle.n_classes,
                         oracle.n_features, note)
    finally:
        oracle.close()
        if admin is not None:
            admin.close()


def _watch(admin: AdminClient | None, model: str, principal: str | None, every: int,
           budgets: tuple[int, ...]) -> tuple[RiskWatch | None, str | None]:
    """A risk watch with its first reading taken, or None and why there is none."""
    if admin is None or principal is None:
        return None, None
    watch = RiskWatch(admin, model, principal, every=every, marks=budgets)
    if watch.poll(0) is None:
        if watch.problem and "not monitored" not in watch.problem:
            raise ConfigurationError(f"cannot read the risk score: {watch.problem}")
        return None, f"no risk trail: {watch.problem}"
    return watch, None


QueryTick = Callable[[str, int, int], None]
CellDone = Callable[[AttackResult, int, int], None]


def assess_http(url: str, *, admin_token: str, admin_url: str | None = None,
                model_name: str | None = None,
                attacks: Sequence[str] | None = None, budgets: Sequence[int] = (100, 300, 1000),
                seeds: Sequence[int] | int = 1, thief: str = "mlp",
                pool: str | Path | Pool = "sklearn:digits", batch: int = 1,
                risk_every: int = RISK_EVERY, eval_fraction: float = 0.25,
                label_column: str | None = None, progress: CellDone | None = None,
                on_query: QueryTick | None = None) -> Assessment:
    """Attacks x budgets x seeds through a live gateway: its shaping, monitor and quotas act.

    With the gateway's admin token, one fresh key is minted per cell (principal
    ``redteam-<attack>-s<seed>-<random>``, its own tenant, so that cells share neither risk
    nor budgets) through its admin listener at `admin_url` (default: port 9090 of its host)
    and revoked when the cell ends; held-out rows are labelled through one more
    fresh key. Cells run one after the other; on a monitored model each cell's risk score is
    read every `risk_every` queries. The defense column is ``gateway``. `progress` is called
    after each cell, `on_query(cell, answered, budget)` as queries are answered.
    """
    from .matrix import DEFAULT_ATTACKS, canonical_attack

    started = time.perf_counter()
    seed_list = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
    budget_list = check_budgets(budgets)
    attack_list = tuple(dict.fromkeys(canonical_attack(a) for a in attacks or DEFAULT_ATTACKS))
    for a in attack_list:
        make_attack(a, 0)
    check_thief(thief)
    if not admin_token:
        raise ConfigurationError("assessing a gateway needs its admin token (--admin-token "
                                 "or MODELFENCE_ADMIN_TOKEN) to mint a key per cell")
    endpoint = Endpoint.parse(url, model_name)
    run_id = secrets.token_hex(2)
    with one_thread(), AdminClient(endpoint.admin_at(admin_url), admin_token) as admin:
        judge_key = admin.create_key(f"redteam-eval-{run_id}", f"redteam-eval-{run_id}",
                                     [endpoint.model])
        try:
            judge = HttpOracle(url, judge_key.key, model=model_name, batch=EVAL_BATCH)
            try:
                data = pool if isinstance(pool, Pool) else load_pool(
                    pool, n_features=judge.n_features, label_column=label_column)
                attack_pool, held_pool = data.split(eval_fraction)
                try:
                    held_labels, _ = _evaluate(judge, held_pool.x)
                except RequestError as exc:
                    raise ConfigurationError(
                        f"the held-out evaluation was refused ({exc.status}: {exc.message})"
                    ) from None
            finally:
                judge.close()
            monitored = admin.risk(endpoint.model, judge_key.principal) is not None
        finally:
            _revoke(admin, judge_key)
        held = HeldOut(held_pool.x, held_labels, held_pool.y)
        cells = [(a, s) for a in attack_list for s in seed_list]
        results: list[AttackResult] = []
        for attack, seed in cells:
            cell = _http_cell(url, endpoint, admin, run_id, make_attack(attack, seed),
                              attack_pool, held, budget_list, thief, batch, judge.classes,
                              risk_every if monitored else 0, on_query)
            results.append(cell)
            if progress is not None:
                progress(cell, len(results), len(cells))
    benign = accuracy(held.labels, judge.classes, held.y)
    gateway = DefenseSummary("gateway", "the gateway's own output shaping, monitor and quotas",
                             benign, None, None)
    return Assessment(
        endpoint.description, data.name, make_thief(thief, 0, n_features=judge.n_features).name,
        budget_list, seed_list, attack_list, (gateway,), tuple(results), judge.n_classes,
        judge.n_features, len(attack_pool.x), len(held.x), benign, "sequential over HTTP",
        datetime.now(UTC).isoformat(timespec="seconds"),
        round(time.perf_counter() - started, 2))


def _http_cell(url: str, endpoint: Endpoint, admin: AdminClient, run_id: str, spec: Attack,
               pool: Pool, held: HeldOut, budgets: tuple[int, ...], thief: str, batch: int,
               classes: Array | None, risk_every: int, on_query: QueryTick | None
               ) -> AttackResult:
    """One cell through its own freshly minted key, revoked afterwards."""
    who = f"redteam-{spec.name.replace(':', '-')}-s{spec.seed}-{run_id}"
    minted = admin.create_key(who, who, [endpoint.model])
    try:
        oracle = HttpOracle(url, minted.key, model=endpoint.model, batch=batch)
        try:
            if classes is not None:
                oracle.classes = classes.copy()
            watch = None
            if risk_every:
                watch = RiskWatch(admin, endpoint.model, who, every=risk_every, marks=budgets)
                watch.poll(0)
            oracle.watch = watch
            if on_query is not None:
                tick = on_query
                oracle.listener = lambda n: tick(spec.name, n, budgets[-1])
                tick(spec.name, 0, budgets[-1])
            result = execute(spec, oracle, pool, held, budgets=budgets, thief=thief,
                             defense="gateway")
            if watch is not None:
                watch.finish(oracle.answered)
            return replace(result, principal=who, bands=dict(oracle.bands),
                           risk_trail=tuple(watch.trail) if watch else ())
        finally:
            oracle.close()
    finally:
        _revoke(admin, minted)


def _revoke(admin: AdminClient, minted: MintedKey) -> None:
    """Best effort: a key that cannot be revoked now expires with the gateway's keys store."""
    with contextlib.suppress(ModelfenceError):
        admin.revoke_key(minted.key_id)

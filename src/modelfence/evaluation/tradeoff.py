"""Measure each defense's trade-off: benign accuracy kept against fidelity stolen.

One setting, fixed by a seed, for every defense: the data set is split into test rows
(benign accuracy and fidelity are measured there), a summary split (the monitor's
`Summary`, which misinformation needs, is fitted there, never on the victim's training
rows) and training rows (an MLP victim like the demo's). The thieves draw from the
training and summary rows, the natural data a Knockoff thief is assumed to hold; past
that, they jitter it (the red team's natural+jitter).

The thieves are the red team's attacks and its `execute` loop (`redteam.run`), with one
change to the oracle: the label a thief sees is the top class of the *shaped* answer, as
the gateway's `label` output is, so that a defense that changes labels (misinformation)
reaches label-only thieves. One thief is added at the augmented budget: the soft-label
Knockoff thief trained on rescaled answers (`RescaledKnockoff`), which shows when a defense
only defeats the red team's thief's choice of target scale. `redteam.matrix.assess` is not
reused: it builds defenses from spec strings without a summary, and passes the victim's
own labels through.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..monitor.summary import Summary
from ..redteam.attacks import make_attack
from ..redteam.attacks.base import Predictor, ThiefFactory
from ..redteam.attacks.sampling import KnockoffRandom
from ..redteam.data import Pool, load_pool
from ..redteam.executors import Executor, InProcess, one_thread
from ..redteam.run import HeldOut, accuracy, check_budgets, defense_secret, execute
from ..redteam.thieves import check_thief, soft_targets
from ..redteam.victims import Answers, LocalVictim, Oracle, VictimSource, victim_source
from ..shaping.base import Array, Defense, shaped_labels
from ..shaping.spec import parse_defense
from ..shaping.tradeoff_table import Column, Row, Tradeoff

#: The table's defenses: one of each kind, then the settings tuned on digits.
DEFAULT_DEFENSES = ("none", "round:2", "topk:3", "labels", "rsig:0.8,1.2", "noise:2",
                    "rsig:0.95,1.05", "misinfo", "misinfo+rsig:0.95,1.05",
                    "watched:misinfo:1")
#: ``watched:DEFENSE``: the gateway's loop, in-process: the extraction monitor scores the
#: caller, and once it is flagged its answers go through DEFENSE (the risk band).
WATCHED = "watched:"
DEFAULT_BUDGETS = (500, 2000, 5000)
AUGMENTED_BUDGET = 2000
#: (attack, title prefix): natural-data thieves run at every budget, the others at one.
NATURAL = (("random:labels", "labels"), ("random", "soft"))
RESCALED = "random:rescaled"
AUGMENTED = ((RESCALED, "soft rescaled"), ("jacobian:labels", "jacobian labels"),
             ("uniform:labels", "uniform labels"))
BENIGN = "benign-caller"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Setting:
    """The prepared experiment; picklable, so cells can run in worker processes."""

    data: str
    victim: VictimSource
    pool: Pool
    held: HeldOut
    summary: Summary
    rows_train: int
    rows_summary: int


def prepare(data: str = "sklearn:digits", *, seed: int = 0, test_fraction: float = 0.25,
            summary_fraction: float = 0.2, cells: int = 16) -> Setting:
    """Split `data`, train the victim, fit the summary on rows the victim never saw.

    16 cells rather than the monitor's 32: on digits' 360 summary rows, 32 centroids fit
    those rows so closely that 2.7% of test rows fell beyond the radius (1% is meant).
    """
    full = load_pool(data)
    if full.y is None:
        raise ConfigurationError(f"{full.name}: the trade-off trains its own victim and "
                                 "needs labelled data")
    n = len(full.x)
    n_test, n_summary = round(n * test_fraction), round(n * summary_fraction)
    if min(n_test, n - n_test - n_summary) < 10 or n_summary < 2 * cells:
        raise ConfigurationError(f"{full.name}: {n} rows are too few to split")
    order = np.random.default_rng(seed).permutation(n)
    test, summ, train = np.split(order, [n_test, n_test + n_summary])
    with one_thread():
        model = _train_victim(full.x[train], full.y[train], seed)
        summary = Summary.fit(full.x[summ], model.predict_proba(full.x[summ]), cells=cells,
                              seed=seed)
    source = victim_source(model)
    victim = source.load()
    natural = np.concatenate([train, summ])
    pool = Pool(full.name, full.x[natural], full.y[natural])
    held = HeldOut(full.x[test], victim.ask(full.x[test]).labels, full.y[test])
    return Setting(full.name, source, pool, held, summary, len(train), len(summ))


def _train_victim(x: Array, y: Array, seed: int) -> Any:
    """The demo's model: standardised inputs, one hidden layer of 64, lbfgs."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(64,), solver="lbfgs", alpha=1e-3, max_iter=400,
        random_state=seed)).fit(x, y)


class ShapedAnswers(Oracle):
    """The victim's answers through a defense, as float32 on the wire, labelled by their top."""

    def __init__(self, inner: LocalVictim, defense: Defense, principal: str) -> None:
        defense.check(inner.n_classes)
        self._inner, self._defense, self._principal = inner, defense, principal
        self.n_classes, self.n_features = inner.n_classes, inner.n_features
        self.classes, self.description = inner.classes, f"{inner.description} with {defense.spec}"

    def ask(self, x: Array) -> Answers:
        a = self._inner.ask(x)
        assert a.proba is not None
        shaped = self._defense.apply(a.proba, inputs=x, principal=self._principal)
        shaped = shaped.astype(np.float32).astype(np.float64)
        return Answers(shaped_labels(a.proba, shaped), shaped)


class WatchedAnswers(Oracle):
    """The monitor and one risk band, row by row as the gateway serves them: answers are the
    model's own until the caller's risk reaches the threshold, then `defense` shapes them.
    Queries are spaced 50 ms apart on a simulated clock (the volume detector sees a steady
    caller, not a flood)."""

    def __init__(self, inner: LocalVictim, defense: Defense, summary: Summary,
                 principal: str) -> None:
        from ..monitor.score import Monitor

        defense.check(inner.n_classes)
        self._inner, self._defense, self._principal = inner, defense, principal
        self.monitor = Monitor(summary)
        self._clock = 0.0
        self.n_classes, self.n_features = inner.n_classes, inner.n_features
        self.classes = inner.classes
        self.description = f"{inner.description}, {defense.spec} once flagged"

    def ask(self, x: Array) -> Answers:
        a = self._inner.ask(x)
        assert a.proba is not None
        out = a.proba.copy()
        threshold = self.monitor.settings.threshold
        for i in range(len(x)):
            if self.monitor.peek(self._principal) >= threshold:
                out[i:i + 1] = self._defense.apply(a.proba[i:i + 1], inputs=x[i:i + 1],
                                                   principal=self._principal)
            self.monitor.observe(self._principal, x[i:i + 1], a.proba[i:i + 1],
                                 now=self._clock)
            self._clock += 0.05
        out = out.astype(np.float32).astype(np.float64)
        return Answers(shaped_labels(a.proba, out), out)


def make_oracle(setting: Setting, spec: str, seed: int, principal: str) -> Oracle:
    """What a caller of `spec` is answered by: a defense, or the monitor and a band."""
    watched = spec.startswith(WATCHED)
    defense = parse_defense(spec.removeprefix(WATCHED), secret=defense_secret(seed),
                            summary=setting.summary)
    if watched:
        return WatchedAnswers(setting.victim.load(), defense, setting.summary, principal)
    return ShapedAnswers(setting.victim.load(), defense, principal)


class RescaledKnockoff(KnockoffRandom):
    """Knockoff (random) with soft labels, its thief trained on each answer's log-probabilities
    scaled to unit spread: a squeeze toward uniform (reverse sigmoid with beta near 1) shrinks
    the red team's logit-matching targets until its thief underfits, but not these."""

    title = "Knockoff (random), rescaled soft labels"

    def surrogate(self, x: Array, labels: Array, proba: Array | None, n_classes: int,
                  thief: ThiefFactory) -> Predictor:
        assert proba is not None
        t = soft_targets(proba)
        t = t / np.maximum(t.std(axis=1, keepdims=True), 1e-12)
        e = np.exp(t - t.max(axis=1, keepdims=True))  # the thief takes logs again
        return thief().fit(x, labels, e / e.sum(axis=1, keepdims=True), n_classes)


@dataclass(frozen=True)
class Cell:
    setting: Setting
    spec: str
    attack: str
    budgets: tuple[int, ...]
    seed: int
    thief: str


def run_cell(cell: Cell) -> tuple[Cell, dict[int, float]]:
    """One thief against one defense with one seed: fidelity per budget."""
    s = cell.setting
    oracle = make_oracle(s, cell.spec, cell.seed, "thief")
    attack = RescaledKnockoff("soft", cell.seed) if cell.attack == RESCALED else make_attack(
        cell.attack, cell.seed)
    result = execute(attack, oracle, s.pool, s.held,
                     budgets=cell.budgets, thief=cell.thief, defense=cell.spec)
    return cell, {p.budget: p.fidelity for p in result.points}


def benign(setting: Setting, spec: str, seeds: Sequence[int]) -> tuple[float | None, float]:
    """Mean over seeds of the shaped top-1's accuracy and of the rows whose top-1 changed."""
    victim = setting.victim.load()
    x, held = setting.held.x, setting.held
    proba = victim.ask(x).proba
    assert proba is not None
    accs, changes = [], []
    for seed in seeds:
        if spec.startswith(WATCHED):  # a benign caller sends the test rows in random order
            order = np.random.default_rng(seed).permutation(len(x))
            labels = np.empty(len(x), dtype=np.int64)
            labels[order] = make_oracle(setting, spec, seed, BENIGN).ask(x[order]).labels
        else:
            d = parse_defense(spec, secret=defense_secret(seed), summary=setting.summary)
            labels = shaped_labels(proba, d.apply(proba, inputs=x, principal=BENIGN))
        accs.append(accuracy(labels, victim.classes, held.y))
        changes.append(int(np.sum(labels != held.labels)))
    acc = None if accs[0] is None else float(np.mean([a for a in accs if a is not None]))
    return acc, float(np.mean(changes))


def tradeoff(data: str | Setting = "sklearn:digits", *,
             defenses: Sequence[str] = DEFAULT_DEFENSES,
             budgets: Sequence[int] = DEFAULT_BUDGETS,
             augmented_budget: int = AUGMENTED_BUDGET, seeds: int | Sequence[int] = 3,
             thief: str = "mlp", executor: Executor | None = None,
             progress: Progress | None = None) -> Tradeoff:
    """Run every thief against every defense; see the module docstring for the setting.

    Example::

        from modelfence.evaluation.tradeoff import tradeoff
        print(tradeoff(defenses=["none", "misinfo"], budgets=[500], seeds=1).markdown())
    """
    started = time.perf_counter()
    seed_list = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
    budget_list = check_budgets(budgets)
    aug = check_budgets([augmented_budget])
    check_thief(thief)
    setting = data if isinstance(data, Setting) else prepare(data)
    victim = setting.victim.load()
    specs: list[str] = []
    descriptions: dict[str, str] = {}
    for text in defenses:  # every setting is checked before the first query
        watched = text.startswith(WATCHED)
        d = parse_defense(text.removeprefix(WATCHED), secret=defense_secret(0),
                          summary=setting.summary)
        d.check(victim.n_classes)
        spec = WATCHED + d.spec if watched else d.spec
        specs.append(spec)
        descriptions[spec] = (f"monitor, then once flagged: {d.description}" if watched
                              else d.description)
    specs = list(dict.fromkeys(specs))
    columns = tuple(Column(a, b, f"{t} {b:,}") for a, t in NATURAL for b in budget_list) + \
        tuple(Column(a, aug[0], f"{t} {aug[0]:,}") for a, t in AUGMENTED)
    plan = [(a, budget_list) for a, _ in NATURAL] + [(a, aug) for a, _ in AUGMENTED]
    cells = [Cell(setting, spec, a, b, s, thief) for spec in specs for a, b in plan
             for s in seed_list]
    found: dict[tuple[str, str], list[float]] = {}
    runner = executor or InProcess()
    for done, (cell, fid) in enumerate(runner.map_unordered(run_cell, cells), 1):
        for budget, value in fid.items():
            found.setdefault((cell.spec, f"{cell.attack}@{budget}"), []).append(value)
        if progress is not None:
            progress(done, len(cells))
    rows = []
    for spec in specs:
        acc, changes = benign(setting, spec, seed_list)
        means = {c.key: float(np.mean(found[(spec, c.key)])) for c in columns
                 if (spec, c.key) in found}
        sds = {c.key: float(np.std(found[(spec, c.key)])) for c in columns
               if (spec, c.key) in found}
        rows.append(Row(spec, descriptions[spec], acc, changes, means, sds))
    return Tradeoff(
        setting.data, "MLP (64 hidden, scikit-learn)",
        accuracy(setting.held.labels, victim.classes, setting.held.y), setting.rows_train,
        setting.rows_summary, len(setting.pool.x), len(setting.held.x), thief, seed_list,
        columns, tuple(rows), datetime.now(UTC).isoformat(timespec="seconds"),
        f"{platform.machine()}, {_cores()} core(s), {runner.name}",
        round(time.perf_counter() - started, 1))


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)

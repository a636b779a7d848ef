"""Issue 16's targets: an ownership proof that convicts copies, and what it costs honest callers.

On the efficacy corpus's victims (`modelfence.monitor.corpus.victims`; ``--suite test`` is the
half nothing was tuned on: 12 victims, 2 to 20 classes), each served through the gateway's
watermark in-process (the guard's `Watermarker` with the planned per-model rate of an
unflagged caller, controls at `control_ratio` times it, repeats of a marked input answered
truthfully, every mark and control recorded as the guard records it):

* **Thieves never flagged** (risk 0, so the planned rate): label-only, with the victim's
  natural rows (its callers' pool, as the corpus's ``knockoff``) or those rows with Gaussian
  noise of 5% of each feature's spread (the corpus's ``augment-noise``). Copies of four
  families (MLP, random forest, gradient boosting, logistic regression: the corpus's own
  recipes) trained on the first 2,000 and on all 5,000 answers; each copy also fine-tuned on
  fresh rows with their true labels (10% of its stolen set, rows the gateway never saw:
  MLP 20 more epochs, logistic regression 20 more L-BFGS steps and the forest 50% more
  trees, all fitted on the fresh rows alone; the boosted trees are refit on the stolen rows
  and the fresh ones, the fresh holding half the weight: scikit-learn's histogram boosting
  warm-started on other rows collapsed, fidelity 0.1 to 0.3 in our trials).
* **Verification** as `modelfence verify-ownership` runs it without ``--principal``: the
  store holds every caller's records (two honest callers in one tenant, both thieves in
  their own), every principal, tenant and all records are tested with Bonferroni, and the
  fingerprint (keyed conferrable points, no marks needed) is combined by Fisher's method.
  Reported per copy: the thief's own set (what ``--principal`` gives), the fingerprint, and
  the verdict's combined p.
* **Innocents**: reference models of every family and the victim's own recipe with other
  seeds, trained on the victim's training rows, never through the gateway, verified against
  the same evidence (at 2,000 and 5,000 thief answers): false accusations at the verdict's
  alpha, and the smallest p any of them got.
* **Honest cost**: top-1 accuracy of an honest caller on the never-queried test rows with
  and without the watermark (mean over keys), and of repeat-heavy users (1,000 answers over
  50 inputs, each asked 20 times) with ``repeats: truthful`` and ``consistent``.

The per-model rate comes from `power.model_rate` with the disagreement of six reference
models (the families `watermark plan --references 6` trains) measured on the test rows.

    .venv/bin/python bench/ownership.py --suite test [--victims a,b] [--workers 2]
        [--json out.json] [--markdown out.md] [--no-fingerprint]
"""

from __future__ import annotations

import argparse
import copy as copy_module
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from modelfence.errors import ConfigurationError, ModelfenceError
from modelfence.monitor.corpus.rows import resample
from modelfence.monitor.corpus.victims import (
    FAMILIES,
    FIT,
    TEST,
    TRAIN,
    OneThread,
    VictimSpec,
    make_data,
    make_model,
    victim,
    victims,
)
from modelfence.redteam.victims import Answers, LocalVictim, Oracle
from modelfence.watermark.keyring import Keyring, WatermarkKey, row_bytes
from modelfence.watermark.marking import PlannedRate, Watermarker
from modelfence.watermark.oracle import WatermarkedOracle
from modelfence.watermark.power import Measured, clamp_disagreement, model_rate
from modelfence.watermark.settings import WatermarkKeySettings, WatermarkSettings
from modelfence.watermark.store import EvidenceRecord
from modelfence.watermark.suspect import FunctionSuspect
from modelfence.watermark.verify import DEFAULT_ALPHA, Evidence, questions_from, verify

Array = np.ndarray[Any, Any]
Labeler = Callable[[Array], list[str]]
Repeats = Literal["truthful", "consistent"]

MODEL = "victim"
BUDGETS = (2000, 5000)
DATA_KINDS = ("natural", "augmented")
#: Augmented rows: Gaussian noise of this share of each feature's spread.
NOISE = 0.05
#: Fresh truly-labelled rows a thief fine-tunes on, as a share of its stolen answers.
FRESH_SHARE = 0.10
#: Reference models whose disagreement with the victim plans the rate (`watermark plan`).
PLAN_REFERENCES = 6
INNOCENT_SEED = 70_000
REQUEST_ROWS = 100
#: Targets (issue 16): log2 p of copies at 2,000 and 5,000 answers and after fine-tuning.
TARGET_2000, TARGET_5000, TARGET_TUNED = -40.0, -64.0, -20.0
VICTIM_SHARE = 0.90
COST_TARGET, REPEAT_COST_TARGET = 0.5, 1.0
#: Honest answers the average cost is measured over, at least (keys x test rows).
COST_ANSWERS = 20_000
#: Repeat-heavy honest users: distinct inputs, times each is asked.
REPEAT_INPUTS, REPEAT_TIMES = 50, 20


@dataclass(frozen=True)
class Options:
    """How much of everything one victim runs (`--help` says what each is)."""

    budgets: tuple[int, ...] = BUDGETS
    families: tuple[str, ...] = FAMILIES
    families_5000: tuple[str, ...] = FAMILIES
    innocents: int = 10
    recipe_innocents: int = 2
    fingerprint: bool = True
    fp_points: int = 200
    fp_calibrators: int = 30
    fp_selectors: int = 10
    fp_copies: int = 8
    fp_candidates: int = 50
    cost_keys: int = 20
    repeat_users: int = 40
    seed: int = 0


# the victim ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Victim:
    """A corpus victim split as `build_world` splits it (without the monitor's summary)."""

    spec: VictimSpec
    model: OneThread
    oracle: LocalVictim
    n_classes: int
    classes: Array
    x_train: Array
    y_train: Array
    x_fresh: Array  # the summary's rows: never sent by anyone, a thief's fresh labelled rows
    y_fresh: Array
    x_test: Array
    y_test: Array
    pool_x: Array
    pool_y: Array

    def labeler(self) -> Labeler:
        """The victim's own answers as class names (what the fingerprint is built from)."""
        def labels(x: Array) -> list[str]:
            return [str(self.classes[i]) for i in self.oracle.ask(x).labels]
        return labels


def load_victim(spec: VictimSpec, seed: int = 0) -> Victim:
    """The victim of `build_world(spec, seed)`: the same rows, split and model."""
    x, y = make_data(spec.data, seed)
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    a, b, c = int(n * TRAIN), int(n * (TRAIN + FIT)), int(n * (TRAIN + FIT + TEST))
    train, fit, test, pool = order[:a], order[a:b], order[b:c], order[c:]
    model = OneThread(make_model(spec.family, seed, len(train)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLP convergence and the like
        model.fit(x[train], y[train])
    classes = np.asarray(model.classes_)
    oracle = LocalVictim(model.predict_proba, n_classes=len(classes), n_features=x.shape[1],
                         classes=classes, description=spec.name, dtype=np.float64)
    return Victim(spec, model, oracle, len(classes), classes, x[train], y[train], x[fit],
                  y[fit], x[test], y[test], x[pool], y[pool])


def wire(x: Array) -> Array:
    """Rows as the gateway receives them: float32 values."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


# the gateway's watermark ---------------------------------------------------------------------


def bench_settings(repeats: Repeats = "truthful") -> WatermarkSettings:
    """The default watermark settings (the key itself is made in memory, never read)."""
    return WatermarkSettings(keys=[WatermarkKeySettings(id="bench", secret_file=Path("-"))],
                             repeats=repeats)


class Gateway:
    """The guard's watermark for one model, in-process: one key, one store, many callers.

    Each caller is a `WatermarkedOracle` (the guard's `Watermarker` with the model's planned
    rate, repeats of a marked input answered as `settings.repeats` says) sharing one
    `Watermarker`; `records` is the store: every caller's `EvidenceRecord`s.
    """

    def __init__(self, v: Victim, settings: WatermarkSettings, disagreement: float,
                 secret: bytes) -> None:
        self.victim = v
        self.settings = settings
        self.marker = Watermarker(
            Keyring([WatermarkKey("bench", secret)]),
            PlannedRate(settings, {MODEL: Measured(v.n_classes, disagreement)}),
            control=settings.control, control_ratio=settings.control_ratio)
        self.callers: dict[str, WatermarkedOracle] = {}

    @property
    def fraction(self) -> float:
        """The planned share for an unflagged caller's first answers."""
        return self.marker.fraction(0.0, MODEL, self.victim.n_classes)

    def caller(self, principal: str, tenant: str, inner: Oracle | None = None
               ) -> WatermarkedOracle:
        """`principal`'s view of the model (made on first use, answering through `inner`)."""
        o = self.callers.get(principal)
        if o is None:
            o = self.callers[principal] = WatermarkedOracle(
                inner or self.victim.oracle, self.marker, model=MODEL, principal=principal,
                tenant=tenant, truthful_repeats=self.settings.repeats == "truthful",
                truthful_limit=self.settings.truthful_limit)
        return o

    def answer(self, x: Array, principal: str, tenant: str, inner: Oracle | None = None
               ) -> Array:
        """The labels (class indices) `principal` receives for rows `x` (one request)."""
        out: Array = self.caller(principal, tenant, inner).ask(wire(x)).labels
        return out

    @property
    def records(self) -> list[EvidenceRecord]:
        return [r for o in self.callers.values() for r in o.records]

    def evidence(self, records: Sequence[EvidenceRecord]) -> Evidence:
        """What `verify-ownership` without --principal reads from the store."""
        return questions_from(records, model=MODEL, principal=None, marker=self.marker,
                              cipher=None)


class Precomputed(Oracle):
    """The victim's answers to known rows, predicted once (repeat-heavy users ask the same
    rows thousands of times)."""

    def __init__(self, v: Victim, x: Array) -> None:
        x = wire(x)
        proba = v.oracle.ask(x).proba
        assert proba is not None
        self._proba: Array = proba
        self._row = {b: i for i, b in enumerate(row_bytes(x))}
        self.n_classes, self.n_features = v.n_classes, v.oracle.n_features
        self.classes, self.description = v.classes, v.spec.name

    def ask(self, x: Array) -> Answers:
        p = self._proba[[self._row[b] for b in row_bytes(x)]]
        return Answers(np.argmax(p, axis=1), p)


def ask_all(gw: Gateway, x: Array, principal: str, tenant: str, *,
            inner: Oracle | None = None, rows: int = REQUEST_ROWS) -> Array:
    """`x` sent by `principal` in requests of `rows` rows."""
    out = [gw.answer(x[i:i + rows], principal, tenant, inner)
           for i in range(0, len(x), rows)]
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


# thieves -------------------------------------------------------------------------------------


def thief_rows(v: Victim, kind: str, n: int, rng: np.random.Generator) -> Array:
    """`n` rows of a never-flagged thief: natural pool rows (every row once before any twice),
    or those with Gaussian noise of `NOISE` of each feature's spread, clipped to the range."""
    x = v.pool_x[resample(len(v.pool_x), n, rng)].copy()
    if kind == "natural":
        return x
    if kind != "augmented":
        raise ConfigurationError(f"thief data {kind!r}: use natural or augmented")
    x += rng.standard_normal(x.shape) * NOISE * v.pool_x.std(axis=0)
    out: Array = np.clip(x, v.pool_x.min(axis=0), v.pool_x.max(axis=0))
    return out


def fit_copy(family: str, x: Array, labels: Array, seed: int) -> Any:
    """A copy of `family` (the corpus's recipe) trained on the stolen labels."""
    from threadpoolctl import threadpool_limits

    model = make_model(family, seed, len(x))
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")
        model.fit(x, labels)
    return model


def fresh_rows(v: Victim, n: int, rng: np.random.Generator) -> tuple[Array, Array]:
    """`n` rows the gateway never saw, with true labels, holding every class there is
    (at most the rows there are: small data sets have fewer)."""
    y = v.y_fresh
    first = [int(rng.choice(np.flatnonzero(y == c))) for c in np.unique(y)]
    rest = np.setdiff1d(np.arange(len(y)), first)
    take = np.concatenate([first, rng.permutation(rest)[:max(0, n - len(first))]])
    take = take[:max(n, len(first))].astype(np.int64)
    return v.x_fresh[take], y[take]


def fine_tune(model: Any, family: str, x: Array, y: Array, stolen: tuple[Array, Array]
              ) -> Any:
    """A copy of `model` trained further on the fresh rows (x, y) (module docstring); only
    the boosted trees, refit, see the `stolen` rows again."""
    from threadpoolctl import threadpool_limits

    tuned = copy_module.deepcopy(model)
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")
        if family == "mlp":
            xs = tuned[:-1].transform(x)
            net = tuned[-1]
            net.set_params(early_stopping=False)
            net.best_loss_, net._no_improvement_count = np.inf, 0  # early stopping left None
            for _ in range(20):
                tuned[-1].partial_fit(xs, y)
        elif family == "lr":
            tuned[-1].set_params(warm_start=True, max_iter=20)
            tuned[-1].fit(tuned[:-1].transform(x), y)
        elif family == "rf":
            tuned.set_params(warm_start=True, n_estimators=tuned.n_estimators * 3 // 2)
            tuned.fit(x, y)
        elif family == "gb":
            sx, sy = stolen
            weight = np.r_[np.ones(len(sx)), np.full(len(x), len(sx) / max(1, len(x)))]
            tuned.fit(np.concatenate([sx, x]), np.concatenate([sy, y]), sample_weight=weight)
        else:
            raise ConfigurationError(f"cannot fine-tune family {family!r}")
    return tuned


def predictor(model: Any) -> Labeler:
    def labels(x: Array) -> list[str]:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return [str(c) for c in model.predict(x)]
    return labels


# verification --------------------------------------------------------------------------------


def judge(ev: Evidence, labeler: Labeler, fp: Any, principal: str | None) -> dict[str, Any]:
    """Verify one suspect; the numbers the tables need (log2 p, 0 when a test is absent)."""
    doc = verify(ev, FunctionSuspect(labeler), fingerprint=fp)
    sets = doc["tests"]["sets"]
    own = next((s for s in sets if principal is not None and (
        s["set"] == f"principal:{principal}" or f"principal:{principal}" in s.get(
            "same_as", []))), None)
    tested = [s for s in sets if s.get("tested")]
    fpt = doc["tests"].get("fingerprint")
    return {
        "principal_log2_p": own["log2_p"] if own is not None else 0.0,
        "principal_marks": own["marks"] if own is not None else 0,
        "principal_mark_disagreements": own["mark_disagreements"] if own is not None else 0,
        "principal_controls": own["controls"] if own is not None else 0,
        "principal_control_disagreements": (own["control_disagreements"] if own is not None
                                            else 0),
        "watermark_log2_p": tested[0]["log2_p_adjusted"] if tested else 0.0,
        "watermark_set": tested[0]["set"] if tested else None,
        "fingerprint_log2_p": fpt["log2_p"] if fpt else None,
        "fingerprint_agreement": (fpt["agreements"] / fpt["points"]) if fpt else None,
        "log2_p": doc["verdict"]["log2_p"],
        "accused": bool(doc["verdict"]["accused"]),
    }


# one victim ----------------------------------------------------------------------------------


def run_victim(name: str, opts: Options, progress: Any = None) -> dict[str, Any]:
    """Everything for one victim (runs in a worker process)."""
    from threadpoolctl import threadpool_limits

    from modelfence.watermark.references import train_recipe, train_references

    def tick(what: str) -> None:
        if progress is not None:
            progress.put((name, what))

    started, cpu = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(what: str) -> None:
        nonlocal t0
        timings[what] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        tick(what)

    with threadpool_limits(limits=1):
        spec = victim(name)
        v = load_victim(spec, opts.seed)
        test_labels = v.oracle.ask(wire(v.x_test)).labels
        accuracy = float(np.mean(v.classes[test_labels] == v.y_test))
        # innocents (the first six also plan the rate, as `watermark plan` measures it)
        refs: list[Any] = train_references(v.x_train, v.y_train, count=opts.innocents,
                                           seed=INNOCENT_SEED + 1000 * opts.seed)
        ours = np.asarray([str(c) for c in v.classes[test_labels]], dtype=object)
        dis = [float(np.mean(np.asarray(r.labels(wire(v.x_test)), dtype=object) != ours))
               for r in refs[:PLAN_REFERENCES]]
        disagreement = clamp_disagreement(float(np.mean(dis)))
        refs += train_recipe(v.x_train, v.y_train,
                             lambda s: make_model(spec.family, s, len(v.x_train)),
                             count=opts.recipe_innocents, seed=INNOCENT_SEED + 500,
                             family=f"victim's recipe ({spec.family})")
        lap("innocents")
        settings = bench_settings("truthful")
        needed, rate = model_rate(settings, v.n_classes, disagreement)
        secret = f"bench-ownership-{name}-{opts.seed}-".encode() * 2
        gw = Gateway(v, settings, disagreement, secret)
        fp = None
        if opts.fingerprint:
            from modelfence.watermark.fingerprint import build_fingerprint

            fp = build_fingerprint(
                v.labeler(), v.x_train, v.y_train, key=secret + b"-fingerprint",
                points=opts.fp_points, candidates_per_point=opts.fp_candidates,
                copies=opts.fp_copies, selectors=opts.fp_selectors,
                calibrators=opts.fp_calibrators,
                recipe=lambda s: make_model(spec.family, s, len(v.x_train)))
        lap("fingerprint")
        cost = honest_cost(v, gw, disagreement, secret, opts)
        lap("honest cost")
        rng = np.random.default_rng(1000 + opts.seed)
        top = max(opts.budgets)
        stolen: dict[str, tuple[Array, Array]] = {}
        cut: dict[tuple[str, int], int] = {}
        for kind in DATA_KINDS:
            x = wire(thief_rows(v, kind, top, rng))
            labels = np.empty(0, dtype=np.int64)
            for budget in sorted(opts.budgets):
                more = ask_all(gw, x[len(labels):budget], f"thief-{kind}", f"t-{kind}")
                labels = np.concatenate([labels, more])
                cut[(kind, budget)] = len(gw.callers[f"thief-{kind}"].records)
            stolen[kind] = (x, v.classes[labels])
        honest_records = cost.pop("records")
        lap("thieves ask")
        evidence: dict[int, Evidence] = {}
        thief_records = {key: gw.callers[f"thief-{key[0]}"].records[:n]
                         for key, n in cut.items()}
        for budget in opts.budgets:
            evidence[budget] = gw.evidence(honest_records + [
                r for kind in DATA_KINDS for r in thief_records[(kind, budget)]])
        copies: list[dict[str, Any]] = []
        for kind in DATA_KINDS:
            x, labels = stolen[kind]
            for budget in opts.budgets:
                fams = opts.families_5000 if budget == max(opts.budgets) and budget > min(
                    opts.budgets) else opts.families
                fx, fy = fresh_rows(v, round(FRESH_SHARE * budget), rng)
                for family in fams:
                    model = fit_copy(family, x[:budget], labels[:budget], opts.seed + 7)
                    fid = float(np.mean(model.predict(v.x_test) == v.classes[test_labels]))
                    row = {"data": kind, "budget": budget, "family": family, "fidelity": fid,
                           **judge(evidence[budget], predictor(model), fp, f"thief-{kind}")}
                    tuned = fine_tune(model, family, fx, fy, (x[:budget], labels[:budget]))
                    tj = judge(evidence[budget], predictor(tuned), fp, f"thief-{kind}")
                    row["tuned"] = {"fresh_rows": len(fx), "fidelity": float(np.mean(
                        tuned.predict(v.x_test) == v.classes[test_labels])), **tj}
                    copies.append(row)
            tick(f"copies {kind}")
        lap("copies")
        innocents = []
        for r in refs:
            for budget in opts.budgets:
                innocents.append({"model": r.name, "family": r.family, "budget": budget,
                                  **judge(evidence[budget], r.labels, fp, None)})
        lap("innocent verification")
    thief_marks = {f"{kind}@{budget}": sum(r.kind == "watermark" for r in recs)
                   for (kind, budget), recs in thief_records.items()}
    thief_distinct = {kind: len(np.unique(stolen[kind][0], axis=0))
                      for kind in DATA_KINDS}
    return {
        "victim": name, "classes": v.n_classes, "family": spec.family,
        "features": int(v.x_train.shape[1]), "pool_rows": len(v.pool_x),
        "accuracy": accuracy, "disagreement": disagreement, "marks_needed": needed,
        "fraction": rate.fraction, "wanted_fraction": (None if math.isinf(rate.wanted)
                                                       else rate.wanted),
        "capped": rate.capped, "thief_marks": thief_marks, "thief_distinct": thief_distinct,
        "fingerprint": None if fp is None else {
            "points": fp.n, "null_mean": fp.null_mean,
            "calibration_max": max(d["rate"] for d in fp.calibration)},
        "copies": copies, "innocents": innocents, "cost": cost,
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1), "timings": timings,
    }


def honest_cost(v: Victim, gw: Gateway, disagreement: float, secret: bytes, opts: Options
                ) -> dict[str, Any]:
    """Top-1 accuracy of honest callers without and with the watermark.

    One caller ("alice") asks every test row once through `gw` (her records stay in the
    store, as an honest caller's would); the mean over `cost_keys` keys (more when the test
    rows are few: `COST_ANSWERS` answers at least) is the average cost.
    Repeat-heavy users ("bob" and others) each ask `REPEAT_INPUTS` test rows `REPEAT_TIMES`
    times in shuffled order, under ``repeats: truthful`` and ``consistent``.
    """
    x, y = wire(v.x_test), v.y_test
    inner = Precomputed(v, x)
    top = inner.ask(x).labels
    clean = float(np.mean(v.classes[top] == y))
    ask_all(gw, x, "alice", "honest", inner=inner)
    accs = []
    keys = max(opts.cost_keys, -(-COST_ANSWERS // len(x)))  # small test sets: more keys
    for k in range(keys):
        g = Gateway(v, bench_settings("truthful"), disagreement, secret + f"-{k}".encode())
        accs.append(float(np.mean(v.classes[ask_all(g, x, "alice", "honest", inner=inner)]
                                  == y)))
    rng = np.random.default_rng(4242 + opts.seed)
    repeat: dict[str, Any] = {}
    users = [rng.choice(len(x), size=min(REPEAT_INPUTS, len(x)), replace=False)
             for _ in range(opts.repeat_users)]
    orders = [rng.permutation(np.repeat(u, REPEAT_TIMES)) for u in users]
    for mode in ("truthful", "consistent"):
        g = Gateway(v, bench_settings(mode), disagreement, secret)  # the thieves' gateway key
        losses, hit = [], []
        for i, order in enumerate(orders):
            got = ask_all(g, x[order], f"repeat-{i}", "honest", inner=inner, rows=20)
            base = float(np.mean(v.classes[top[order]] == y[order]))
            loss = 100.0 * (base - float(np.mean(v.classes[got] == y[order])))
            losses.append(loss)
            if np.any(got != top[order]):
                hit.append(loss)
        repeat[mode] = {"users": len(orders), "mean_points": float(np.mean(losses)),
                        "users_marked": len(hit),
                        "mean_points_marked": float(np.mean(hit)) if hit else 0.0,
                        "max_points": float(max(losses))}
    # bob, a repeat-heavy honest caller, keeps his records in the thieves' store
    ask_all(gw, x[orders[0]], "bob", "honest", inner=inner, rows=20)
    return {"clean": clean, "watermarked": float(np.mean(accs)),
            "points": 100.0 * (clean - float(np.mean(accs))), "keys": keys,
            "test_rows": len(x), "repeat": repeat, "records": list(gw.records)}


# targets and report --------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    met: bool
    detail: str
    rows: list[str] = field(default_factory=list)


def _share(results: list[dict[str, Any]], ok: Callable[[dict[str, Any]], bool | None]
           ) -> tuple[int, int, list[str]]:
    """Victims where `ok` holds (None: the victim has no such case), and those where not."""
    n, good, bad = 0, 0, []
    for r in results:
        v = ok(r)
        if v is None:
            continue
        n += 1
        good += bool(v)
        if not v:
            bad.append(f"{r['victim']} ({r['classes']}c)")
    return good, n, bad


def _copies(r: dict[str, Any], budget: int, tuned: bool) -> list[float]:
    out = []
    for c in r["copies"]:
        if c["budget"] == budget:
            out.append((c["tuned"] if tuned else c)["log2_p"])
    return out


def _family_ok(r: dict[str, Any], budget: int, tuned: bool, goal: float, family: str
               ) -> bool:
    ps = [(c["tuned"] if tuned else c)["log2_p"] for c in r["copies"]
          if c["budget"] == budget and c["family"] == family]
    return bool(ps) and max(ps) <= goal


def targets(results: list[dict[str, Any]], budgets: Sequence[int]) -> list[Target]:
    """Each of issue 16's targets, met or missed, with the numbers behind it."""
    out: list[Target] = []
    plan = [(2000, False, TARGET_2000), (5000, False, TARGET_5000)]
    plan += [(b, True, TARGET_TUNED) for b in (2000, 5000)]
    for budget, tuned, goal in plan:
        if budget not in budgets:
            continue

        def every(r: dict[str, Any], b: int = budget, t: bool = tuned, g: float = goal
                  ) -> bool | None:
            ps = _copies(r, b, t)
            return None if not ps else max(ps) <= g

        good, n, bad = _share(results, every)
        cases = [p for r in results for p in _copies(r, budget, tuned)]
        hit = sum(p <= goal for p in cases)
        small = [r for r in results if r["classes"] <= 3]
        sg, sn, _ = _share(small, every)
        what = f"{'fine-tuned ' if tuned else ''}copies of {budget:,} answers"
        fams = sorted({c["family"] for r in results for c in r["copies"]
                       if c["budget"] == budget})
        per = ", ".join(f"{f} {sum(_family_ok(r, budget, tuned, goal, f) for r in results)}"
                        for f in fams)
        out.append(Target(
            f"{what}: p <= 2^{goal:g} on >= {VICTIM_SHARE:.0%} of victims (every copy)",
            n > 0 and good >= VICTIM_SHARE * n and sg == sn,
            f"{good} of {n} victims with every copy (data x family) at p <= 2^{goal:g} "
            f"({sg} of {sn} of the 2- and 3-class ones); {hit} of {len(cases)} copies; "
            f"worst copy log2 p = {max(cases, default=0.0):.1f}; victims with both thieves' "
            f"copies at target, per family: {per}"
            + (f"; missed on {', '.join(bad)}" if bad else "")))
    inn = [i for r in results for i in r["innocents"]]
    models = {(r["victim"], i["model"]) for r in results for i in r["innocents"]}
    accused = [i for i in inn if i["accused"]]
    low = min(inn, key=lambda i: i["log2_p"], default=None)
    out.append(Target(
        ">= 100 independently trained models, 0 falsely accused",
        len(models) >= 100 and not accused,
        f"{len(models)} models ({len(inn)} verifications, alpha = {DEFAULT_ALPHA:g}): "
        f"{len(accused)} accused; smallest p = "
        + (f"2^{low['log2_p']:.1f} ({low['model']})" if low else "none")))
    pts = [r["cost"]["points"] for r in results]
    out.append(Target(
        f"honest cost <= {COST_TARGET} points on average",
        bool(pts) and statistics.mean(pts) <= COST_TARGET,
        f"mean {statistics.mean(pts) if pts else 0:.3f} points over {len(pts)} victims "
        f"(max {max(pts, default=0):.3f})"))
    for mode in ("truthful", "consistent"):
        hits = [r["cost"]["repeat"][mode]["mean_points_marked"] for r in results
                if r["cost"]["repeat"][mode]["users_marked"]]
        means = [r["cost"]["repeat"][mode]["mean_points"] for r in results]
        worst = max((r["cost"]["repeat"][mode]["max_points"] for r in results), default=0.0)
        marked_mean = statistics.mean(hits) if hits else 0.0
        out.append(Target(
            f"repeat-heavy user (repeats: {mode}) <= {REPEAT_COST_TARGET} point",
            marked_mean <= REPEAT_COST_TARGET and worst <= REPEAT_COST_TARGET * 2,
            f"users holding a marked answer lose {marked_mean:.2f} points on average "
            f"(worst user {worst:.2f}); all users {statistics.mean(means) if means else 0:.3f}"
            f" ({REPEAT_INPUTS} inputs x {REPEAT_TIMES} asks each)"))
    return out


def _p(log2_p: float | None) -> str:
    if log2_p is None:
        return "-"
    return "1" if log2_p >= 0 else f"{log2_p:.0f}"


def markdown(results: list[dict[str, Any]], opts: Options, meta: dict[str, Any]) -> str:
    ts = targets(results, opts.budgets)
    lines = [f"# Ownership bench (issue 16): {meta['suite']} half, {len(results)} victims", "",
             f"{meta['date']} on {meta['machine']}; {meta['seconds']:.0f} s with "
             f"{meta['workers']} workers. Command: `{meta['command']}`", "",
             "## Targets", "", "| target | result | numbers |", "|---|---|---|"]
    lines += [f"| {t.name} | {'met' if t.met else '**missed**'} | {t.detail} |" for t in ts]
    lines += ["", "## Rate planned per victim (unflagged caller)", "",
              "| victim | k | accuracy | disagreement | marks needed | fraction | thief marks "
              "(natural / augmented at each budget) | distinct natural rows |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        tm = " / ".join(f"{r['thief_marks'][f'natural@{b}']}-{r['thief_marks'][f'augmented@{b}']}"
                        for b in opts.budgets)
        lines.append(f"| {r['victim']} | {r['classes']} | {r['accuracy']:.3f} | "
                     f"{r['disagreement']:.3f} | {r['marks_needed']} | {r['fraction']:.3%}"
                     f"{' (capped)' if r['capped'] else ''} | {tm} | "
                     f"{r['thief_distinct']['natural']:,} |")
    lines += ["", "## Copies: verdict log2 p (thief's own set / fingerprint / verdict)", "",
              "Each cell: the copy, then the fine-tuned copy. Verdict = Fisher's combination "
              "of the best set's Bonferroni-corrected copy test and the fingerprint.", ""]
    head = "| victim | k | data | " + " | ".join(
        f"{f}@{b}" for b in opts.budgets for f in opts.families) + " |"
    lines += [head, "|" + "---|" * (3 + len(opts.budgets) * len(opts.families))]
    for r in results:
        for kind in DATA_KINDS:
            cells = []
            for b in opts.budgets:
                for f in opts.families:
                    c = next((c for c in r["copies"] if c["data"] == kind and c["budget"] == b
                              and c["family"] == f), None)
                    if c is None:
                        cells.append("-")
                        continue
                    t = c["tuned"]
                    cells.append(f"{_p(c['principal_log2_p'])}/{_p(c['fingerprint_log2_p'])}/"
                                 f"**{_p(c['log2_p'])}**; ft {_p(t['log2_p'])}")
            lines.append(f"| {r['victim']} | {r['classes']} | {kind} | " + " | ".join(cells)
                         + " |")
    lines += ["", "## Innocent models", "", "| victim | models | verifications | accused | "
              "smallest log2 p (model) | smallest watermark log2 p | smallest fingerprint "
              "log2 p |", "|---|---|---|---|---|---|---|"]
    for r in results:
        inn = r["innocents"]
        low = min(inn, key=lambda i: i["log2_p"])
        fps = [i["fingerprint_log2_p"] for i in inn if i["fingerprint_log2_p"] is not None]
        lines.append(f"| {r['victim']} | {len({i['model'] for i in inn})} | {len(inn)} | "
                     f"{sum(i['accused'] for i in inn)} | {low['log2_p']:.1f} ({low['model']})"
                     f" | {min(i['watermark_log2_p'] for i in inn):.1f} | "
                     + (f"{min(fps):.1f} |" if fps else "- |"))
    lines += ["", "## Honest cost (points of top-1 accuracy)", "",
              "| victim | clean | watermarked | cost | repeat-heavy truthful (marked users) | "
              "repeat-heavy consistent (marked users) |", "|---|---|---|---|---|---|"]
    for r in results:
        c = r["cost"]
        rt, rc = c["repeat"]["truthful"], c["repeat"]["consistent"]
        lines.append(f"| {r['victim']} | {c['clean']:.4f} | {c['watermarked']:.4f} | "
                     f"{c['points']:.3f} | {rt['mean_points']:.3f} ({rt['users_marked']}: "
                     f"{rt['mean_points_marked']:.2f}) | {rc['mean_points']:.3f} "
                     f"({rc['users_marked']}: {rc['mean_points_marked']:.2f}) |")
    lines += ["", "Seconds per victim: " + ", ".join(
        f"{r['victim']} {r['seconds']:.0f}" for r in results), ""]
    return "\n".join(lines)


# main ----------------------------------------------------------------------------------------


def _names(text: str | None, suite: str) -> list[str]:
    if text:
        names = [n.strip() for n in text.split(",") if n.strip()]
        for n in names:
            victim(n)  # an unknown name is a ConfigurationError
        return names
    return [v.name for v in victims(suite)]


def _families(text: str) -> tuple[str, ...]:
    out = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = sorted(set(out) - set(FAMILIES))
    if not out or unknown:
        raise ConfigurationError(f"copy families {unknown or '(none)'}: use some of "
                                 f"{', '.join(FAMILIES)}")
    return out


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--suite", choices=("dev", "test"), default="test")
    ap.add_argument("--victims", help="comma-separated victim names [default: the suite's]")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--markdown", type=Path, help="write the report here")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="copy families (mlp, gb, rf, lr)")
    ap.add_argument("--families-5000", default=None,
                    help="copy families at the largest budget [default: --families]")
    ap.add_argument("--innocents", type=int, default=10,
                    help="reference models per victim (every family in turn)")
    ap.add_argument("--recipe-innocents", type=int, default=2,
                    help="models of the victim's own recipe, other seeds, per victim")
    ap.add_argument("--no-fingerprint", action="store_true")
    ap.add_argument("--fp-points", type=int, default=200)
    ap.add_argument("--fp-calibrators", type=int, default=30)
    ap.add_argument("--fp-selectors", type=int, default=10)
    ap.add_argument("--fp-copies", type=int, default=8)
    ap.add_argument("--fp-candidates", type=int, default=50,
                    help="candidate points per fingerprint point")
    ap.add_argument("--cost-keys", type=int, default=20)
    ap.add_argument("--repeat-users", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        budgets = tuple(sorted({int(b) for b in args.budgets.split(",") if b.strip()}))
    except ValueError:
        raise ConfigurationError(f"--budgets {args.budgets!r}: give numbers") from None
    if not budgets or min(budgets) < 100:
        raise ConfigurationError("--budgets: at least one budget of >= 100 answers")
    if args.workers < 1 or args.innocents < PLAN_REFERENCES:
        raise ConfigurationError(f"--workers >= 1 and --innocents >= {PLAN_REFERENCES}")
    fams = _families(args.families)
    opts = Options(
        budgets=budgets, families=fams,
        families_5000=_families(args.families_5000) if args.families_5000 else fams,
        innocents=args.innocents, recipe_innocents=args.recipe_innocents,
        fingerprint=not args.no_fingerprint, fp_points=args.fp_points,
        fp_calibrators=args.fp_calibrators, fp_selectors=args.fp_selectors,
        fp_copies=args.fp_copies, fp_candidates=args.fp_candidates,
        cost_keys=args.cost_keys, repeat_users=args.repeat_users, seed=args.seed)
    return args, opts


STEPS = ("innocents", "fingerprint", "honest cost", "thieves ask", "copies natural",
         "copies augmented", "copies", "innocent verification")


def run(names: list[str], opts: Options, workers: int) -> list[dict[str, Any]]:
    """Every victim, `workers` at a time, with a progress bar on stderr."""
    from multiprocessing import Manager

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    results: dict[str, dict[str, Any]] = {}
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.completed}/{task.total}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("ownership bench", total=len(names) * len(STEPS))
        if workers == 1:
            class Tick:
                def put(self, item: tuple[str, str]) -> None:
                    bar.update(task, advance=1, description=f"{item[0]}: {item[1]}")

            for n in names:
                results[n] = run_victim(n, opts, Tick())
                _done(console, results[n])
        else:
            with Manager() as manager, ProcessPoolExecutor(max_workers=workers) as pool:
                queue = manager.Queue()
                futures: dict[str, Future[dict[str, Any]]] = {
                    n: pool.submit(run_victim, n, opts, queue) for n in names}
                while len(results) < len(futures) or not queue.empty():
                    for n, f in futures.items():
                        if n not in results and f.done():
                            results[n] = f.result()
                            _done(console, results[n])
                    try:
                        who, what = queue.get(timeout=0.5)
                    except Exception:  # noqa: S112 - queue.Empty, from the manager's proxy
                        continue
                    bar.update(task, advance=1, description=f"{who}: {what}")
    return [results[n] for n in names]


def _done(console: Any, r: dict[str, Any]) -> None:
    """One line per finished victim (the bar alone shows nothing when stderr is a file)."""
    console.log(f"{r['victim']}: {r['seconds']:.0f} s ({r['cpu_seconds']:.0f} s CPU) "
                f"{r['timings']}")


def main(argv: list[str] | None = None) -> int:
    try:
        args, opts = parse(argv)
        names = _names(args.victims, args.suite)
    except ModelfenceError as exc:
        print(f"\033[31merror: {exc}\033[0m", file=sys.stderr)
        return 2
    started = time.perf_counter()
    # the largest data sets first, so that workers finish together
    order = sorted(names, key=lambda n: -len(make_data(victim(n).data)[0]))
    results = run(order, opts, args.workers)
    results.sort(key=lambda r: names.index(r["victim"]))
    meta = {"suite": args.suite, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {_cpus()} CPUs, Python "
                       f"{platform.python_version()}",
            "workers": args.workers, "seconds": time.perf_counter() - started,
            "command": "python bench/ownership.py " + " ".join(
                sys.argv[1:] if argv is None else argv)}
    report = markdown(results, opts, meta)
    print(report)
    ts = targets(results, opts.budgets)
    doc = {"meta": meta, "options": opts.__dict__, "targets": [t.__dict__ for t in ts],
           "victims": results}
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=1, default=_jsonable) + "\n")
    if args.markdown is not None:
        args.markdown.write_text(report + "\n")
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple | set):
        return list(v)
    raise TypeError(f"not JSON: {type(v).__name__}")


if __name__ == "__main__":
    sys.exit(main())

"""The response watermark against the issue-8 targets, measured with the red-team harness.

Victim: the demo's digits MLP (trained on 75% of scikit-learn's digits). Thief: the red
team's label-only Knockoff (adaptive) with an MLP copy, taking 1,000 / 2,000 / 5,000
answers through the watermark (`WatermarkedOracle`: the gateway guard's `Watermarker`)
at the default fraction (0.5%) and at the default `fraction_at_risk` (5%, for callers the
monitor flags). Verification asks the copy at most 500 recorded inputs. Also measured:
20 models trained independently on the same data, asked the same recorded inputs as the
5,000-answer thief at 5% (a valid test never accuses them: p > 1e-3 each); the top-1
accuracy honest callers lose at the default fraction; a thief that fine-tunes its copy on
fresh labelled rows (10% of its stolen answers, true labels, lbfgs warm start); the cost of
choosing the marked rows (µs per row).

    /tmp/v1/bin/python bench/watermark.py [--seeds 3] [--budgets 1000,2000,5000]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from modelfence.redteam.attacks.knockoff import KnockoffAdaptive
from modelfence.redteam.data import Pool
from modelfence.redteam.victims import LocalVictim, Recorder
from modelfence.watermark.keyring import Keyring, WatermarkKey
from modelfence.watermark.marking import Watermarker
from modelfence.watermark.oracle import WatermarkedOracle
from modelfence.watermark.stats import format_p
from modelfence.watermark.suspect import FunctionSuspect
from modelfence.watermark.verify import Evidence, questions_from, verify

Array = np.ndarray[Any, Any]
DEFAULT, RAISED = 0.005, 0.05
TARGET_LOG2_P = -64.0
MAX_QUERIES = 500


def mlp(seed: int, hidden: int = 64, **kw: Any) -> Any:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(hidden,), solver="lbfgs", alpha=1e-3, max_iter=400,
        random_state=seed, **kw))


def watermarked(victim: Any, fraction: float, seed: int) -> WatermarkedOracle:
    inner = LocalVictim(victim.predict_proba, n_classes=10, n_features=64,
                        classes=victim.classes_, description="digits MLP", dtype=np.float64)
    key = WatermarkKey(f"k{seed}", f"bench-secret-{seed}-".encode() * 4)
    return WatermarkedOracle(inner, Watermarker(Keyring([key]), lambda risk: fraction))


def evidence(oracle: WatermarkedOracle) -> Evidence:
    return questions_from(oracle.records, model="model", principal=None,
                          marker=oracle.marker, cipher=None)


def steal(oracle: WatermarkedOracle, pool: Pool, budget: int, seed: int) -> tuple[Array, Array]:
    rec = Recorder(oracle, budget, soft=False)
    KnockoffAdaptive("labels", seed=seed).collect(rec, pool)
    x, labels, _ = rec.transcript()
    return x, labels


def judge(ev: Evidence, predict: Any) -> dict[str, Any]:
    return verify(ev, FunctionSuspect(predict), max_queries=MAX_QUERIES)


def thieves(victim: Any, pool: Pool, held: Pool, budgets: list[int], seeds: int,
            y_pool: Array) -> tuple[list[str], Evidence | None]:
    rows = ["| fraction | answers | marked (median) | retained | decoy test p (worst / median)"
            " | conservative p (median) | fine-tuned p (median) | thief fidelity | fine-tuned "
            "fidelity |", "|---|---|---|---|---|---|---|---|---|"]
    held_labels = victim.predict(held.x)
    keep: Evidence | None = None
    for fraction in (DEFAULT, RAISED):
        for budget in budgets:
            marked, retained, lp, lpc, lpf, fid, fidf = [], [], [], [], [], [], []
            for seed in range(seeds):
                oracle = watermarked(victim, fraction, seed)
                x, labels = steal(oracle, pool, budget, seed)
                copy = mlp(seed).fit(x, victim.classes_[labels])
                ev = evidence(oracle)
                doc = judge(ev, copy.predict)
                decoy = doc["tests"]["decoy"]
                marked.append(len(ev.watermark))
                retained.append(decoy["successes"] / max(1, doc["evidence"]["asked"][
                    "watermark"]))
                lp.append(decoy["log2_p"])
                cons = doc["tests"]["conservative"]
                lpc.append(cons["log2_p"] if cons else 0.0)
                fid.append(float(np.mean(copy.predict(held.x) == held_labels)))
                # fine-tuning on fresh labelled rows: 10% of the answers, true labels
                rng = np.random.default_rng(100 + seed)
                fresh = rng.choice(len(pool.x), size=max(1, budget // 10),
                                   replace=budget // 10 > len(pool.x))
                tuned = copy
                tuned.set_params(mlpclassifier__warm_start=True, mlpclassifier__max_iter=50)
                tuned.fit(pool.x[fresh], y_pool[fresh])
                lpf.append(judge(ev, tuned.predict)["tests"]["decoy"]["log2_p"])
                fidf.append(float(np.mean(tuned.predict(held.x) == held_labels)))
                if fraction == RAISED and budget == budgets[-1] and seed == 0:
                    keep = ev
            rows.append(
                f"| {fraction:.1%} | {budget:,} | {statistics.median(marked):.0f} | "
                f"{statistics.median(retained):.0%} | {format_p(max(lp))} / "
                f"{format_p(statistics.median(lp))} | {format_p(statistics.median(lpc))} | "
                f"{format_p(statistics.median(lpf))} | {statistics.median(fid):.3f} | "
                f"{statistics.median(fidf):.3f} |")
            print(rows[-1], flush=True)
    return rows, keep


def independents(ev: Evidence, x_train: Array, y_train: Array) -> list[str]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    p = []
    for i in range(20):
        if i % 2:
            model = mlp(200 + i, hidden=(32, 48, 64, 128)[i % 4])
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(
                C=(0.03, 0.1, 0.3, 1.0, 3.0)[i % 5], max_iter=500))
        model.fit(x_train, y_train)
        p.append(judge(ev, model.predict)["tests"]["decoy"]["p_value"])
    accused = sum(v <= 1e-3 for v in p)
    return [f"20 independent models vs {len(ev.watermark)} recorded watermark inputs: smallest "
            f"p = {min(p):.3g}, median p = {statistics.median(p):.3g}, "
            f"p <= 1e-3 for {accused} of 20 (target: none)"]


def benign_cost(victim: Any, x_test: Array, y_test: Array, keys: int = 40) -> list[str]:
    """Top-1 accuracy of honest answers on the held-out rows, without and with the
    watermark, averaged over `keys` secrets (each marks other rows): 40 x 450 answers."""
    clean = float(np.mean(victim.predict(x_test) == y_test))
    marked = statistics.mean(
        float(np.mean(victim.classes_[watermarked(victim, DEFAULT, 1000 + k).ask(
            x_test).labels] == y_test)) for k in range(keys))
    return [f"benign top-1 accuracy at {DEFAULT:.1%} ({keys} keys x {len(x_test)} held-out "
            f"answers): {clean:.4f} -> {marked:.4f}, cost {100 * (clean - marked):.2f} points "
            f"(target <= 0.5; expected {100 * DEFAULT * clean:.2f})"]


def selection_cost(victim: Any, x: Array) -> list[str]:
    marker = watermarked(victim, DEFAULT, 0).marker
    top = np.zeros(64, dtype=np.int64)
    batch = x[:64].astype(np.float32)
    best = float("inf")
    for _ in range(20):
        t = time.perf_counter()
        for _ in range(20):
            marker.select(batch, top, 10)
        best = min(best, (time.perf_counter() - t) / (20 * 64) * 1e6)
    return [f"choosing marked rows: {best:.2f} µs per row (HMAC-SHA256 per row)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", default="1000,2000,5000")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    warnings.simplefilter("ignore")  # lbfgs stopping at max_iter is the budgeted training
    with threadpool_limits(1):
        x, y = load_digits(return_X_y=True)
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25,
                                                            random_state=0, stratify=y)
        victim = mlp(0).fit(x_train, y_train)
        full = Pool("digits", x, y)
        pool, held = full.split(0.25, 0)
        assert pool.y is not None
        started = time.perf_counter()
        print("## Watermark: label-only Knockoff thief, decoy test with <= 500 queries\n")
        rows, ev = thieves(victim, pool, held, budgets, args.seeds, pool.y)
        print("\n".join(["", *rows, ""]))
        lines = []
        if ev is not None:
            lines += independents(ev, x_train, y_train)
        lines += benign_cost(victim, x_test, y_test)
        lines += selection_cost(victim, x)
        print("\n".join(f"- {line}" for line in lines))
        print(f"\n(target: thief p <= 2^{TARGET_LOG2_P:.0f}; {args.seeds} seeds; "
              f"{time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

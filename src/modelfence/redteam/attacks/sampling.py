"""Attacks that sample their queries: Knockoff random, uniform random, uncertainty sampling.

These are the baselines a budget must hold against. Knockoff with random selection
(Orekondy et al., "Knockoff Nets", CVPR 2019) is the strongest of them when the attacker
has natural data; uniform noise inside the feature ranges is what an attacker without data
can do (measured: ART's uniform-noise thief stole far less); uncertainty sampling (active
learning, as in Chandrasekaran et al., USENIX Security 2020) asks where the thief's own
copy is least sure, which spends a small budget better.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..data import Pool
from ..victims import Recorder
from .base import Attack, fit_proxy, proxy_proba

Array = np.ndarray[Any, Any]


class KnockoffRandom(Attack):
    """Pool rows in random order; past the pool's end, jittered pool rows."""

    kind = "random"
    title = "Knockoff (random)"
    reference = "Orekondy et al., Knockoff Nets, CVPR 2019"

    def collect(self, rec: Recorder, pool: Pool) -> None:
        order = self.rng.permutation(len(pool.x))
        n = min(rec.remaining, len(order))
        rec.ask(pool.x[order[:n]])
        if rec.remaining:
            rec.ask(self.jitter(pool, rec.remaining))


class UniformRandom(Attack):
    """Uniform rows inside the pool's per-feature ranges: an attacker with no data."""

    kind = "uniform"
    title = "uniform random"
    reference = "Tramèr et al., USENIX Security 2016 (random queries)"

    def collect(self, rec: Recorder, pool: Pool) -> None:
        rec.ask(self.uniform(pool, rec.remaining))


class ActiveLearning(Attack):
    """Uncertainty sampling: rounds of the pool rows with the smallest top-2 margin.

    A logistic proxy retrained each round ranks the unqueried pool; ten rounds keep the
    proxy's cost well under the thief's. Seed rows are random.
    """

    kind = "active"
    title = "active learning (uncertainty)"
    reference = "Chandrasekaran et al., Exploring connections between active learning " \
                "and model extraction, USENIX Security 2020"
    ROUNDS = 10

    def collect(self, rec: Recorder, pool: Pool) -> None:
        k = rec.oracle.n_classes
        order = self.rng.permutation(len(pool.x))
        total = rec.remaining
        step = max(10, math.ceil(total / self.ROUNDS))
        seed_n = min(total, len(order), max(2 * k, step))
        rec.ask(pool.x[order[:seed_n]])
        unused = np.ones(len(pool.x), dtype=bool)
        unused[order[:seed_n]] = False
        while rec.remaining and unused.any():
            x, labels, _ = rec.transcript()
            proxy = fit_proxy(x, labels, self.seed)
            candidates = np.nonzero(unused)[0]
            n = min(step, rec.remaining, len(candidates))
            if proxy is None:
                pick = self.rng.choice(candidates, n, replace=False)
            else:
                p = np.sort(proxy_proba(proxy, pool.x[candidates], k), axis=1)
                margin = p[:, -1] - p[:, -2]
                pick = candidates[np.argsort(margin, kind="stable")[:n]]
            unused[pick] = False
            rec.ask(pool.x[pick])
        if rec.remaining:
            rec.ask(self.jitter(pool, rec.remaining))

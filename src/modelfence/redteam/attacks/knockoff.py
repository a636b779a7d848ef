"""Knockoff Nets with adaptive selection (Orekondy et al., CVPR 2019).

The attacker does not know which parts of its pool the victim cares about, so it learns
that while stealing: the pool is clustered (the paper uses the pool's coarse labels; here
k-means stands in for them), a gradient bandit picks clusters, and a cluster is rewarded
when the victim's answers there surprise the thief's current copy (the paper's "loss"
reward). Rewards use a cheap logistic proxy refreshed every round rather than the thief
itself, which keeps one run near the cost of random selection.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..data import Pool
from ..victims import Recorder
from .base import Attack, fit_proxy, proxy_proba

Array = np.ndarray[Any, Any]


class KnockoffAdaptive(Attack):
    kind = "adaptive"
    title = "Knockoff (adaptive)"
    reference = "Orekondy et al., Knockoff Nets, CVPR 2019 (adaptive strategy)"
    ROUNDS = 12
    LEARNING_RATE = 0.5

    def collect(self, rec: Recorder, pool: Pool) -> None:
        k = rec.oracle.n_classes
        clusters = self._clusters(pool, k)
        n_arms = int(clusters.max()) + 1
        members = [list(self.rng.permutation(np.nonzero(clusters == a)[0]))
                   for a in range(n_arms)]
        prefs = np.zeros(n_arms)
        baseline = 0.0
        seen = 0
        step = max(10, math.ceil(rec.remaining / self.ROUNDS))
        proxy: Any = None
        while rec.remaining and any(members):
            alive = np.array([bool(m) for m in members])
            policy = np.where(alive, np.exp(prefs - prefs[alive].max()), 0.0)
            policy /= policy.sum()
            n = min(step, rec.remaining, sum(len(m) for m in members))
            arms, rows = self._draw(members, policy, n)
            answers = rec.ask(pool.x[rows])
            if proxy is not None:
                reward = self._reward(proxy, pool.x[rows], answers.labels, answers.proba, k)
                for arm, r in zip(arms, reward, strict=True):
                    seen += 1
                    baseline += (r - baseline) / seen
                    prefs -= self.LEARNING_RATE * (r - baseline) * policy
                    prefs[arm] += self.LEARNING_RATE * (r - baseline)
            x, labels, _ = rec.transcript()
            proxy = fit_proxy(x, labels, self.seed)
        if rec.remaining:
            rec.ask(self.jitter(pool, rec.remaining))

    def _clusters(self, pool: Pool, k: int) -> Array:
        from sklearn.cluster import KMeans

        n = min(max(2 * k, 8), 30, len(pool.x))
        scale = pool.x.std(axis=0)
        z = (pool.x - pool.x.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
        labels: Array = KMeans(n_clusters=n, n_init=1, random_state=self.seed).fit_predict(z)
        return labels

    def _draw(self, members: list[list[int]], policy: Array, n: int) -> tuple[list[int],
                                                                           list[int]]:
        arms: list[int] = []
        rows: list[int] = []
        p = policy.copy()
        while len(rows) < n:
            arm = int(self.rng.choice(len(p), p=p))
            rows.append(members[arm].pop())
            arms.append(arm)
            if not members[arm]:
                p[arm] = 0.0
                if p.sum() <= 0:
                    break
                p /= p.sum()
        return arms, rows

    def _reward(self, proxy: Any, x: Array, labels: Array, proba: Array | None,
                k: int) -> Array:
        """How much the proxy was wrong: 1 - p(label), or total variation with soft answers."""
        guess = proxy_proba(proxy, x, k)
        if proba is None:
            out: Array = 1.0 - guess[np.arange(len(x)), labels]
            return out
        out = 0.5 * np.abs(guess - proba).sum(axis=1)
        return out

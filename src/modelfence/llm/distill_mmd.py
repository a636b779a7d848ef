"""The reference sample of a model's benign prompts and the MMD test against it.

The reference is a reservoir of recent prompts across the model's callers in which no
principal holds more than `caller_share` of the places (a thief cannot become the benign
traffic it is tested against); only prompts whose windows passed the test enter it (see
distill.py), and a file of example prompts can warm-start it. Until it holds `min_reference`
prompts from `min_callers` principals, there is no test: no evidence either way.

The statistic is the biased MMD² (Gretton et al. 2012) with an RBF kernel whose width is the
median distance between reference prompts. Its null is fitted to the reference itself:
`null_draws` windows drawn from the reference are tested against the rest, a gamma
distribution is fitted to their MMD² by moments (the usual approximation of the MMD null,
Gretton et al. 2009), and the threshold is its (1 - false_alarm) quantile raised by `margin`.
The fit is redone every `recalibrate_every` admitted prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..extras import require

F32 = npt.NDArray[np.float32]
FILE_OWNER = "\x00reference-file"  # the warm-start file's prompts (no cap; counts as callers)


@dataclass(frozen=True, slots=True)
class NullFit:
    """The fitted null of MMD² for windows of `window` prompts."""

    window: int
    shape: float
    scale: float
    threshold: float  # MMD² above this: the window differs (already raised by the margin)
    gamma_inv: float  # the kernel's 1 / (2 sigma²)
    draws_over: float  # share of the null draws themselves over the threshold

    def p_value(self, stat: float, margin: float) -> float:
        from scipy.stats import gamma

        return float(gamma.sf(stat / (1.0 + margin), self.shape, scale=self.scale))


class Reference:
    """A capped reservoir of benign prompt embeddings, and the MMD test against it."""

    def __init__(self, size: int, dim: int, *, caller_cap: int, seed: int = 0) -> None:
        self.size, self.cap = size, max(1, caller_cap)
        self.vectors = np.zeros((size, dim), dtype=np.float32)
        self.owner: list[str | None] = [None] * size
        self.stamp = np.zeros(size, dtype=np.int64)
        self._slots: dict[str, list[int]] = {}  # owner → its slots, oldest first
        self._count = 0
        self._clock = 0
        self.changed = 0  # admissions since the last fit
        self.fit: NullFit | None = None
        self._rng = np.random.default_rng(seed)
        self._kyy_mean = 0.0

    def __len__(self) -> int:
        return self._count

    def callers(self) -> int:
        """Distinct principals held (the warm-start file counts as `min_callers`)."""
        return len(self._slots)

    def has_file(self) -> bool:
        return FILE_OWNER in self._slots

    def add(self, owner: str, vector: F32) -> None:
        """Admit one prompt; an owner at its cap replaces its own oldest, a full reservoir
        its oldest prompt."""
        slots = self._slots.setdefault(owner, [])
        if owner != FILE_OWNER and len(slots) >= self.cap:
            slot = slots.pop(0)
        elif self._count < self.size:
            slot = self._count
            self._count += 1
        else:
            slot = int(np.argmin(self.stamp))
            old = self.owner[slot]
            if old is not None:
                held = self._slots[old]
                held.remove(slot)
                if not held:
                    del self._slots[old]
        self._clock += 1
        self.vectors[slot] = vector
        self.owner[slot] = owner
        self.stamp[slot] = self._clock
        slots.append(slot)
        self.changed += 1

    def calibrate(self, window: int, draws: int, false_alarm: float, margin: float) -> NullFit:
        """Fit the null of MMD² for `window`-prompt windows to the reference as it is now."""
        require("llm", "distillation detection", "scipy")
        from scipy.stats import gamma

        y = self.vectors[:self._count]
        n = len(y)
        d2 = np.maximum(2.0 - 2.0 * (y @ y.T), 0.0)
        upper = d2[np.triu_indices(n, 1)]
        sigma2 = float(np.median(upper)) if upper.size else 1.0
        gamma_inv = 1.0 / max(sigma2, 1e-6)  # exp(-d² / median d²): 2 sigma^2 = median d²
        k = np.exp(-d2 * gamma_inv)
        rows = k.sum(axis=1)
        total = float(rows.sum())
        self._kyy_mean = total / (n * n)
        stats = np.empty(draws)
        m, rest = window, n - window
        for i in range(draws):
            s = self._rng.choice(n, size=m, replace=False)
            kss = float(k[np.ix_(s, s)].sum())
            ksr = float(rows[s].sum()) - kss
            krr = total - 2.0 * float(rows[s].sum()) + kss
            stats[i] = kss / (m * m) + krr / (rest * rest) - 2.0 * ksr / (m * rest)
        mean, var = float(stats.mean()), float(stats.var(ddof=1))
        shape = mean * mean / max(var, 1e-18)
        scale = max(var, 1e-18) / max(mean, 1e-12)
        threshold = float(gamma.isf(false_alarm, shape, scale=scale)) * (1.0 + margin)
        over = float((stats > threshold).mean())
        self.fit = NullFit(window, shape, scale, threshold, gamma_inv, over)
        self.changed = 0
        return self.fit

    def mmd2(self, x: F32) -> float:
        """Biased MMD² between the window `x` [m, d] and the whole reference."""
        assert self.fit is not None
        y = self.vectors[:self._count]
        g = self.fit.gamma_inv
        kxx = np.exp(-np.maximum(2.0 - 2.0 * (x @ x.T), 0.0) * g)
        kxy = np.exp(-np.maximum(2.0 - 2.0 * (x @ y.T), 0.0) * g)
        return float(kxx.mean()) + self._kyy_mean - 2.0 * float(kxy.mean())

    def mean_similarity(self) -> float:
        """Mean cosine between two reference prompts: how broad benign traffic is."""
        y = self.vectors[:self._count]
        n = len(y)
        if n < 2:
            return 0.0
        s = y.sum(axis=0)
        return float((s @ s - n) / (n * (n - 1)))

    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.stamp.nbytes + 8 * self.size
                   + 64 * len(self._slots))

"""Torch thieves (the [torch] extra): an MLP, and a small CNN for image-shaped inputs.

torch is imported only when one of these is asked for, with a message naming the extra
when it is missing. Training is pinned to one thread (measured: the default thread pool made
a small MLP 25 times slower on these machines) and seeded, so runs repeat exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from .thieves import Thief, soft_targets

Array = np.ndarray[Any, Any]
EPOCHS = 60
BATCH = 128


def require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ConfigurationError("the torch thieves need the [torch] extra: "
                                 "pip install 'modelfence[torch]'") from None
    return torch


class TorchThief(Thief):
    """`kind` is ``mlp`` or ``cnn``; a CNN needs a square number of features (an image)."""

    def __init__(self, kind: str, seed: int, *, n_features: int | None = None) -> None:
        super().__init__(seed)
        self.kind = kind
        self.name = f"{kind.upper()} (torch)"
        self._torch = require_torch()
        if kind == "cnn" and n_features is not None and math.isqrt(n_features) ** 2 != n_features:
            raise ConfigurationError(f"the CNN thief needs square images; the model takes "
                                     f"{n_features} features")
        self._net: Any = None
        self._mean: Array = np.zeros(1)
        self._scale: Array = np.ones(1)

    def _build(self, d: int, k: int) -> Any:
        nn = self._torch.nn
        if self.kind == "mlp":
            return nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, k))
        side = math.isqrt(d)
        if side * side != d:
            raise ConfigurationError(f"the CNN thief needs square images; got {d} features")
        return nn.Sequential(
            nn.Unflatten(1, (1, side, side)),
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(128, k))

    def _tensor(self, x: Array) -> Any:
        z = (x - self._mean) / self._scale
        return self._torch.as_tensor(z, dtype=self._torch.float32)

    def _fit(self, x: Array, labels: Array, proba: Array | None, n_classes: int) -> None:
        torch = self._torch
        torch.set_num_threads(1)
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        self._mean = x.mean(axis=0)
        self._scale = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        if self.kind == "cnn":  # one scale for the whole image keeps pixels comparable
            self._mean, self._scale = np.asarray(x.mean()), np.asarray(x.std() or 1.0)
        self._net = self._build(x.shape[1], n_classes)
        xt = self._tensor(x)
        if proba is not None:
            target = torch.softmax(torch.as_tensor(soft_targets(proba), dtype=torch.float32), 1)
        else:
            target = torch.as_tensor(labels, dtype=torch.long)
        opt = torch.optim.Adam(self._net.parameters(), lr=3e-3, weight_decay=1e-4)
        self._net.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), BATCH):
                idx = order[start:start + BATCH]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(self._net(xt[idx]), target[idx])
                loss.backward()
                opt.step()

    def _predict(self, x: Array) -> Array:
        torch = self._torch
        self._net.eval()
        with torch.no_grad():
            return np.asarray(self._net(self._tensor(x)).argmax(1).numpy(), dtype=np.int64)

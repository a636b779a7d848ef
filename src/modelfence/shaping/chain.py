"""Defenses in sequence, written ``rsig:0.9,1.1+noise:0.5``: each step shapes the last one's
answer. Every step keeps the top-1 class (misinformation only off-distribution), so a chain
of them does too, and costs the sum of its steps. Typical: misinformation for what is off
the data, then reverse sigmoid for the rest (``misinfo+rsig:0.95,1.05``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigurationError
from .base import Array, Defense


class Chain(Defense):
    """Apply `steps` in order, with one shared check of the inputs."""

    kind = "chain"

    def __init__(self, steps: Sequence[Defense]) -> None:
        if len(steps) < 2:
            raise ConfigurationError("a chain of defenses needs at least two steps")
        self.steps = tuple(steps)
        self.uses_inputs = any(s.uses_inputs for s in self.steps)  # type: ignore[misc]

    def check(self, n_classes: int) -> None:
        for step in self.steps:
            step.check(n_classes)

    def _shape(self, p: Array, inputs: Any, principal: str) -> Array:
        for step in self.steps:
            p = step._shape(p, inputs, principal)
        return p

    @property
    def spec(self) -> str:
        return "+".join(s.spec for s in self.steps)

    @property
    def description(self) -> str:
        return ", then ".join(s.description for s in self.steps)

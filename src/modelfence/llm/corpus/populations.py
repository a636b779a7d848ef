"""A half of the corpus: its protected deployments and every caller, from its own seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import attackers, data, honest
from .callers import Caller

#: Each half's own seed (nothing random is shared between halves either).
SEEDS = {"dev": 17_001, "test": 17_002, "holdout": 17_003}


@dataclass(frozen=True)
class CorpusHalf:
    half: str
    systems: tuple[data.SystemPrompt, ...]  # one deployment (model) per system prompt
    callers: tuple[Caller, ...]

    def system(self, model: str) -> data.SystemPrompt | None:
        return next((s for s in self.systems if s.name == model), None)

    def of(self, population: str) -> list[Caller]:
        return [c for c in self.callers if c.population == population]


def build(half: str, seed: int | None = None) -> CorpusHalf:
    """Every caller of `half` ("dev" or "test"); same seed, same corpus."""
    systems = data.system_prompts(half)
    rng = np.random.default_rng(SEEDS[data._half(half)] if seed is None else seed)
    models = [s.name for s in systems]
    users = honest.users(half, models, rng)
    hide_in = next(c.tenant for c in users if c.group == "tenant-10" and c.tenant)
    callers = [*users, *attackers.distillers(half, models, hide_in, rng),
               *attackers.thieves(half, systems, rng),
               *attackers.probers(half, models[-1], rng),
               *attackers.beyond(half, systems, rng)]
    return CorpusHalf(half, systems, tuple(callers))

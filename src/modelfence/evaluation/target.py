"""One row of an efficacy corpus's report: a target, its goal, its median and worst value,
and whether it was met. Shared by the classifier corpus and the LLM corpus, so both reports
keep the same columns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    half: str
    name: str
    goal: str
    median: str
    worst: str
    met: bool | None  # None: reported only
    note: str = ""

    @property
    def verdict(self) -> str:
        return "reported" if self.met is None else "PASS" if self.met else "MISS"

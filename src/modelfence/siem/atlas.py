"""MITRE ATLAS techniques that modelfence's alerts stand for, with their tactics.

Ids and names as ATLAS publishes them (atlas.mitre.org, atlas-data, 2025-2026 releases, where
"ML" became "AI" in the names). A finding names the most specific technique that fits and its
parent, so a SIEM rule on either matches.
"""

from __future__ import annotations

from dataclasses import dataclass

#: tactic id -> name
TACTICS: dict[str, str] = {
    "AML.TA0000": "AI Model Access",
    "AML.TA0004": "Initial Access",
    "AML.TA0005": "Execution",
    "AML.TA0010": "Exfiltration",
    "AML.TA0011": "Impact",
}


@dataclass(frozen=True, slots=True)
class Technique:
    uid: str
    name: str
    tactic: str  # the tactic's id, a key of TACTICS

    @property
    def parent(self) -> str | None:
        """The technique a sub-technique (`AML.T0024.002`) belongs to."""
        return self.uid.rsplit(".", 1)[0] if self.uid.count(".") == 2 else None


_ALL = [
    Technique("AML.T0040", "AI Model Inference API Access", "AML.TA0000"),
    Technique("AML.T0024", "Exfiltration via AI Inference API", "AML.TA0010"),
    Technique("AML.T0024.000", "Infer Training Data Membership", "AML.TA0010"),
    Technique("AML.T0024.002", "Extract AI Model", "AML.TA0010"),
    Technique("AML.T0025", "Exfiltration via Cyber Means", "AML.TA0010"),
    Technique("AML.T0051", "LLM Prompt Injection", "AML.TA0005"),
    Technique("AML.T0051.000", "Direct", "AML.TA0005"),
    Technique("AML.T0056", "Extract LLM System Prompt", "AML.TA0010"),
    Technique("AML.T0010", "AI Supply Chain Compromise", "AML.TA0004"),
    Technique("AML.T0010.003", "Model", "AML.TA0004"),
    Technique("AML.T0034", "Cost Harvesting", "AML.TA0011"),
]
TECHNIQUES: dict[str, Technique] = {t.uid: t for t in _ALL}

#: what each kind of alert stands for, most specific first
BY_KIND: dict[str, tuple[str, ...]] = {
    # a caller querying a classifier to copy it (the extraction monitor)
    "extraction": ("AML.T0024.002", "AML.T0024", "AML.T0040"),
    # a caller copying an LLM by its answers (distillation, logprob probes, volume)
    "llm_extraction": ("AML.T0024.002", "AML.T0024", "AML.T0040"),
    "llm_injection": ("AML.T0051.000", "AML.T0051"),
    "llm_system_prompt": ("AML.T0056",),
    # a principal downloading model artefacts beyond its habit: the insider's copy
    "download": ("AML.T0025",),
    # a model artefact that failed its signature or scan
    "artifact": ("AML.T0010.003", "AML.T0010"),
    # a query budget crossed: volume that copying takes
    "budget": ("AML.T0040", "AML.T0034"),
    # an ε budget spent: what membership inference asks
    "privacy": ("AML.T0024.000", "AML.T0024"),
    # `modelfence siem test`: checks the path, stands for no attack
    "test": (),
}

#: the LLM risk book's evidence kinds -> the alert kind they stand for
_LLM_PARTS = {"leak": "llm_system_prompt", "extraction": "llm_system_prompt",
              "injection": "llm_injection", "probe": "llm_extraction",
              "sampling": "llm_extraction", "clamp": "llm_extraction",
              "volume": "llm_extraction", "distill": "llm_extraction"}


def techniques(kind: str) -> list[Technique]:
    """The techniques of one kind of alert; an unknown kind is a programming error."""
    return [TECHNIQUES[uid] for uid in BY_KIND[kind]]


def llm_kinds(parts: list[str]) -> list[str]:
    """The alert kinds an LLM risk's evidence names (`leak`, `injection`, ...), strongest
    evidence first; extraction when it names none this module knows."""
    kinds: list[str] = []
    for part in parts:
        kind = _LLM_PARTS.get(part)
        if kind is not None and kind not in kinds:
            kinds.append(kind)
    return kinds or ["llm_extraction"]

"""One alert as a security team reads it: what happened, to which model, by whom, how bad.

Each source of alerts (the extraction monitor, the LLM risk book, budgets, privacy budgets,
artefact downloads, artefact checks) makes a `Finding` with one call; `ocsf.detection_finding`
turns it into the JSON every destination receives.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..risk import Alert
from . import atlas

#: OCSF severity_id
INFORMATIONAL, LOW, MEDIUM, HIGH, CRITICAL = 1, 2, 3, 4, 5

_PART = re.compile(r"([a-z_]+) [0-9.]+")


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # a key of atlas.BY_KIND
    title: str
    description: str
    severity: int
    model: str | None = None
    principal: str | None = None
    tenant: str | None = None
    risk: float | None = None  # in [0, 1], when a detector scored it
    details: dict[str, Any] = field(default_factory=dict)
    also: tuple[str, ...] = ()  # further kinds whose techniques it carries too
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: float = field(default_factory=time.time)

    def techniques(self) -> list[atlas.Technique]:
        seen: dict[str, atlas.Technique] = {}
        for kind in (self.kind, *self.also):
            for t in atlas.techniques(kind):
                seen.setdefault(t.uid, t)
        return list(seen.values())


def _risk_severity(risk: float) -> int:
    return CRITICAL if risk >= 0.9 else HIGH if risk >= 0.7 else MEDIUM


def from_risk_alert(alert: Alert, *, llm: bool) -> Finding:
    """The extraction monitor's or the LLM risk book's alert (an episode's start)."""
    if llm:
        kinds = atlas.llm_kinds(_PART.findall(alert.explanation))
        title = {"llm_injection": "LLM prompt injection",
                 "llm_system_prompt": "LLM system prompt extraction"}.get(
            kinds[0], "LLM extraction")
    else:
        kinds, title = ["extraction"], "Model extraction"
    who = f"{alert.kind} {alert.subject}"
    return Finding(
        kind=kinds[0], also=tuple(kinds[1:]), severity=_risk_severity(alert.risk),
        title=f"{title} suspected: {who} on {alert.model}", description=alert.describe(),
        model=alert.model, principal=alert.subject if alert.kind == "principal" else None,
        tenant=alert.tenant, risk=alert.risk,
        details={"subject_kind": alert.kind, "subject": alert.subject,
                 "queries": alert.queries, "explanation": alert.explanation,
                 "tenant_risk": alert.tenant_risk})


def budget(principal: str, tenant: str | None, model: str, description: str) -> Finding:
    return Finding(kind="budget", severity=LOW, title=f"Query budget alert: {principal} on "
                   f"{model}", description=description, model=model, principal=principal,
                   tenant=tenant)


def privacy(principal: str, tenant: str | None, model: str, description: str,
            spent: float, limit: float) -> Finding:
    return Finding(kind="privacy", severity=MEDIUM, title=f"Privacy budget alert on {model}",
                   description=description, model=model, principal=principal,
                   tenant=tenant, details={"epsilon_spent": spent, "epsilon_budget": limit})


def download(principal: str, tenant: str | None, model: str | None,
             description: str) -> Finding:
    return Finding(kind="download", severity=HIGH, title=f"Unusual model artefact download "
                   f"by {principal}", description=description, model=model,
                   principal=principal, tenant=tenant)


def test() -> Finding:
    """What `modelfence siem test` sends: informational, no technique, says what it is."""
    return Finding(kind="test", severity=INFORMATIONAL, title="modelfence SIEM test finding",
                   description="sent by `modelfence siem test` to check that findings arrive; "
                   "no attack")


def artifact(model: str, description: str) -> Finding:
    return Finding(kind="artifact", severity=CRITICAL, title=f"Model artefact refused: "
                   f"{model}", description=description, model=model)

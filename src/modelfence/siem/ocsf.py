"""A `Finding` as an OCSF Detection Finding (class 2004, category Findings), OCSF 1.3.

SIEMs that speak OCSF (Splunk's OCSF add-on, Amazon Security Lake, Sentinel's parsers) read
these fields as they read any vendor's findings: `finding_info.attacks` carries the ATLAS
techniques and tactics, `actor.user` the principal, `resources` the model. What OCSF has no
place for is under `unmapped`.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from .atlas import TACTICS
from .finding import Finding

OCSF_VERSION = "1.3.0"
CLASS_UID, CATEGORY_UID, ACTIVITY_CREATE = 2004, 2, 1
_DESC_MAX = 2000  # the whole message stays within syslog's common 8 KiB limit
_SEVERITY = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High",
             5: "Critical", 6: "Fatal"}
_ANALYTIC = {"extraction": ("extraction monitor", 3, "Statistical"),
             "llm_extraction": ("LLM risk book", 2, "Behavioral"),
             "llm_injection": ("LLM risk book", 2, "Behavioral"),
             "llm_system_prompt": ("LLM risk book", 2, "Behavioral"),
             "download": ("download watch", 2, "Behavioral"),
             "artifact": ("artifact checks", 1, "Rule"),
             "budget": ("query budgets", 1, "Rule"),
             "privacy": ("privacy budgets", 1, "Rule"),
             "test": ("siem test", 99, "Other")}


def detection_finding(f: Finding) -> dict[str, Any]:
    ms = int(f.time * 1000)
    name, type_id, type_name = _ANALYTIC[f.kind]
    techniques = f.techniques()
    attacks = [{"technique": {"uid": t.uid, "name": t.name},
                "tactic": {"uid": t.tactic, "name": TACTICS[t.tactic]}} for t in techniques]
    doc: dict[str, Any] = {
        "class_uid": CLASS_UID, "class_name": "Detection Finding",
        "category_uid": CATEGORY_UID, "category_name": "Findings",
        "activity_id": ACTIVITY_CREATE, "activity_name": "Create",
        "type_uid": CLASS_UID * 100 + ACTIVITY_CREATE, "type_name": "Detection Finding: Create",
        "severity_id": f.severity, "severity": _SEVERITY[f.severity],
        "status_id": 1, "status": "New",
        "time": ms,
        "message": f.title,
        "metadata": {"version": OCSF_VERSION, "uid": f.uid,
                     "product": {"name": "modelfence", "vendor_name": "modelfence",
                                 "version": __version__}},
        "finding_info": {"uid": f.uid, "title": f.title, "desc": f.description[:_DESC_MAX],
                         "created_time": ms, "types": [f.kind],
                         "analytic": {"name": name, "type_id": type_id, "type": type_name,
                                      "uid": f.kind},
                         "attacks": attacks},
        "unmapped": {"atlas": [t.uid for t in techniques], "kind": f.kind, **f.details},
    }
    if f.principal is not None:
        doc["actor"] = {"user": {"name": f.principal, "uid": f.principal}}
    if f.model is not None:
        doc["resources"] = [{"type": "AI Model", "name": f.model, "uid": f.model}]
    if f.tenant is not None:
        doc["unmapped"]["tenant"] = f.tenant
    if f.risk is not None:
        doc["risk_score"] = round(f.risk * 100)
        doc["unmapped"]["risk"] = round(f.risk, 4)
    return doc

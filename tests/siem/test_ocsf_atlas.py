"""A finding's OCSF shape and the ATLAS techniques each kind of alert carries."""

from __future__ import annotations

import re

import orjson
import pytest

from modelfence.risk import Alert
from modelfence.siem import atlas
from modelfence.siem.finding import artifact, download, from_risk_alert
from modelfence.siem.ocsf import detection_finding

TECHNIQUE = re.compile(r"^AML\.T\d{4}(\.\d{3})?$")
TACTIC = re.compile(r"^AML\.TA\d{4}$")


def thief_alert(model: str = "digits", explanation: str = "uniform rows 0.93") -> Alert:
    return Alert(model=model, kind="principal", subject="mallory", tenant="acme", risk=0.93,
                 queries=812, explanation=explanation)


def test_every_kind_names_well_formed_known_techniques_with_their_tactic() -> None:
    for kind, ids in atlas.BY_KIND.items():
        assert ids or kind == "test", kind
        for t in atlas.techniques(kind):
            assert TECHNIQUE.match(t.uid) and TACTIC.match(t.tactic), (kind, t)
            assert t.tactic in atlas.TACTICS
            if t.parent is not None:  # a sub-technique's parent is known too
                assert t.parent in atlas.TECHNIQUES


def test_extraction_alert_is_a_detection_finding_with_atlas_model_extraction() -> None:
    doc = detection_finding(from_risk_alert(thief_alert(), llm=False))
    assert (doc["class_uid"], doc["category_uid"], doc["activity_id"]) == (2004, 2, 1)
    assert doc["type_uid"] == 200401
    assert doc["severity_id"] == 5 and doc["severity"] == "Critical"  # risk 0.93
    assert doc["metadata"]["version"].startswith("1.")
    assert doc["metadata"]["product"]["name"] == "modelfence"
    info = doc["finding_info"]
    assert info["uid"] == doc["metadata"]["uid"]
    assert "mallory" in info["title"] and "digits" in info["desc"]
    techniques = [a["technique"]["uid"] for a in info["attacks"]]
    assert techniques[0] == "AML.T0024.002"
    assert {"AML.T0024", "AML.T0040"} <= set(techniques)
    extract = info["attacks"][0]
    assert extract["technique"]["name"] == "Extract AI Model"
    assert extract["tactic"] == {"uid": "AML.TA0010", "name": "Exfiltration"}
    assert doc["actor"]["user"]["name"] == "mallory"
    assert doc["resources"] == [{"type": "AI Model", "name": "digits", "uid": "digits"}]
    assert doc["risk_score"] == 93 and doc["unmapped"]["tenant"] == "acme"
    assert doc["unmapped"]["atlas"] == techniques
    assert abs(doc["time"] / 1000 - info["created_time"] / 1000) < 1
    orjson.dumps(doc)  # plain JSON all through


@pytest.mark.parametrize(("explanation", "first", "also"), [
    ("injection 0.61, volume 0.10", "AML.T0051.000", {"AML.T0024.002"}),
    ("leak 0.80", "AML.T0056", set()),
    ("distill 0.70, probe 0.20", "AML.T0024.002", set()),
    ("no evidence", "AML.T0024.002", set()),
])
def test_llm_alert_names_what_its_evidence_says(explanation: str, first: str,
                                                also: set[str]) -> None:
    doc = detection_finding(from_risk_alert(thief_alert("chat", explanation), llm=True))
    techniques = [a["technique"]["uid"] for a in doc["finding_info"]["attacks"]]
    assert techniques[0] == first
    assert also <= set(techniques)
    assert len(techniques) == len(set(techniques))


def test_insider_download_and_refused_artifact() -> None:
    d = detection_finding(download("bob", None, "digits", "5 downloads in an hour"))
    assert [a["technique"]["uid"] for a in d["finding_info"]["attacks"]] == ["AML.T0025"]
    assert "tenant" not in d["unmapped"]
    a = detection_finding(artifact("digits", "signature does not verify"))
    assert a["finding_info"]["attacks"][0]["technique"]["uid"] == "AML.T0010.003"
    assert a["finding_info"]["attacks"][0]["tactic"]["name"] == "Initial Access"
    assert "actor" not in a


def test_description_is_bounded() -> None:
    long = thief_alert(explanation="x" * 10_000)
    assert len(detection_finding(from_risk_alert(long, llm=False))["finding_info"]["desc"]) \
        == 2000

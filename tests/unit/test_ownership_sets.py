"""Multi-set ownership verification on binary and 3-class models (issue 16).

Several callers hold marked and control answers of one model; a thief (principal
"mallory") trains a copy on its answers. The verdict must convict the copy through the
thief's own set (binary included: the decoy test alone gives p = 1 there), the all-records
test must not hide that conviction, independently trained models must not be accused, and a
verdict that cannot convict must say why in words.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from modelfence.redteam.victims import LocalVictim
from modelfence.watermark.fingerprint import Fingerprint, fit_null
from modelfence.watermark.keyring import Keyring, WatermarkKey
from modelfence.watermark.marking import Watermarker
from modelfence.watermark.oracle import WatermarkedOracle
from modelfence.watermark.stats import bonferroni, fisher_combine, format_p, perfect_copy_log2_p
from modelfence.watermark.store import EvidenceRecord
from modelfence.watermark.suspect import FunctionSuspect
from modelfence.watermark.verify import Evidence, questions_from, verify

Array = np.ndarray[Any, Any]
FEATURES = 10
ALPHA_LOG2 = math.log2(1e-6)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with threadpool_limits(1):
        yield


@dataclass
class World:
    k: int
    x: Array
    y: Array
    victim: Any
    marker: Watermarker
    records: list[EvidenceRecord]
    mallory_x: Array
    mallory_labels: Array

    def evidence(self, principal: str | None = None) -> Evidence:
        rows = [r for r in self.records if principal is None or r.principal == principal]
        return questions_from(rows, model="m", principal=principal, marker=self.marker,
                              cipher=None)

    def oracle(self, principal: str, tenant: str) -> WatermarkedOracle:
        inner = LocalVictim(self.victim.predict_proba, n_classes=self.k, n_features=FEATURES,
                            classes=self.victim.classes_, description="victim",
                            dtype=np.float64)
        return WatermarkedOracle(inner, self.marker, model="m", principal=principal,
                                 tenant=tenant)

    def copy(self, x: Array, labels: Array) -> FunctionSuspect:
        """A thief's copy: a forest fitted to the answers it received."""
        from sklearn.ensemble import RandomForestClassifier

        thief = RandomForestClassifier(100, random_state=1).fit(x, labels)
        return FunctionSuspect(thief.predict, n_features=FEATURES)


def world(k: int, honest_rows: int) -> World:
    """Victim trained on 3,000 rows; mallory (tenant acme) takes 2,000 answers, honest
    alice (acme) and bob (globex) share `honest_rows` more; 1% marked, controls at 10x."""
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier

    n = 5000 + honest_rows
    x, y = make_classification(n_samples=n, n_features=FEATURES, n_informative=6,
                               n_classes=k, n_clusters_per_class=2, random_state=k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs/adam stopping at max_iter
        victim = MLPClassifier((32,), max_iter=400, random_state=0).fit(x[:3000], y[:3000])
    marker = Watermarker(Keyring([WatermarkKey("k1", b"w" * 48)]), lambda risk: 0.01,
                         control_ratio=10)
    w = World(k, x, y, victim, marker, [], x[3000:5000], np.empty(0))
    thief = w.oracle("mallory", "acme")
    w.mallory_labels = victim.classes_[thief.ask(w.mallory_x).labels]
    w.records += thief.records
    half = 5000 + honest_rows // 2
    for (principal, tenant), rows in ((("alice", "acme"), x[5000:half]),
                                      (("bob", "globex"), x[half:])):
        honest = w.oracle(principal, tenant)
        honest.ask(rows)
        w.records += honest.records
    return w


@pytest.fixture(scope="module", params=[2, 3], ids=["binary", "3-class"])
def small(request: pytest.FixtureRequest) -> World:
    return world(request.param, 4000)


def test_a_copy_is_accused_through_its_principal(small: World) -> None:
    doc = verify(small.evidence(), small.copy(small.mallory_x, small.mallory_labels))
    verdict = doc["verdict"]
    assert verdict["accused"], verdict["summary"]
    assert verdict["convicting_set"] == "principal:mallory"
    assert verdict["carried_by"] == ["copy test of principal:mallory"]
    assert verdict["log2_p"] <= -40
    best = doc["tests"]["sets"][0]
    assert best["set"] == "principal:mallory" and best["tested"]
    assert best["mark_disagreements"] == best["marks"] > 5  # it repeats every mark
    assert best["log2_p_adjusted"] == verdict["log2_p"]
    assert verdict["summary"].startswith("the suspect was made from this model's answers")
    assert "principal:mallory" in verdict["summary"]
    names = {s["set"] for s in doc["tests"]["sets"]}
    # bob is the only caller of tenant globex: the same records, tested once
    assert names == {"principal:mallory", "principal:alice", "principal:bob", "tenant:acme",
                     "all"}
    assert next(s for s in doc["tests"]["sets"]
                if s["set"] == "principal:bob")["same_as"] == ["tenant:globex"]
    if small.k == 2:
        # the decoy test alone cannot speak on two classes: every disagreement is the decoy
        assert doc["tests"]["decoy"]["log2_p"] == 0.0
        assert best["n_classes"] == 2 and len(best["parts"]) == 1
    else:
        assert [p["name"] for p in best["parts"]] == ["disagreement test", "decoy test"]


def test_bonferroni_counts_the_sets_tested(small: World) -> None:
    doc = verify(small.evidence(), small.copy(small.mallory_x, small.mallory_labels))
    sets = doc["tests"]["sets"]
    tested = [s for s in sets if s["tested"]]
    assert len(tested) >= 3
    for s in tested:
        assert s["sets_tested"] == len(tested)
        assert s["log2_p_adjusted"] == pytest.approx(bonferroni(s["log2_p"], len(tested)))
    for s in sets:
        if not s["tested"]:  # a set that no copy could convict costs the others nothing
            assert s["best_possible_log2_p"] > ALPHA_LOG2 and s["log2_p_adjusted"] is None


@pytest.fixture(scope="module")
def crowded() -> World:
    """Honest callers hold ten times the thief's answers."""
    return world(2, 20000)


def test_the_all_records_test_cannot_hide_a_per_principal_conviction(crowded: World) -> None:
    doc = verify(crowded.evidence(), crowded.copy(crowded.mallory_x, crowded.mallory_labels))
    sets = {s["set"]: s for s in doc["tests"]["sets"]}
    everyone = sets["all"]
    assert everyone["marks"] > 5 * sets["principal:mallory"]["marks"]
    assert everyone["log2_p_adjusted"] > ALPHA_LOG2  # diluted: it alone would not convict
    assert doc["verdict"]["accused"]
    assert doc["verdict"]["convicting_set"] == "principal:mallory"
    assert sets["principal:mallory"]["log2_p_adjusted"] <= -40
    assert doc["suspect"]["queries"] <= 2000


def test_independent_models_are_not_accused(small: World) -> None:
    from modelfence.watermark.references import train_references

    evidence = small.evidence()
    refs = train_references(small.x[:3000], small.y[:3000], count=10, seed=11)
    log2_ps = []
    for ref in refs:
        doc = verify(evidence, FunctionSuspect(ref.labels, n_features=FEATURES))
        assert not doc["verdict"]["accused"], (ref.name, doc["verdict"]["summary"])
        log2_ps.append(doc["verdict"]["log2_p"])
    assert min(log2_ps) > -10, log2_ps


def test_the_protected_model_itself_is_not_accused(small: World) -> None:
    doc = verify(small.evidence(), FunctionSuspect(small.victim.predict, n_features=FEATURES))
    assert not doc["verdict"]["accused"]
    assert doc["verdict"]["summary"].startswith("no evidence of copying")
    assert all(s["mark_disagreements"] == 0 for s in doc["tests"]["sets"])
    assert doc["verdict"]["reasons"][0].startswith(
        "the suspect disagrees with the protected model on marked inputs about as often")


def test_too_few_marks_is_inconclusive_and_says_why(small: World) -> None:
    eve_x = small.x[3000:3250]
    eve = small.oracle("eve", "acme")
    labels = small.victim.classes_[eve.ask(eve_x).labels]
    evidence = questions_from(eve.records, model="m", principal="eve", marker=small.marker,
                              cipher=None)
    m, c = len(evidence.watermark), len(evidence.control)
    assert 1 <= m <= 6 and c > m
    doc = verify(evidence, small.copy(eve_x, labels))
    verdict = doc["verdict"]
    assert not verdict["accused"]
    (only,) = doc["tests"]["sets"]
    assert only["set"] == "principal:eve" and only["mark_disagreements"] == m
    best = perfect_copy_log2_p(m, c, small.k)
    assert best > ALPHA_LOG2 and only["best_possible_log2_p"] == pytest.approx(best)
    assert verdict["summary"].startswith("inconclusive: too few marked answers to convict "
                                         "even a perfect copy")
    assert verdict["reasons"][0] == (
        f"too few marks: the principal (principal:eve) holds {m} marked answers asked; even a "
        f"perfect copy could reach only p = {format_p(best)} with {m} marks and {c} controls, "
        "above alpha = 1e-06")
    assert "only" not in verdict["summary"] and "inputs;" not in verdict["summary"]
    assert any(r.startswith("fingerprint not run") for r in verdict["reasons"])


def test_the_query_budget_asks_marks_first_and_each_input_once(small: World) -> None:
    evidence = small.evidence()
    suspect = small.copy(small.mallory_x, small.mallory_labels)
    doc = verify(evidence, suspect, max_queries=40)
    assert suspect.asked == 40 == doc["suspect"]["queries"]
    assert doc["evidence"]["asked"] == {"watermark": 20, "control": 20}
    digests = [q["input_sha256"] for q in doc["queries"]]
    assert len(set(digests)) == len(digests)
    assert [q["kind"] for q in doc["queries"]][:20] == ["watermark"] * 20
    # a roomy budget asks every recorded input once, and no more
    total = len(evidence.watermark) + len(evidence.control)
    suspect = small.copy(small.mallory_x, small.mallory_labels)
    doc = verify(evidence, suspect, max_queries=10 * total)
    assert suspect.asked == total
    assert len({q["input_sha256"] for q in doc["queries"]}) == total


def _fingerprint(w: World, agreements: list[int]) -> Fingerprint:
    points = w.x[:60].astype(np.float32).astype(np.float64)
    labels = [str(v) for v in w.victim.predict(points)]
    null = fit_null(agreements, ["lr", "rf", "knn", "lr", "rf", "knn"], len(labels))
    return Fingerprint(points, labels, null, key_id="k1")


def test_the_fingerprint_is_combined_by_fisher(small: World) -> None:
    fp = _fingerprint(small, [12, 14, 11, 13, 10, 12])
    suspect = FunctionSuspect(small.victim.predict, n_features=FEATURES)
    doc = verify(small.evidence(), suspect, fingerprint=fp)
    got = doc["tests"]["fingerprint"]
    assert got["name"] == "fingerprint test" and got["agreements"] == 60
    assert got["points"] == 60 and got["key_id"] == "k1"
    best = doc["tests"]["sets"][0]
    combined = doc["tests"]["combined"]
    assert combined["method"] == "Fisher"
    assert combined["inputs"] == [best["log2_p_adjusted"], got["log2_p"]]
    assert combined["log2_p"] == pytest.approx(fisher_combine(combined["inputs"]))
    assert doc["verdict"]["log2_p"] == combined["log2_p"]
    # the protected model itself answers as it does everywhere: the fingerprint convicts it
    # (a weights copy), with no set convicting
    assert got["log2_p"] < -30 and doc["verdict"]["accused"]
    assert doc["verdict"]["convicting_set"] is None
    assert doc["verdict"]["carried_by"] == ["fingerprint test"]
    assert "the fingerprint" in doc["verdict"]["summary"]
    assert "received" not in doc["verdict"]["summary"]


def test_without_marks_the_fingerprint_alone_decides(small: World) -> None:
    empty = questions_from([], model="m", principal=None, marker=small.marker, cipher=None)
    fp = _fingerprint(small, [12, 14, 11, 13, 10, 12])
    doc = verify(empty, FunctionSuspect(small.victim.predict, n_features=FEATURES),
                 fingerprint=fp)
    assert doc["tests"]["sets"] == [] and doc["tests"]["combined"]["method"] == "single test"
    assert doc["verdict"]["accused"]
    assert doc["verdict"]["reasons"][0] == ("no marked answers of model m are recorded: the "
                                            "watermark test had nothing to ask")
    doc = verify(empty, FunctionSuspect(small.victim.predict, n_features=FEATURES))
    assert not doc["verdict"]["accused"] and doc["tests"]["combined"] is None
    assert doc["verdict"]["summary"] == ("inconclusive: no marked answers of model m are "
                                         "recorded and no fingerprint was given: nothing was "
                                         "tested")

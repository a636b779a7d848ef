"""Ownership verification: ask a suspect the recorded questions, test every set, make the bundle.

1. `gather` reads the evidence records of a model (optionally of one principal), opens
   sealed inputs, and keeps only records whose input matches its digest and whose decoy the
   watermark key derives: the decoys were fixed by the key when the answers were given, not
   chosen after seeing the suspect. Records of the same input merge (every principal and
   tenant who received that answer is named).
2. `verify` asks the suspect each distinct recorded input once, at most `max_queries` of
   them: marks first (at least half the budget when there are more), then controls. Both
   are taken in the order of the inputs' SHA-256, an order independent of the watermark key,
   so every set keeps its share and its marks and controls stay exchangeable (`stats`).
3. Sets: every principal, every tenant, and all records, each with its own marks and the
   controls of the same callers (sets holding the same records are tested once). Each set
   gets the copy test (`stats.copy_test`); a set is tested when even a perfect copy could
   reach alpha with its records, and the p-values are corrected by Bonferroni over the sets
   tested, so neither the all-records test nor a per-principal one can hide the other.
4. The fingerprint (keyed points, no marks needed), when given, is its own test; the
   verdict's p is Fisher's combination of the best set's corrected p and the fingerprint's.

The result is the unsigned bundle (a dict); `bundle.sign` signs it.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigurationError
from .bundle import BUNDLE_TYPE
from .fingerprint import Labeler
from .keyring import EvidenceCipher
from .marking import Watermarker
from .stats import (
    LN2,
    LOG2_P_FLOOR,
    TestResult,
    bonferroni,
    conservative_test,
    copy_test,
    decoy_test,
    fisher_combine,
    format_p,
    perfect_copy_log2_p,
)
from .store import EvidenceRecord, EvidenceStore
from .suspect import Suspect

if TYPE_CHECKING:
    from .fingerprint import Fingerprint

Array = np.ndarray[Any, Any]
DEFAULT_MAX_QUERIES = 2000
DEFAULT_ALPHA = 1e-6
_KIND_ORDER = {"principal": 0, "tenant": 1, "all": 2}


@dataclass
class Question:
    """One distinct input to ask the suspect, with what the gateway answered."""

    kind: str
    digest: str
    row: bytes  # canonical float32 bytes
    key_id: str
    n_classes: int
    model_label: str
    decoy_label: str
    first_us: int
    principals: list[str] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)

    def features(self) -> Array:
        return np.frombuffer(self.row, dtype="<f4").astype(np.float64)


@dataclass
class Evidence:
    model: str
    principal: str | None
    watermark: list[Question]
    control: list[Question]
    excluded: dict[str, int]
    key_ids: list[str]
    records: dict[str, int]


def questions_from(records: Sequence[EvidenceRecord], *, model: str, principal: str | None,
                   marker: Watermarker | None, cipher: EvidenceCipher | None) -> Evidence:
    """Open, check and merge records (see the module's docstring)."""
    excluded: Counter[str] = Counter()
    merged: dict[tuple[str, str], Question] = {}
    for r in sorted(records, key=lambda r: r.time_us):
        row = _open(r, cipher)
        if hashlib.sha256(row).hexdigest() != r.input_sha256 or len(row) != 4 * r.n_features:
            excluded["input does not match its digest"] += 1
            continue
        if marker is not None and not marker.check(r.key_id, row, r.model_index,
                                                   r.decoy_index, r.n_classes):
            excluded["decoy not derived by its watermark key"] += 1
            continue
        q = merged.get((r.kind, r.input_sha256))
        if q is None:
            q = merged[(r.kind, r.input_sha256)] = Question(
                r.kind, r.input_sha256, row, r.key_id, r.n_classes, r.model_label,
                r.decoy_label, r.time_us)
        if r.principal not in q.principals:
            q.principals.append(r.principal)
        if r.tenant not in q.tenants:
            q.tenants.append(r.tenant)
    marked = {d for (kind, d) in merged if kind == "watermark"}
    wm = sorted((q for q in merged.values() if q.kind == "watermark"), key=lambda q: q.digest)
    ctl = sorted((q for q in merged.values() if q.kind == "control" and q.digest not in marked),
                 key=lambda q: q.digest)
    counts = Counter(r.kind for r in records)
    return Evidence(model, principal, wm, ctl, dict(excluded),
                    sorted({r.key_id for r in records}), dict(counts))


def _open(r: EvidenceRecord, cipher: EvidenceCipher | None) -> bytes:
    if r.sealed_by is None:
        return r.input
    if cipher is None or cipher.key_id != r.sealed_by:
        raise ConfigurationError(
            f"evidence inputs are sealed with evidence key {r.sealed_by}; configure "
            "watermark.evidence_key_file with that key")
    return cipher.open(r.input, r.input_sha256)


async def gather(store: EvidenceStore, model: str, *, principal: str | None = None,
                 marker: Watermarker | None, cipher: EvidenceCipher | None) -> Evidence:
    records = await store.records(model, principal=principal)
    return questions_from(records, model=model, principal=principal, marker=marker,
                          cipher=cipher)


@dataclass(frozen=True)
class FingerprintPlan:
    """What a fingerprint is built from when none is given ready-made: the protected model,
    labelled rows of its domain (its training data is best), the fingerprint key; built by
    `fingerprint.build_fingerprint` (references trained on those rows calibrate its null)."""

    protected: Labeler
    x: Array
    y: Array
    key: bytes
    points: int = 200
    calibrators: int = 30
    key_id: str = ""

    def build(self) -> Fingerprint:
        from .fingerprint import build_fingerprint

        return build_fingerprint(self.protected, self.x, self.y, key=self.key,
                                 points=self.points, calibrators=self.calibrators,
                                 key_id=self.key_id)


@dataclass
class RecordSet:
    """The records one group of callers received: marks and controls, as asked."""

    name: str
    kind: str
    marks: list[Question]
    controls: list[Question]
    same_as: list[str] = field(default_factory=list)


def record_sets(evidence: Evidence) -> list[RecordSet]:
    """Every principal, tenant and all records holding at least one mark; a group holding
    the same records as an earlier one is merged into it (named in `same_as`)."""
    if not evidence.watermark:
        return []
    names: list[tuple[str, str]] = []
    if evidence.principal is not None:
        names.append(("principal", evidence.principal))
    else:
        names += [("principal", p) for p in sorted({p for q in evidence.watermark
                                                    for p in q.principals})]
        names += [("tenant", t) for t in sorted({t for q in evidence.watermark
                                                 for t in q.tenants})]
        names.append(("all", "all"))
    out: list[RecordSet] = []
    seen: dict[tuple[frozenset[str], frozenset[str]], RecordSet] = {}
    for kind, name in names:
        marks = [q for q in evidence.watermark if _member(q, kind, name)]
        controls = [q for q in evidence.control if _member(q, kind, name)]
        label = "all" if kind == "all" else f"{kind}:{name}"
        key = (frozenset(q.digest for q in marks), frozenset(q.digest for q in controls))
        if key in seen:
            seen[key].same_as.append(label)
            continue
        seen[key] = RecordSet(label, kind, marks, controls)
        out.append(seen[key])
    return out


def _member(q: Question, kind: str, name: str) -> bool:
    if kind == "principal":
        return name in q.principals
    if kind == "tenant":
        return name in q.tenants
    return True


def plan_queries(evidence: Evidence, max_queries: int) -> tuple[list[Question], list[Question]]:
    """The marks and controls to ask: marks first (at least half the budget when both are
    plentiful), each kind in SHA-256 order (independent of the key); sizes from counts alone."""
    n_wm = min(len(evidence.watermark), max(max_queries // 2, max_queries - len(evidence.control)))
    n_ctl = min(len(evidence.control), max_queries - n_wm)
    return evidence.watermark[:n_wm], evidence.control[:n_ctl]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def verify(evidence: Evidence, suspect: Suspect, *, max_queries: int = DEFAULT_MAX_QUERIES,
           alpha: float = DEFAULT_ALPHA, include_inputs: bool = False,
           fingerprint: Fingerprint | FingerprintPlan | None = None) -> dict[str, Any]:
    """Ask, compare, test: the unsigned evidence bundle."""
    from .. import __version__

    if max_queries < 1:
        raise ConfigurationError("max_queries must be at least 1")
    if not 0 < alpha < 1:
        raise ConfigurationError("alpha must be between 0 and 1")
    started = datetime.now(UTC).timestamp()
    asked_before = suspect.asked
    wm_asked, ctl_asked = plan_queries(evidence, max_queries)
    asked = wm_asked + ctl_asked
    widths = {len(q.row) // 4 for q in asked}
    if len(widths) > 1:
        raise ConfigurationError(f"evidence inputs have different widths {sorted(widths)}")
    if asked and suspect.n_features > 0 and widths != {suspect.n_features}:
        raise ConfigurationError(f"the suspect takes {suspect.n_features} features but the "
                                 f"recorded inputs have {widths.pop()}")
    answers = suspect.labels(np.stack([q.features() for q in asked])) if asked else []
    queries = [_query(q, a, include_inputs) for q, a in zip(asked, answers, strict=True)]
    by_digest = {(q["kind"], q["input_sha256"]): q for q in queries}
    log2_alpha = math.log(alpha) / LN2
    sets = _test_sets(evidence, by_digest, log2_alpha)
    wm = [q for q in queries if q["kind"] == "watermark"]
    ctl = [q for q in queries if q["kind"] == "control"]
    k = min((q.n_classes for q in wm_asked), default=2)
    matches = sum(q["repeats_watermark"] for q in wm)
    disagree = sum(not q["agrees_with_model"] for q in wm)
    ctl_disagree = sum(not q["agrees_with_model"] for q in ctl)
    conservative = conservative_test(matches, len(wm), ctl_disagree, len(ctl))
    fp = _fingerprint(fingerprint, suspect)
    combined = _combined(sets, fp)
    finished = datetime.now(UTC).timestamp()
    return {
        "type": BUNDLE_TYPE, "v": 2, "modelfence": __version__,
        "model": evidence.model, "principal": evidence.principal,
        "started": _iso(started), "finished": _iso(finished),
        "suspect": {"kind": suspect.kind, "description": suspect.description,
                    "sha256": suspect.sha256, "queries": suspect.asked - asked_before},
        "evidence": {"records": evidence.records, "distinct_watermark_inputs":
                     len(evidence.watermark), "distinct_control_inputs": len(evidence.control),
                     "excluded": evidence.excluded, "watermark_keys": evidence.key_ids,
                     "asked": {"watermark": len(wm), "control": len(ctl)},
                     "max_queries": max_queries},
        "queries": queries,
        "tests": {
            "sets": sets, "fingerprint": fp, "combined": combined,
            # over every mark asked, for comparison with the first bundles (not the verdict's)
            "decoy": decoy_test(matches, disagree, k).to_dict() if wm else None,
            "conservative": None if conservative is None else conservative.to_dict()},
        "control": {"asked": len(ctl), "disagreements": ctl_disagree,
                    "decoy_hits": sum(q["suspect_label"] == q["watermark_label"] for q in ctl)},
        "verdict": _verdict(evidence, sets, fp, combined, alpha, fingerprint is not None),
    }


def _query(q: Question, answer: str, include_inputs: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": q.kind, "input_sha256": q.digest, "key_id": q.key_id,
        "principals": q.principals, "tenants": q.tenants,
        "recorded_at": _iso(q.first_us / 1e6), "protected_label": q.model_label,
        "answer_given": q.decoy_label if q.kind == "watermark" else q.model_label,
        "watermark_label": q.decoy_label, "suspect_label": answer,
        "agrees_with_model": answer == q.model_label,
        "repeats_watermark": q.kind == "watermark" and answer == q.decoy_label,
    }
    if include_inputs:
        out["input_f32le_base64"] = base64.b64encode(q.row).decode()
    return out


def _test_sets(evidence: Evidence, asked: dict[tuple[str, str], dict[str, Any]],
               log2_alpha: float) -> list[dict[str, Any]]:
    """The copy test of every set, on the answers to its asked marks and controls."""
    rows = []
    for s in record_sets(evidence):
        wm = [asked[("watermark", q.digest)] for q in s.marks if ("watermark", q.digest) in asked]
        ctl = [asked[("control", q.digest)] for q in s.controls if ("control", q.digest) in asked]
        k = min((q.n_classes for q in s.marks), default=2)
        mark_dis = sum(not q["agrees_with_model"] for q in wm)
        hits = sum(q["repeats_watermark"] for q in wm)
        ctl_dis = sum(not q["agrees_with_model"] for q in ctl)
        result = copy_test(len(wm), mark_dis, hits, len(ctl), ctl_dis, k)
        best = perfect_copy_log2_p(len(wm), len(ctl), k)
        rows.append({
            "set": s.name, "kind": s.kind, "same_as": s.same_as, "n_classes": k,
            "marks_recorded": len(s.marks), "controls_recorded": len(s.controls),
            "marks": len(wm), "controls": len(ctl), "mark_disagreements": mark_dis,
            "decoy_hits": hits, "control_disagreements": ctl_dis,
            "log2_p": max(result.log2_p, LOG2_P_FLOOR), "p_value": result.p_value,
            "best_possible_log2_p": max(best, LOG2_P_FLOOR),
            "tested": bool(wm) and best <= log2_alpha,
            "log2_p_adjusted": None, "p_value_adjusted": None,
            "statement": result.statement,
            "parts": [p.to_dict() for p in result.parts]})
    if rows and not any(r["tested"] for r in rows):
        # no set can reach alpha alone: the one that comes closest is tested (it may still
        # count with the fingerprint), alone
        best_row = min((r for r in rows if r["marks"]), default=None,
                       key=lambda r: (r["best_possible_log2_p"], _KIND_ORDER[r["kind"]]))
        if best_row is not None:
            best_row["tested"] = True
    n = sum(r["tested"] for r in rows)
    for r in rows:
        if r["tested"]:
            r["log2_p_adjusted"] = max(bonferroni(r["log2_p"], n), LOG2_P_FLOOR)
            r["p_value_adjusted"] = _p(r["log2_p_adjusted"])
            r["sets_tested"] = n
    return sorted(rows, key=lambda r: (r["log2_p_adjusted"] is None,
                                       r["log2_p_adjusted"] or 0.0, _KIND_ORDER[r["kind"]],
                                       r["set"]))


def _p(log2_p: float) -> float:
    return 2.0 ** log2_p if log2_p > -1074 else 0.0


def _fingerprint(fingerprint: Fingerprint | FingerprintPlan | None,
                 suspect: Suspect) -> dict[str, Any] | None:
    if fingerprint is None:
        return None
    if isinstance(fingerprint, FingerprintPlan):
        fingerprint = fingerprint.build()
    from .fingerprint import fingerprint_test

    result: TestResult = fingerprint_test(fingerprint, suspect.labels(fingerprint.points))
    return {**result.to_dict(), "points": fingerprint.n, "agreements": result.successes,
            "null_mean_agreement": result.p0, "key_id": fingerprint.key_id,
            "calibration_models": len(fingerprint.calibration)}


def _combined(sets: list[dict[str, Any]], fp: dict[str, Any] | None) -> dict[str, Any] | None:
    tested = [s for s in sets if s["tested"]]
    inputs: list[float] = []
    names: list[str] = []
    if tested:
        inputs.append(tested[0]["log2_p_adjusted"])
        names.append(f"copy test of {tested[0]['set']} (Bonferroni over {len(tested)} sets)")
    if fp is not None:
        inputs.append(fp["log2_p"])
        names.append(str(fp.get("name", "fingerprint")))
    if not inputs:
        return None
    log2_p = max(fisher_combine(inputs), LOG2_P_FLOOR)
    return {"method": "Fisher" if len(inputs) > 1 else "single test", "log2_p": log2_p,
            "p_value": _p(log2_p), "inputs": inputs, "tests": names}


def _verdict(evidence: Evidence, sets: list[dict[str, Any]], fp: dict[str, Any] | None,
             combined: dict[str, Any] | None, alpha: float,
             fingerprint_given: bool) -> dict[str, Any]:
    log2_alpha = math.log(alpha) / LN2
    log2_p = combined["log2_p"] if combined is not None else 0.0
    accused = combined is not None and log2_p <= log2_alpha
    tested = [s for s in sets if s["tested"]]
    best = tested[0] if tested else None
    reasons: list[str] = []
    who = f" for principal {evidence.principal}" if evidence.principal is not None else ""
    if not evidence.watermark:
        reasons.append(f"no marked answers of model {evidence.model} are recorded{who}: "
                       "the watermark test had nothing to ask")
    for s in tested:
        reasons.append(_set_reason(s))
    untested = [s for s in sets if not s["tested"]]
    if untested:
        reasons.append(f"{len(untested)} set(s) not tested because even a perfect copy could "
                       "not reach alpha with their records: " + ", ".join(
                           f"{s['set']} ({s['marks']} marks, {s['controls']} controls)"
                           for s in untested[:5]) + (" …" if len(untested) > 5 else ""))
    if fp is not None:
        reasons.append(f"fingerprint ({fp.get('name', 'fingerprint')}): p = "
                       f"{format_p(fp['log2_p'])}")
    elif not fingerprint_given:
        reasons.append("fingerprint not run: no reference data was given (--reference-pool)")
    if combined is not None and combined["method"] == "Fisher":
        reasons.append(f"Fisher's combination of the best set's corrected p and the "
                       f"fingerprint's: p = {format_p(log2_p)}")
    if evidence.excluded:
        reasons.append("records left out: " + ", ".join(
            f"{n} ({why})" for why, n in sorted(evidence.excluded.items())))
    set_alone = best is not None and best["log2_p_adjusted"] <= log2_alpha
    fp_alone = fp is not None and fp["log2_p"] <= log2_alpha
    # what carried a conviction: each test that reaches alpha alone, else both together
    set_carried = accused and best is not None and (set_alone or not fp_alone)
    fp_carried = accused and fp is not None and (fp_alone or not set_alone)
    convicting = best["set"] if set_carried and best is not None else None
    carried_by = ([f"copy test of {convicting}"] if convicting else []) + (
        [str(fp.get("name", "fingerprint"))] if fp_carried and fp is not None else [])
    summary = _summary(accused, best if set_carried or not accused else None,
                       fp if fp_carried or not accused else None, log2_p, alpha, log2_alpha,
                       evidence, who)
    if not accused:
        reasons = _why_not(best, fp, log2_alpha, alpha) + reasons
    return {"accused": accused, "alpha": alpha, "log2_p": log2_p,
            "p_value": _p(log2_p), "convicting_set": convicting, "carried_by": carried_by,
            "tests": combined["tests"] if combined is not None else [],
            "summary": summary, "reasons": reasons}


def _set_reason(s: dict[str, Any]) -> str:
    text = (f"{s['set']}: the suspect disagrees with the protected model on "
            f"{s['mark_disagreements']} of {s['marks']} marked inputs and on "
            f"{s['control_disagreements']} of {s['controls']} controls")
    if s["n_classes"] > 2:
        text += f", and gives our altered answer on {s['decoy_hits']} of the marked inputs"
    return (text + f"; p = {format_p(s['log2_p'])}, {format_p(s['log2_p_adjusted'])} after "
            f"Bonferroni over {s['sets_tested']} set(s)")


def _summary(accused: bool, best: dict[str, Any] | None, fp: dict[str, Any] | None,
             log2_p: float, alpha: float, log2_alpha: float, evidence: Evidence,
             who: str) -> str:
    """One sentence; when accused, `best` and `fp` are the tests that carried it (or None)."""
    if accused:
        parts = []
        if best is not None:
            repeats = best["decoy_hits"] if best["n_classes"] > 2 else best["mark_disagreements"]
            parts.append(f"the answers {best['set']} received (the suspect repeats {repeats} "
                         f"of their {best['marks']} altered answers; p = "
                         f"{format_p(best['log2_p_adjusted'])} on its own)")
        if fp is not None:
            parts.append(f"the fingerprint (p = {format_p(fp['log2_p'])} on its own)")
        return (f"the suspect was made from this model's answers; shown by "
                f"{' and '.join(parts)}; p = {format_p(log2_p)} <= alpha = {alpha:g}")
    if best is None and fp is None:
        return (f"inconclusive: no marked answers of model {evidence.model} are "
                f"recorded{who} and no fingerprint was given: nothing was tested")
    if best is None:
        assert fp is not None
        return (f"not identified: no marked answers of model {evidence.model} are "
                f"recorded{who}, and the fingerprint alone gives p = {format_p(log2_p)} > "
                f"alpha = {alpha:g}")
    if best["best_possible_log2_p"] > log2_alpha:
        return (f"inconclusive: too few marked answers to convict even a perfect copy "
                f"({best['set']} holds {best['marks']} marked answers asked; the best "
                f"possible p is {format_p(best['best_possible_log2_p'])} > alpha = "
                f"{alpha:g}); p = {format_p(log2_p)}")
    return (f"no evidence of copying: p = {format_p(log2_p)} > alpha = {alpha:g}, where a "
            "perfect copy of the answers these callers received would have been identified")


def _why_not(best: dict[str, Any] | None, fp: dict[str, Any] | None, log2_alpha: float,
             alpha: float) -> list[str]:
    """Why no conviction, first in the reasons, in words."""
    out = []
    if best is not None and best["best_possible_log2_p"] > log2_alpha:
        holder = {"principal": "the principal", "tenant": "the tenant"}.get(
            best["kind"], "all records together")
        out.append(f"too few marks: {holder} ({best['set']}) holds {best['marks']} marked "
                   f"answers asked; even a perfect copy could reach only p = "
                   f"{format_p(best['best_possible_log2_p'])} with {best['marks']} marks and "
                   f"{best['controls']} controls, above alpha = {alpha:g}")
        if best["controls"] == 0:
            out.append(f"{best['set']} has no control answers asked: the disagreement test "
                       "has no baseline without them")
    elif best is not None:
        out.append(f"the suspect disagrees with the protected model on marked inputs about "
                   f"as often as on controls ({best['mark_disagreements']} of {best['marks']} "
                   f"against {best['control_disagreements']} of {best['controls']} in "
                   f"{best['set']}): what a model made without the marked answers does")
    if fp is not None and fp["log2_p"] > log2_alpha:
        out.append(f"the fingerprint does not single the suspect out: p = "
                   f"{format_p(fp['log2_p'])}")
    return out

"""Ownership verification: ask a suspect the watermarked questions, test, make the bundle.

1. `gather` reads the evidence records of a model (optionally of one principal), opens
   sealed inputs, and keeps only records whose input matches its digest and whose decoy the
   watermark key derives: the decoys were fixed by the key when the answers were given, not
   chosen after seeing the suspect. Records of the same input merge (every principal who
   received that answer is named).
2. `verify` asks the suspect at most `max_queries` of them (watermark inputs first, up to a
   fifth controls), compares its answers with the watermark labels and the model's own, and
   runs the tests of `stats` (the decoy test gives the verdict), per principal as well.
3. Optionally, a fingerprint of the decision boundary gives a second opinion
   (`fingerprint`).

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
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from .bundle import BUNDLE_TYPE
from .fingerprint import Labeler, boundary_points, compare
from .keyring import EvidenceCipher
from .marking import Watermarker
from .stats import LN2, conservative_test, decoy_test, format_p
from .store import EvidenceRecord, EvidenceStore
from .suspect import Suspect

Array = np.ndarray[Any, Any]
DEFAULT_MAX_QUERIES = 500
DEFAULT_ALPHA = 1e-6
CONTROL_SHARE = 5  # at most 1/5 of the queries go to control inputs


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
    """The protected model, reference models trained independently, rows to search from."""

    protected: Labeler
    references: list[Labeler]
    seeds: Array
    key: bytes
    points: int = 200


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def verify(evidence: Evidence, suspect: Suspect, *, max_queries: int = DEFAULT_MAX_QUERIES,
           alpha: float = DEFAULT_ALPHA, include_inputs: bool = False,
           fingerprint: FingerprintPlan | None = None) -> dict[str, Any]:
    """Ask, compare, test: the unsigned evidence bundle."""
    from .. import __version__

    if max_queries < 1:
        raise ConfigurationError("max_queries must be at least 1")
    if not 0 < alpha < 1:
        raise ConfigurationError("alpha must be between 0 and 1")
    started = datetime.now(UTC).timestamp()
    asked_before = suspect.asked
    n_ctl = min(len(evidence.control), max_queries // CONTROL_SHARE)
    n_wm = min(len(evidence.watermark), max_queries - n_ctl)
    n_ctl = min(len(evidence.control), max_queries - n_wm)
    asked = evidence.watermark[:n_wm] + evidence.control[:n_ctl]
    widths = {len(q.row) // 4 for q in asked}
    if len(widths) > 1:
        raise ConfigurationError(f"evidence inputs have different widths {sorted(widths)}")
    if asked and suspect.n_features > 0 and widths != {suspect.n_features}:
        raise ConfigurationError(f"the suspect takes {suspect.n_features} features but the "
                                 f"recorded inputs have {widths.pop()}")
    answers = suspect.labels(np.stack([q.features() for q in asked])) if asked else []
    queries = [_query(q, a, include_inputs) for q, a in zip(asked, answers, strict=True)]
    wm = [q for q in queries if q["kind"] == "watermark"]
    ctl = [q for q in queries if q["kind"] == "control"]
    k = min((q.n_classes for q in evidence.watermark[:n_wm]), default=2)
    matches = sum(q["repeats_watermark"] for q in wm)
    disagree = sum(not q["agrees_with_model"] for q in wm)
    decoy = decoy_test(matches, disagree, k)
    ctl_disagree = sum(not q["agrees_with_model"] for q in ctl)
    conservative = conservative_test(matches, len(wm), ctl_disagree, len(ctl))
    fp = None
    if fingerprint is not None:
        points, labels = boundary_points(fingerprint.protected, fingerprint.seeds,
                                         fingerprint.key, fingerprint.points)
        fp = compare(suspect.labels(points), labels,
                     [list(ref(points)) for ref in fingerprint.references]).to_dict()
        fp["log2_p_normal"] = _finite(fp["log2_p_normal"])
    finished = datetime.now(UTC).timestamp()
    return {
        "type": BUNDLE_TYPE, "v": 1, "modelfence": __version__,
        "model": evidence.model, "principal": evidence.principal,
        "started": _iso(started), "finished": _iso(finished),
        "suspect": {"kind": suspect.kind, "description": suspect.description,
                    "sha256": suspect.sha256, "queries": suspect.asked - asked_before},
        "evidence": {"records": evidence.records, "distinct_watermark_inputs":
                     len(evidence.watermark), "distinct_control_inputs": len(evidence.control),
                     "excluded": evidence.excluded, "watermark_keys": evidence.key_ids,
                     "asked": {"watermark": len(wm), "control": len(ctl)}},
        "queries": queries,
        "tests": {"decoy": _test(decoy.to_dict()),
                  "conservative": None if conservative is None else _test(
                      conservative.to_dict())},
        "control": {"asked": len(ctl), "disagreements": ctl_disagree,
                    "decoy_hits": sum(q["suspect_label"] == q["watermark_label"] for q in ctl)},
        "by_principal": _by_principal(wm, k),
        "fingerprint": fp,
        "verdict": _verdict(decoy.log2_p, None if conservative is None else conservative.log2_p,
                            alpha,
                            len(wm), matches, disagree, k),
    }


def _test(d: dict[str, Any]) -> dict[str, Any]:
    d["log2_p"] = max(d["log2_p"], -1e9)  # JSON has no -inf (never reached: p0 > 0)
    return d


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


def _by_principal(wm: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The decoy test restricted to the answers each principal received."""
    names = sorted({p for q in wm for p in q["principals"]})
    out = []
    for name in names:
        mine = [q for q in wm if name in q["principals"]]
        x = sum(q["repeats_watermark"] for q in mine)
        m = sum(not q["agrees_with_model"] for q in mine)
        t = decoy_test(x, m, k)
        tenants = sorted({t for q in mine for t in q["tenants"]})
        out.append({"principal": name, "tenants": tenants, "watermark_inputs": len(mine),
                    "repeats": x, "disagreements": m, "log2_p": max(t.log2_p, -1e9),
                    "p_value": t.p_value})
    return sorted(out, key=lambda d: (d["log2_p"], d["principal"]))


def _verdict(log2_p: float, log2_p_conservative: float | None, alpha: float, n: int,
             matches: int, disagree: int, k: int) -> dict[str, Any]:
    log2_alpha = math.log(alpha) / LN2
    accused = n > 0 and log2_p <= log2_alpha
    best = n * math.log2(1.0 / (k - 1)) if n else 0.0
    if accused:
        summary = (f"the suspect repeats {matches} of {n} watermark answers; a model made "
                   f"without them would do so with p = {format_p(log2_p)} "
                   f"(<= alpha = {alpha:g}): it was made from this model's watermarked answers")
        if log2_p_conservative is not None and log2_p_conservative > log2_alpha:
            summary += (f" (the conservative cross-check alone gives p = "
                        f"{format_p(log2_p_conservative)})")
    elif n == 0:
        summary = "no watermark records to ask: nothing to test"
    elif best > log2_alpha:
        summary = (f"inconclusive: only {n} watermark inputs; even a perfect copy could only "
                   f"reach p = {format_p(best)} > alpha = {alpha:g}")
    else:
        summary = (f"no evidence of copying: the suspect repeats {matches} of {n} watermark "
                   f"answers (disagreeing with the model on {disagree}); p = "
                   f"{format_p(log2_p)} > alpha = {alpha:g}")
    return {"accused": accused, "alpha": alpha, "log2_p": max(log2_p, -1e9),
            "test": "decoy", "summary": summary}

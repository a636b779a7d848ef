"""The response watermark: keyed selection, the marked answer, rotation, statistics, bundles."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelfence.backends.base import ModelEntry
from modelfence.backends.call import OipCall
from modelfence.backends.local import SkopsClassifier
from modelfence.config import ModelSettings
from modelfence.errors import ConfigurationError
from modelfence.identity.principal import Principal
from modelfence.kernel.chain import Guard, GuardChain
from modelfence.kernel.oip import InferRequest, Tensor
from modelfence.shaping.guard import build_shaping
from modelfence.watermark import bundle
from modelfence.watermark.guard import WatermarkGuard, build_watermark
from modelfence.watermark.keyring import EvidenceCipher, Keyring, WatermarkKey, row_bytes
from modelfence.watermark.marking import Watermarker
from modelfence.watermark.settings import WatermarkSettings
from modelfence.watermark.stats import (
    clopper_pearson_upper,
    conservative_test,
    decoy_test,
    format_p,
    log_binom_sf,
)
from modelfence.watermark.store import MemoryEvidenceStore
from modelfence.watermark.verify import questions_from

K1 = WatermarkKey("k1", b"a" * 40)
K2 = WatermarkKey("k2", b"b" * 40)


def marker(fraction: float = 0.1, *, keys: list[WatermarkKey] | None = None,
           active: str | None = None, at_risk: float | None = None) -> Watermarker:
    def f(risk: float) -> float:
        return 0.5 if at_risk is not None and risk >= at_risk else fraction
    return Watermarker(Keyring(keys or [K1], active), f)


def rows(n: int, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


# selection ---------------------------------------------------------------------------------


def test_selection_is_deterministic_and_independent_of_the_batch() -> None:
    x = rows(400)
    top = np.zeros(len(x), dtype=np.int64)
    m = marker()
    whole = {(k.digest, k.kind, k.decoy_index) for k in m.select(x, top, 10)}
    parts = {(k.digest, k.kind, k.decoy_index)
             for i in range(0, len(x), 7) for k in m.select(x[i:i + 7], top[i:i + 7], 10)}
    assert whole == parts
    assert whole == {(k.digest, k.kind, k.decoy_index) for k in m.select(x, top, 10)}


def test_selection_rate_matches_the_fraction_and_controls_match_it() -> None:
    x = rows(20_000, seed=1)
    marks = marker(0.05).select(x, np.zeros(len(x), dtype=np.int64), 10)
    wm = sum(m.kind == "watermark" for m in marks)
    ctl = sum(m.kind == "control" for m in marks)
    # 20,000 rows at 5%: mean 1000, sd ~31; 5 sd either side
    assert 845 < wm < 1155 and 845 < ctl < 1155


def test_the_decoy_is_never_the_top_class_and_is_uniform_over_the_others() -> None:
    x = rows(30_000, seed=2)
    top = np.full(len(x), 3)
    marks = [m for m in marker(0.5).select(x, top, 5) if m.kind == "watermark"]
    decoys = np.bincount([m.decoy_index for m in marks], minlength=5)
    assert decoys[3] == 0
    share = decoys[[0, 1, 2, 4]] / len(marks)
    assert np.all(np.abs(share - 0.25) < 0.02)


def test_a_riskier_caller_gets_more_marks_and_keeps_the_low_risk_ones() -> None:
    x = rows(2000, seed=3)
    top = np.zeros(len(x), dtype=np.int64)
    m = marker(0.01, at_risk=0.5)
    low = {k.digest for k in m.select(x, top, 10, risk=0.1) if k.kind == "watermark"}
    high = {k.digest for k in m.select(x, top, 10, risk=0.9) if k.kind == "watermark"}
    assert low < high and len(high) > 20 * len(low) > 0


def test_another_key_marks_other_rows() -> None:
    x = rows(3000, seed=4)
    top = np.zeros(len(x), dtype=np.int64)
    a = {k.digest for k in marker(0.1).select(x, top, 10) if k.kind == "watermark"}
    b = {k.digest for k in marker(0.1, keys=[K2]).select(x, top, 10) if k.kind == "watermark"}
    assert len(a & b) < 0.3 * len(a)


# the marked answer -------------------------------------------------------------------------


def test_a_marked_answer_swaps_the_top_and_decoy_values() -> None:
    x = rows(200, seed=5)
    p = np.random.default_rng(0).dirichlet(np.ones(4), size=len(x))
    marks = marker(0.2).select(x, p.argmax(axis=1), 4)
    out = Watermarker.rewrite_proba(p, marks)
    for m in marks:
        if m.kind == "watermark":
            assert out[m.row].argmax() == m.decoy_index
            assert sorted(out[m.row]) == sorted(p[m.row])  # the same values, moved
        else:
            assert np.array_equal(out[m.row], p[m.row])
    untouched = sorted(set(range(len(x))) - {m.row for m in marks if m.kind == "watermark"})
    assert np.array_equal(out[untouched], p[untouched])


# keyring and rotation ----------------------------------------------------------------------


def test_rotation_marks_with_the_new_key_and_old_records_still_verify() -> None:
    x = rows(500, seed=6)
    top = np.zeros(len(x), dtype=np.int64)
    old = marker(0.2, keys=[K1])
    rotated = marker(0.2, keys=[K1, K2])  # the last key listed is active
    assert rotated.keyring.active.id == "k2"
    old_marks = [m for m in old.select(x, top, 10) if m.kind == "watermark"]
    assert {m.key_id for m in rotated.select(x, top, 10)} == {"k2"}
    for m in old_marks:
        assert rotated.check("k1", m.input, m.model_index, m.decoy_index, 10)
    forged = old_marks[0]
    assert not rotated.check("k1", forged.input, 0, (forged.decoy_index + 1) % 10 or 1, 10)
    with pytest.raises(ConfigurationError, match="no longer lists"):
        marker(0.2, keys=[K2]).check("k1", forged.input, 0, forged.decoy_index, 10)


def test_settings_validate_keys(tmp_path: Path) -> None:
    from pydantic import ValidationError

    key = {"id": "a", "secret_file": "a.secret"}
    with pytest.raises(ValidationError, match="unique"):
        WatermarkSettings(keys=[key, key])
    with pytest.raises(ValidationError, match="not among keys"):
        WatermarkSettings(keys=[key], active="b")
    with pytest.raises(ValidationError, match="at least fraction"):
        WatermarkSettings(keys=[key], fraction=0.1, fraction_at_risk=0.05)
    ws = WatermarkSettings(keys=[key]).resolved(tmp_path)
    assert ws.keys[0].secret_file == tmp_path / "a.secret"
    assert ws.evidence_store == f"sqlite:///{tmp_path}/watermark-evidence.db"
    assert ws.fraction == "auto"  # planned per model: fraction_for takes the planned share
    assert ws.fraction_for(0.0, 0.004) == 0.004 and ws.fraction_for(0.9, 0.004) == 0.05
    assert ws.fraction_for(0.9, 0.08) == 0.08  # fraction_at_risk is a floor, not a cap


def test_short_or_missing_secrets_fail_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("too short")
    for name, message in (("short", "at least 32"), ("missing", "cannot read")):
        ws = WatermarkSettings(keys=[{"id": "a", "secret_file": tmp_path / name}])
        with pytest.raises(ConfigurationError, match=message):
            Keyring.from_settings(ws)


def test_evidence_cipher_round_trip_and_tamper(tmp_path: Path) -> None:
    (tmp_path / "ek").write_text("ab" * 32)
    cipher = EvidenceCipher.from_file(tmp_path / "ek")
    blob = cipher.seal(b"row bytes", "d1")
    assert b"row bytes" not in blob and cipher.open(blob, "d1") == b"row bytes"
    with pytest.raises(ConfigurationError, match="does not decrypt"):
        cipher.open(blob, "d2")
    (tmp_path / "bad").write_text("abc")
    with pytest.raises(ConfigurationError, match="64 hex"):
        EvidenceCipher.from_file(tmp_path / "bad")


# statistics --------------------------------------------------------------------------------


def test_binomial_tail_matches_scipy_and_goes_below_float_range() -> None:
    from scipy.stats import binom

    for x, n, p in ((0, 10, 0.3), (3, 10, 0.3), (10, 10, 0.3), (7, 40, 0.1), (25, 500, 0.02)):
        assert math.isclose(math.exp(log_binom_sf(x, n, p)), binom.sf(x - 1, n, p),
                            rel_tol=1e-9)
    assert log_binom_sf(11, 10, 0.5) == -math.inf
    tiny = log_binom_sf(600, 600, 1 / 9) / math.log(2)  # (1/9)^600 underflows a float
    assert math.isclose(tiny, 600 * math.log2(1 / 9))
    assert format_p(tiny).startswith("2^-1902")


def test_decoy_test_p_values() -> None:
    t = decoy_test(21, 21, 10)
    assert t.log2_p <= -64 and t.p0 == pytest.approx(1 / 9)
    assert decoy_test(0, 0, 10).p_value == 1.0
    assert decoy_test(1, 30, 10).p_value > 0.5  # a poor model that rarely hits the decoy
    with pytest.raises(ValueError, match="matches"):
        decoy_test(5, 3, 10)


def test_conservative_test_uses_the_control_upper_bound() -> None:
    ucb = clopper_pearson_upper(5, 100)
    from scipy.stats import beta

    assert ucb == pytest.approx(beta.ppf(0.999, 6, 95))
    t = conservative_test(20, 20, 5, 100)
    assert t is not None and t.p0 == pytest.approx(ucb)
    assert t.log2_p == pytest.approx(20 * math.log2(ucb))
    assert conservative_test(3, 3, 0, 0) is None


# bundle ------------------------------------------------------------------------------------


def _doc() -> dict[str, Any]:
    return {"type": bundle.BUNDLE_TYPE, "v": 1, "model": "m", "p": 2.0 ** -70,
            "queries": [{"suspect_label": "3", "input_sha256": "ab"}], "name": "Zoë"}


def test_bundle_signs_verifies_and_fails_when_edited(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    signed = bundle.sign(_doc(), key)
    assert bundle.problem(signed, key.public_key()) is None
    # what was written and read back still verifies (canonical JSON is stable)
    path = tmp_path / "e.json"
    import orjson

    path.write_bytes(orjson.dumps(signed, option=orjson.OPT_INDENT_2))
    assert bundle.problem(bundle.read(path), key.public_key()) is None
    edited = {**signed, "queries": [{"suspect_label": "4", "input_sha256": "ab"}]}
    assert bundle.problem(edited, key.public_key()) == bundle.EDITED
    other = Ed25519PrivateKey.generate().public_key()
    assert "not by the given key" in str(bundle.problem(signed, other))
    assert bundle.problem(_doc(), key.public_key()) == "the bundle carries no signature"


# the guard in a chain, behind output shaping -----------------------------------------------


class _Given(Guard[OipCall]):
    """Stands in for identity and model lookup."""

    name: ClassVar[str] = "given"
    provides: ClassVar[frozenset[str]] = frozenset({"principal", "model", "queries"})

    def __init__(self, entry: ModelEntry, risk: float) -> None:
        self._entry, self._risk = entry, risk

    async def on_request(self, call: OipCall) -> None:
        call.principal = Principal("mallory", "acme")
        call.model = self._entry
        call.risk = self._risk


async def _answer(chain: GuardChain, x: np.ndarray[Any, Any]) -> OipCall:
    call = OipCall(request=None, action="infer", model_name="digits")  # type: ignore[arg-type]
    call.inputs = InferRequest([Tensor("input", "FP32", list(x.shape), x)])

    async def terminal(c: OipCall) -> None:
        assert c.model is not None and c.inputs is not None
        c.outputs = await c.model.backend.infer(c.inputs)

    await chain.run(call, terminal)
    call.status = 200
    await chain.complete(call)
    return call


@pytest.mark.parametrize("risk", [0.0, 0.9])
async def test_guard_marks_labels_even_when_shaping_withholds_probabilities(
        digits_files: dict[str, Path], tmp_path: Path, risk: float) -> None:
    from sklearn.datasets import load_digits

    settings = ModelSettings.model_validate({
        "name": "digits", "backend": {"type": "skops", "path": str(digits_files["skops"])},
        "shaping": [{"from_risk": 0.0, "defense": "round:2"},
                    {"from_risk": 0.5, "defense": "labels"}]})
    entry = ModelEntry(settings, SkopsClassifier(settings))
    await entry.backend.start()
    (tmp_path / "k").write_text("s" * 40)
    ws = WatermarkSettings(keys=[{"id": "k", "secret_file": tmp_path / "k"}], fraction=0.2,
                           fraction_at_risk=0.3, control_ratio=1, repeats="consistent",
                           evidence_store="memory://")
    wm = build_watermark(ws, {"digits": entry})
    shaping = build_shaping({"digits": entry}, b"z" * 40, {})
    chain = GuardChain(OipCall, [_Given(entry, risk), wm, shaping])  # shaping answers first
    x = (load_digits().data[:64] / 16.0).astype(np.float32)
    call = await _answer(chain, x)
    assert call.outputs is not None
    label = call.outputs.output("label")
    proba = call.outputs.output("probabilities")
    assert label is not None
    assert (proba is None) == (risk >= 0.5)  # the labels band withholds probabilities
    truth = np.asarray(call.unshaped_proba).argmax(axis=1)
    records = await wm.store.records("digits")
    marked = {r.input_sha256: r for r in records if r.kind == "watermark"}
    assert len(marked) >= 3 and any(r.kind == "control" for r in records)
    digests = [k for k in map(_sha, row_bytes(x))]
    for i, d in enumerate(digests):
        if d in marked:
            r = marked[d]
            assert r.model_index == truth[i] and r.principal == "mallory" and r.tenant == "acme"
            assert int(label.data[i]) == r.decoy_index != truth[i]
            if proba is not None:
                assert np.asarray(proba.data)[i].argmax() == r.decoy_index
        else:
            assert int(label.data[i]) == truth[i]
    assert any(d.guard == "watermark" for d in call.trail)
    # the same input gets the same answer (repeats: consistent)
    again = await _answer(chain, x)
    assert again.outputs is not None
    assert np.array_equal(again.outputs.output("label").data, label.data)  # type: ignore[union-attr]
    assert len(await wm.store.records("digits")) == len(records)  # no duplicate records
    # what was recorded re-queries: the evidence opens and checks under the key
    ev = questions_from(records, model="digits", principal=None, marker=wm.marker, cipher=None)
    assert not ev.excluded and len(ev.watermark) == len(marked)


def _sha(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()


async def test_guard_skips_unwatched_models_and_answers_without_probabilities() -> None:
    store = MemoryEvidenceStore()
    g = WatermarkGuard(marker(0.5), store, models=frozenset({"other"}))
    call = OipCall(request=None, action="infer", model_name="m")  # type: ignore[arg-type]
    await g.on_response(call)  # nothing set: nothing done
    await g.on_complete(call)
    assert await store.records("m") == []

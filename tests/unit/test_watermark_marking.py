"""Marking at the planned rate, controls at the ratio, repeats answered truthfully once marked."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from modelfence.backends.base import ModelEntry
from modelfence.backends.call import OipCall
from modelfence.backends.local import SkopsClassifier
from modelfence.config import ModelSettings
from modelfence.errors import StoreError
from modelfence.identity.principal import Principal
from modelfence.kernel.chain import Guard, GuardChain
from modelfence.kernel.metrics import GatewayMetrics
from modelfence.kernel.oip import InferRequest, Tensor
from modelfence.watermark import marking
from modelfence.watermark.guard import WatermarkGuard
from modelfence.watermark.keyring import Keyring, WatermarkKey, row_bytes
from modelfence.watermark.marking import PlannedRate, RepeatAllowance, Watermarker
from modelfence.watermark.power import Measured, model_rate
from modelfence.watermark.settings import WatermarkSettings
from modelfence.watermark.store import (
    EvidenceStore,
    MemoryEvidenceStore,
)

from .test_watermark_store import store  # noqa: F401  (fixture: every evidence store)

KEYRING = Keyring([WatermarkKey("k1", b"m" * 40)])


def settings(**kw: Any) -> WatermarkSettings:
    return WatermarkSettings(keys=[{"id": "k1", "secret_file": "k"}], **kw)


def rows(n: int, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((n, 6)).astype(np.float32)


def within(count: int, n: int, p: float, sds: float = 5.0) -> bool:
    """`count` is a plausible Binomial(n, p) draw (within `sds` standard deviations)."""
    return bool(abs(count - n * p) <= sds * (n * p * (1 - p)) ** 0.5)


# the planned rate --------------------------------------------------------------------------


def test_the_planned_rate_is_power_s_and_is_computed_once_per_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counted(ws: WatermarkSettings, k: int, d: float) -> Any:
        calls.append(k)
        return model_rate(ws, k, d)

    monkeypatch.setattr(marking, "model_rate", counted)
    ws = settings()
    rate = PlannedRate(ws)
    for _ in range(3):
        assert rate.base("m", 2) == model_rate(ws, 2, 0.1)[1].fraction
        assert rate.base("m", 10) == model_rate(ws, 10, 0.1)[1].fraction
    assert calls == [2, 10]
    assert rate.base("m", 10) < rate.base("m", 2)  # more classes, fewer marks needed
    # a flagged caller gets at least fraction_at_risk
    assert rate(0.9, "m", 2) == 0.05 and rate(0.1, "m", 2) == rate.base("m", 2)


def test_a_callers_rate_tapers_after_holding_answers_under_truthful_repeats() -> None:
    ws = settings()
    rate = PlannedRate(ws)
    f = rate.base("m", 2)
    assert rate(0.1, "m", 2, answered=ws.holding - 1) == f
    assert rate(0.1, "m", 2, answered=ws.holding) == f * ws.beyond_holding
    assert rate(0.9, "m", 2, answered=10 * ws.holding) == 0.05  # flagged: the floor stands
    steady = PlannedRate(settings(repeats="consistent"))
    assert steady(0.1, "m", 2, answered=10 * ws.holding) == steady.base("m", 2)
    # the same rows: what a heavy caller gets marked is a subset of what a new one does
    marker = Watermarker(KEYRING, rate, control_ratio=ws.control_ratio)
    x = rows(40_000, seed=3)
    top = np.zeros(len(x), dtype=np.int64)
    new = {m.digest for m in marker.select(x, top, 2, model="m") if m.kind == "watermark"}
    old = {m.digest for m in marker.select(x, top, 2, model="m", answered=ws.holding)
           if m.kind == "watermark"}
    assert old < new and within(len(old), len(x), f * ws.beyond_holding)


def test_a_measured_disagreement_in_the_plan_file_sets_the_rate() -> None:
    ws = settings(max_fraction=0.05)
    assumed = PlannedRate(ws).base("m", 3)
    low = PlannedRate(ws, {"m": Measured(3, 0.01)}).base("m", 3)
    high = PlannedRate(ws, {"m": Measured(3, 0.4)}).base("m", 3)
    stale = PlannedRate(ws, {"m": Measured(3, 0.4, measured=False)}).base("m", 3)
    assert low < assumed < high and stale == assumed
    assert PlannedRate(ws, {"other": Measured(3, 0.4)}).base("m", 3) == assumed


def test_a_fixed_fraction_is_not_planned() -> None:
    assert PlannedRate(settings(fraction=0.03)).base("m", 2) == 0.03


@pytest.mark.parametrize("k", [2, 10])
def test_marks_at_the_planned_rate_and_controls_at_the_ratio(k: int) -> None:
    ws = settings()
    marker = Watermarker(KEYRING, PlannedRate(ws), control_ratio=ws.control_ratio)
    x = rows(60_000, seed=k)
    f = PlannedRate(ws).base("m", k)
    got = marker.select(x, np.zeros(len(x), dtype=np.int64), k, model="m")
    wm = sum(m.kind == "watermark" for m in got)
    ctl = sum(m.kind == "control" for m in got)
    assert within(wm, len(x), f) and within(ctl, len(x), 10 * f)
    # and the ratio holds for a flagged caller too: controls follow the rate in use
    risky = marker.select(x, np.zeros(len(x), dtype=np.int64), k, risk=0.9, model="m")
    assert within(sum(m.kind == "watermark" for m in risky), len(x), 0.05)
    assert within(sum(m.kind == "control" for m in risky), len(x), 0.5)
    # what a low-risk caller got marked stays marked when its risk rises
    low = {m.digest for m in got if m.kind == "watermark"}
    assert low <= {m.digest for m in risky if m.kind == "watermark"}


def test_truthful_repeats_are_limited_to_a_few_distinct_inputs_per_caller() -> None:
    """A repeat user's few inputs are answered truthfully however often; a caller re-asking
    every input to find the marks strips at most `limit` of them."""
    marker = Watermarker(KEYRING, lambda risk: 0.3, control_ratio=1)
    x = rows(400, seed=11)
    got = marker.select(x, np.zeros(len(x), dtype=np.int64), 3)
    marked = [m for m in got if m.kind == "watermark"]
    assert len(marked) > 20
    held = {m.digest for m in marked}
    allowance = RepeatAllowance(5)
    kept = allowance.apply(got, held, "m", "mallory")
    assert len([m for m in kept if m.kind == "watermark"]) == len(marked) - 5
    assert all(m in kept for m in got if m.kind == "control")
    # the same five again (and again): still truthful; a sixth: marked
    first_five = [m for m in marked if m not in kept]
    assert len(first_five) == 5
    assert allowance.apply(first_five * 3, held, "m", "mallory") == []
    sixth = [m for m in marked if m not in first_five][:1]
    assert allowance.apply(sixth, held, "m", "mallory") == sixth
    # another caller has its own allowance; nothing held: nothing changes
    assert len(allowance.apply(marked, held, "m", "eve")) == len(marked) - 5
    assert allowance.apply(marked, set(), "m", "zoe") == marked
    assert RepeatAllowance(0).apply(marked, held, "m", "x") == marked


def test_truthful_repeats_drop_only_the_held_marks() -> None:
    marker = Watermarker(KEYRING, lambda risk: 0.3)
    got = marker.select(rows(200), np.zeros(200, dtype=np.int64), 4)
    marked = [m.digest for m in got if m.kind == "watermark"]
    held = set(marked[:3])
    kept = Watermarker.truthful_repeats(got, held)
    assert len(kept) == len(got) - 3 and not {m.digest for m in kept
                                               if m.kind == "watermark"} & held
    assert [m for m in kept if m.kind == "control"] == [m for m in got if m.kind == "control"]


# repeats through the guard -----------------------------------------------------------------


class _Given(Guard[OipCall]):
    """Stands in for identity and model lookup."""

    name: ClassVar[str] = "given"
    provides: ClassVar[frozenset[str]] = frozenset({"principal", "model", "queries"})

    def __init__(self, entry: ModelEntry) -> None:
        self._entry = entry
        self.principal = f"mallory-{uuid.uuid4().hex[:8]}"  # PostgreSQL's table is shared

    async def on_request(self, call: OipCall) -> None:
        call.principal = Principal(self.principal, "acme")
        call.model = self._entry
        call.risk = 0.0


async def _answer(chain: GuardChain, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    call = OipCall(request=None, action="infer", model_name="digits")  # type: ignore[arg-type]
    call.inputs = InferRequest([Tensor("input", "FP32", list(x.shape), x)])

    async def terminal(c: OipCall) -> None:
        assert c.model is not None and c.inputs is not None
        c.outputs = await c.model.backend.infer(c.inputs)

    await chain.run(call, terminal)
    call.status = 200
    await chain.complete(call)
    assert call.outputs is not None
    label = call.outputs.output("label")
    assert label is not None
    return np.asarray(label.data).astype(np.int64)


@pytest.fixture
async def digits(digits_files: dict[str, Path]) -> ModelEntry:
    ms = ModelSettings.model_validate({
        "name": "digits", "backend": {"type": "skops", "path": str(digits_files["skops"])}})
    entry = ModelEntry(ms, SkopsClassifier(ms))
    await entry.backend.start()
    return entry


def _inputs(seed: int) -> np.ndarray[Any, Any]:
    """Digits-like rows."""
    from sklearn.datasets import load_digits

    x = np.asarray(load_digits().data[:96]) / 16.0
    noise = np.random.default_rng(seed).uniform(0, 0.01, x.shape)
    out: np.ndarray[Any, Any] = (x + noise).astype(np.float32)
    return out


def _truth(entry: ModelEntry, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    backend = entry.backend
    assert isinstance(backend, SkopsClassifier)
    out: np.ndarray[Any, Any] = np.asarray(backend._predict_proba(x)).argmax(axis=1)
    return out


async def test_a_marked_input_is_answered_truthfully_when_the_caller_repeats_it(
        digits: ModelEntry, store: EvidenceStore,  # noqa: F811  (the fixture)
        monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[int] = []
    original = store.marked_before

    async def counted(model: str, principal: str, digests: Sequence[str]) -> set[str]:
        lookups.append(len(digests))
        return await original(model, principal, digests)

    monkeypatch.setattr(store, "marked_before", counted)
    given = _Given(digits)
    metrics = GatewayMetrics()
    guard = WatermarkGuard(Watermarker(KEYRING, lambda risk: 0.25, control_ratio=1), store,
                           repeats="truthful", metrics=metrics, truthful_limit=1000)
    chain = GuardChain(OipCall, [given, guard])
    x = _inputs(0)
    mallory = given.principal
    truth = _truth(digits, x)
    first = await _answer(chain, x)
    marked = first != truth
    assert marked.sum() >= 10 and guard.marked_rows == marked.sum()
    assert lookups == [int(marked.sum())]  # one lookup, of the rows drawn as marks only
    records = await store.records("digits", principal=mallory)
    assert sum(r.kind == "watermark" for r in records) == marked.sum()
    # the repeat: every row truthful, nothing recorded again, still one lookup
    again = await _answer(chain, x)
    assert np.array_equal(again, truth)
    assert guard.truthful_repeats == marked.sum() and len(lookups) == 2
    assert metrics.registry.get_sample_value(
        "modelfence_watermark_truthful_repeats_total") == marked.sum()
    assert len(await store.records("digits", principal=mallory)) == len(records)
    # another caller asking the same inputs gets them marked (its first time)
    given.principal = f"eve-{uuid.uuid4().hex[:8]}"
    assert np.array_equal(await _answer(chain, x), first)
    # a request with no row drawn as a mark asks the store nothing
    unmarked = x[~marked][:5]
    given.principal = mallory
    await _answer(chain, unmarked)
    assert len(lookups) == 3


async def test_consistent_repeats_are_marked_again(digits: ModelEntry) -> None:
    guard = WatermarkGuard(Watermarker(KEYRING, lambda risk: 0.25, control_ratio=1),
                           MemoryEvidenceStore(), repeats="consistent")
    chain = GuardChain(OipCall, [_Given(digits), guard])
    x = _inputs(1)
    first = await _answer(chain, x)
    assert (first != _truth(digits, x)).sum() >= 10
    assert np.array_equal(await _answer(chain, x), first) and guard.truthful_repeats == 0


class _Deaf(MemoryEvidenceStore):
    async def marked_before(self, model: str, principal: str,
                            digests: Sequence[str]) -> set[str]:
        raise StoreError("down", store="watermark")


async def test_a_store_that_cannot_answer_leaves_the_marks_as_they_would_be(
        digits: ModelEntry) -> None:
    deaf = _Deaf()
    guard = WatermarkGuard(Watermarker(KEYRING, lambda risk: 0.25, control_ratio=1), deaf,
                           repeats="truthful")
    chain = GuardChain(OipCall, [_Given(digits), guard])
    x = _inputs(2)
    first = await _answer(chain, x)
    again = await _answer(chain, x)
    assert np.array_equal(first, again) and (first != _truth(digits, x)).sum() >= 10
    assert guard.repeat_checks_failed == 2 and guard.truthful_repeats == 0
    digests = {hashlib.sha256(r).hexdigest() for r in row_bytes(x)}
    assert {r.input_sha256 for r in await deaf.records("digits")} <= digests


def test_the_gateway_plans_from_the_plan_file_and_a_bad_one_fails_start_up(
        digits: ModelEntry, tmp_path: Path) -> None:
    from modelfence.errors import ConfigurationError
    from modelfence.watermark.guard import build_watermark

    (tmp_path / "k").write_text("s" * 40)
    plan = tmp_path / "plan.json"
    ws = WatermarkSettings(keys=[{"id": "k1", "secret_file": "k"}], plan_file="plan.json",
                           evidence_store="memory://").resolved(tmp_path)
    with pytest.raises(ConfigurationError, match=r"plan_file .* cannot read"):
        build_watermark(ws, {"digits": digits})
    plan.write_text('{"version": 1, "models": {"digits": {"n_classes": 10, '
                    '"disagreement": 0.02}}}')
    guard = build_watermark(ws, {"digits": digits})
    assert guard.repeats == "truthful" and guard.marker.control_ratio == 10
    assert guard.marker.fraction(0.0, "digits", 10) == model_rate(ws, 10, 0.02)[1].fraction
    assert guard.marker.fraction(0.0, "other", 10) == model_rate(ws, 10, 0.1)[1].fraction

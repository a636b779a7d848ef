"""Choosing an output band: by risk, by a policy's pin, and refusing bad band lists."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from modelfence.backends.call import OipCall
from modelfence.config import ModelSettings
from modelfence.errors import ConfigurationError, Forbidden
from modelfence.monitor.summary import Summary
from modelfence.shaping.base import LabelOnly, Rounding, TopK
from modelfence.shaping.chain import Chain
from modelfence.shaping.guard import ShapingGuard, bands_for, labels_only, told_labels
from modelfence.shaping.misinformation import AdaptiveMisinformation, keyed_offsets
from modelfence.shaping.recommended import (
    RECOMMENDED_BANDS,
    RECOMMENDED_MONITOR,
    recommended_shaping,
)
from modelfence.shaping.spec import parse_defense

SECRET = b"s" * 32


def model(bands: list[dict[str, Any]]) -> ModelSettings:
    return ModelSettings.model_validate({
        "name": "m", "backend": {"type": "skops", "path": "m.skops"}, "shaping": bands})


BANDS = [{"from_risk": 0.0, "defense": "none", "name": "full"},
         {"from_risk": 0.4, "defense": "topk:3+round:2", "name": "reduced"},
         {"from_risk": 0.7, "defense": "labels", "name": "labels"}]


@pytest.fixture
def guard() -> ShapingGuard:
    return ShapingGuard({"m": bands_for(model(BANDS), SECRET, None)})


@pytest.mark.parametrize(("risk", "band"), [(0.0, "full"), (0.39, "full"), (0.4, "reduced"),
                                            (0.69, "reduced"), (0.7, "labels"), (1.0, "labels")])
def test_band_follows_risk(guard: ShapingGuard, risk: float, band: str) -> None:
    chosen = guard.choose("m", risk, ())
    assert chosen is not None and chosen.name == band


def test_a_pin_overrides_risk_and_the_strongest_pin_wins(guard: ShapingGuard) -> None:
    assert guard.choose("m", 1.0, ("full",)).name == "full"  # type: ignore[union-attr]
    assert guard.choose("m", 0.0, ("full", "reduced")).name == "reduced"  # type: ignore[union-attr]


def test_an_unknown_pin_falls_back_to_the_strongest_band(guard: ShapingGuard) -> None:
    assert guard.choose("m", 0.0, ("ful",)).name == "labels"  # type: ignore[union-attr]


def test_unshaped_model_is_left_alone(guard: ShapingGuard) -> None:
    assert guard.choose("other", 1.0, ()) is None


def test_pipeline_applies_left_to_right() -> None:
    bands = bands_for(model(BANDS), SECRET, None)
    p = np.array([[0.5, 0.2, 0.15, 0.1, 0.05]])
    out = bands[1].defense.apply(p)
    assert isinstance(bands[1].defense, Chain) and bands[1].defense.spec == "topk:3+round:2"
    assert (out[0, 3:] == 0).all() and out[0].argmax() == 0
    assert labels_only(bands[2].defense) and not labels_only(bands[1].defense)


@pytest.mark.parametrize(("bands", "message"), [
    ([{"from_risk": 0.2, "defense": "none"}], "first one 0.0"),
    ([{"from_risk": 0.0, "defense": "none"}, {"from_risk": 0.0, "defense": "labels"}],
     "rising strictly"),
    ([{"from_risk": 0.0, "defense": "none"}, {"from_risk": 0.5, "defense": "none"}],
     "unique"),
])
def test_bad_band_lists_are_refused(bands: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model(bands)


def test_a_bad_defense_names_the_model_and_band() -> None:
    bad = [{"from_risk": 0.0, "defense": "none"}, {"from_risk": 0.5, "defense": "round:x"}]
    with pytest.raises(ConfigurationError, match=r"models\[m\]\.shaping\[1\]"):
        bands_for(model(bad), SECRET, None)


def test_the_recommended_bands_load_and_start_at_the_monitors_threshold() -> None:
    """README's recommended configuration is a valid band list: the model's answers below
    the threshold, less information and misinformation (off-distribution rows only) from it;
    the band is not revealed unless the model says so."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((300, 4))
    summary = Summary.fit(rng.standard_normal((300, 6)),
                          np.exp(logits) / np.exp(logits).sum(1, keepdims=True), cells=8)
    settings = model(recommended_shaping())
    assert not settings.reveal_band
    bands = bands_for(settings, SECRET, summary)
    assert [b.from_risk for b in bands] == [r for r, _, _ in RECOMMENDED_BANDS]
    assert bands[0].defense.spec == "none"
    assert bands[-1].from_risk == RECOMMENDED_MONITOR["threshold"]
    strongest = bands[-1].defense
    steps = strongest.steps if isinstance(strongest, Chain) else (strongest,)
    assert any(isinstance(s, AdaptiveMisinformation) for s in steps)
    # nothing in a flagged answer's look differs from a standard one's: no rounding, no
    # withheld output (a thief reading the decimal grid learns nothing)
    assert not labels_only(strongest)
    assert not any(isinstance(s, Rounding | TopK | LabelOnly) for s in steps)
    with pytest.raises(ConfigurationError, match="needs the monitor's summary"):
        bands_for(settings, SECRET, None)


class _Backend:
    def class_values(self, k: int) -> np.ndarray:
        return np.arange(k)


def shaped_call(settings: ModelSettings, risk: float, asked: list[str] | None = None
                ) -> tuple[ShapingGuard, OipCall]:
    """A guard for `settings` and an answered call of 3 classes at `risk`."""
    from modelfence.identity.principal import Principal
    from modelfence.kernel.oip import InferRequest, InferResponse, Tensor

    entry = SimpleNamespace(name="m", settings=settings, backend=_Backend())
    guard = ShapingGuard({"m": bands_for(settings, SECRET, None)},
                         frozenset({"m"}) if settings.reveal_band else frozenset())
    call = OipCall(request=None, action="infer", model_name="m")  # type: ignore[arg-type]
    call.principal, call.model, call.risk = Principal(id="p", tenant="t"), entry, risk  # type: ignore[assignment]
    x = np.zeros((1, 2))
    call.inputs = InferRequest([Tensor("input", "FP64", [1, 2], x)],
                               outputs=[{"name": n} for n in asked] if asked else None)
    p = np.array([[0.7, 0.2, 0.1]])
    call.outputs = InferResponse("m", [Tensor("probabilities", "FP32", [1, 3], p)])
    return guard, call


@pytest.mark.parametrize("reveal", [False, True])
async def test_the_band_is_named_only_where_the_model_reveals_it(reveal: bool) -> None:
    settings = model(BANDS).model_copy(update={"reveal_band": reveal})
    guard, call = shaped_call(settings, 0.5)
    await guard.on_response(call)
    assert call.shaping_band == "reduced"  # the audit record's
    assert call.outputs is not None
    assert ("shaping" in call.outputs.parameters) == reveal
    guard, call = shaped_call(settings, 0.9, asked=["probabilities"])
    with pytest.raises(Forbidden) as refused:
        await guard.on_response(call)
    assert "probabilities are withheld from this caller" in str(refused.value)
    assert ("labels" in str(refused.value)) == reveal
    assert call.shaping_band == "labels"


def test_a_rounding_tie_keeps_the_answer_it_rounded() -> None:
    """round:1 ties 0.46 and 0.54: the label is the class that was higher before rounding
    (the model's own), never the first of the tied ones; the probabilities stay rounded."""
    p = np.array([[0.46, 0.54, 0.0], [0.54, 0.46, 0.0], [0.2, 0.7, 0.1]])
    d = parse_defense("round:1")
    shaped = d.apply(p)
    assert shaped[0, 0] == shaped[0, 1] == 0.5 and shaped[0].argmax() == 0
    assert told_labels(d, p, shaped).tolist() == [1, 0, 1]


def test_a_rounding_tie_on_a_lied_row_keeps_the_lie() -> None:
    """Under misinformation then rounding, a tie is broken toward the lie's decoy (the answer
    before rounding), not toward the model's true class: a tie never reveals the truth."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((300, 4))
    summary = Summary.fit(rng.standard_normal((300, 6)),
                          np.exp(logits) / np.exp(logits).sum(1, keepdims=True), cells=8)
    d = parse_defense("misinfo:1+round:1", secret=SECRET, summary=summary)
    x = rng.standard_normal((400, 6)) + 8.0  # far off the data: every row is lied to
    p = np.tile([0.46, 0.54, 0.0, 0.0], (400, 1))
    shaped = d.apply(p, inputs=x)
    told = told_labels(d, p, shaped, inputs=x)
    decoy = keyed_offsets(SECRET, x, 4)
    assert np.array_equal(told, decoy)
    assert 0.15 < np.mean(told == 1) < 0.35  # the truth only when the draw says so
    assert np.all(shaped[np.arange(400), told] == shaped.max(axis=1))

"""Choosing an output band: by risk, by a policy's pin, and refusing bad band lists."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelfence.config import ModelSettings
from modelfence.errors import ConfigurationError
from modelfence.shaping.chain import Chain
from modelfence.shaping.guard import ShapingGuard, bands_for, labels_only

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

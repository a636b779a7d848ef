"""Power by design: the marks a perfect copy needs, the rate that gives them, the plan file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from modelfence.errors import ConfigurationError
from modelfence.watermark.power import (
    hold_probability,
    honest_cost,
    marks_held,
    marks_needed,
    perfect_copy_log2_p,
    plan_model,
    planned_fraction,
    read_plan,
    write_plan,
)
from modelfence.watermark.settings import WatermarkSettings

KEY = {"id": "a", "secret_file": "a.secret"}


def settings(**kw: Any) -> WatermarkSettings:
    return WatermarkSettings(keys=[KEY], **kw)


# the perfect copy's p-value, by hand -------------------------------------------------------


def test_perfect_copy_binary_is_the_hypergeometric_tail() -> None:
    # 2 marks, 2 controls, half of the controls disagree: 3 disagreements among 4 inputs,
    # both marks among them: C(3,2) / C(4,2) = 1/2
    assert perfect_copy_log2_p(2, 2, 0.5, 1.0) == pytest.approx(-1.0)
    # 10 marks, 100 controls, 10 control disagreements: all 10 marks among the 20
    # disagreements of 110 inputs: C(20,10) / C(110,10)
    want = math.log2(math.comb(20, 10) / math.comb(110, 10))
    assert perfect_copy_log2_p(10, 2, 0.1, 10.0) == pytest.approx(want, abs=1e-9)


def test_perfect_copy_with_three_classes_adds_the_decoy_test_by_fisher() -> None:
    # disagreement p = 1/2 (as above); decoy: 2 hits of 2 at 1/2 -> 1/4. Fisher's statistic
    # x = -2 ln(1/8) on 4 degrees of freedom: survival e^(-x/2) (1 + x/2)
    x = -2.0 * math.log(0.125)
    want = math.log2(math.exp(-x / 2) * (1 + x / 2))
    assert perfect_copy_log2_p(2, 3, 0.5, 1.0) == pytest.approx(want, abs=1e-9)


def test_no_marks_prove_nothing() -> None:
    assert perfect_copy_log2_p(0, 2, 0.1, 10.0) == 0.0


# marks needed ------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "d"), [(2, 0.1), (2, 0.02), (3, 0.1), (5, 0.3), (10, 0.1)])
def test_marks_needed_is_the_least_that_reaches_the_target(k: int, d: float) -> None:
    m = marks_needed(k, d, -40.0, 10.0)
    assert perfect_copy_log2_p(m, k, d, 10.0) <= -40.0
    assert perfect_copy_log2_p(m - 1, k, d, 10.0) > -40.0


def test_marks_needed_moves_the_right_way() -> None:
    base = marks_needed(2, 0.1, -40.0, 10.0)
    assert marks_needed(2, 0.1, -64.0, 10.0) > base  # a smaller p needs more marks
    assert marks_needed(2, 0.3, -40.0, 10.0) > base  # more natural disagreement: more
    assert marks_needed(2, 0.1, -40.0, 2.0) > base  # fewer controls: a weaker baseline
    assert marks_needed(5, 0.1, -40.0, 10.0) < base  # the decoy test adds bits when k > 2
    assert marks_needed(2, 0.1, -40.0, 10.0, retention=0.5) > base
    targets = [-10.0, -20.0, -40.0, -64.0, -128.0]
    needed = [marks_needed(3, 0.1, t, 10.0) for t in targets]
    assert needed == sorted(needed)


def test_marks_needed_refuses_nonsense() -> None:
    with pytest.raises(ConfigurationError, match="at least 2 classes"):
        marks_needed(1, 0.1, -40.0, 10.0)
    with pytest.raises(ConfigurationError, match="disagreement"):
        marks_needed(2, 0.0, -40.0, 10.0)


# the rate ----------------------------------------------------------------------------------


def test_hold_probability_and_quantile_match_scipy() -> None:
    from scipy.stats import binom

    for m, n, f in [(12, 2000, 0.009), (1, 10, 0.1), (40, 5000, 0.01), (3, 100, 0.5)]:
        assert hold_probability(m, n, f) == pytest.approx(float(binom.sf(m - 1, n, f)),
                                                          abs=1e-12)
        held = marks_held(n, f)
        assert hold_probability(held, n, f) >= 0.95 > hold_probability(held + 1, n, f)
    assert hold_probability(0, 10, 0.1) == 1.0 and hold_probability(11, 10, 0.5) == 0.0


def test_planned_fraction_is_the_least_share_holding_enough_marks() -> None:
    rate = planned_fraction(15, 2000, 0.5)
    assert not rate.capped and rate.fraction == rate.wanted
    assert hold_probability(15, 2000, rate.fraction) >= 0.95
    assert hold_probability(15, 2000, rate.fraction * 0.999) < 0.95
    capped = planned_fraction(15, 2000, 0.005)
    assert capped.capped and capped.fraction == 0.005 and capped.wanted == rate.wanted
    impossible = planned_fraction(3000, 2000, 0.01)
    assert impossible.capped and math.isinf(impossible.wanted)


def test_honest_cost_counts_the_decoys_that_happen_to_be_right() -> None:
    assert honest_cost(0.01, 2) == pytest.approx(1.0)  # no accuracy: the most it can be
    # 90% accurate, binary: a decoy is wrong on 90% and right on the other 10%
    assert honest_cost(0.01, 2, 0.9) == pytest.approx(0.8)
    assert honest_cost(0.01, 5, 0.9) == pytest.approx(100 * 0.01 * (0.9 - 0.1 / 4))


def test_a_plan_that_is_not_capped_reaches_the_target_for_95_percent_of_holders() -> None:
    ws = settings(max_fraction=0.05)
    for k in (2, 3, 10):
        p = plan_model(ws, "m", k, disagreement=0.1)
        assert not p.capped
        at = {v.answers: v for v in p.volumes}[ws.holding]
        assert at.held_marks >= p.marks_needed and at.log2_p_held <= ws.target_log2_p
        assert at.expected_marks == pytest.approx(ws.holding * p.fraction)
        assert p.honest_cost_points == pytest.approx(100 * p.fraction)


def test_a_capped_plan_says_so_and_a_fixed_fraction_is_used_as_is() -> None:
    p = plan_model(settings(max_fraction=0.002), "m", 2, disagreement=0.1)
    assert p.capped and p.fraction == 0.002 and p.wanted_fraction > 0.002
    fixed = plan_model(settings(fraction=0.03, fraction_at_risk=None), "m", 2)
    assert fixed.fraction == 0.03 and not fixed.capped and not fixed.measured
    assert fixed.disagreement == 0.1  # the configured assumption


# the plan file -----------------------------------------------------------------------------


def test_plan_file_round_trip_keeps_other_models(tmp_path: Path) -> None:
    ws = settings()
    path = tmp_path / "plan.json"
    a = plan_model(ws, "a", 2, disagreement=0.05, measured=True, accuracy=0.93)
    b = plan_model(ws, "b", 4)
    write_plan(path, {"a": a.to_dict()})
    write_plan(path, {"b": b.to_dict()})
    got = read_plan(path)
    assert set(got) == {"a", "b"}
    assert got["a"].n_classes == 2 and got["a"].disagreement == 0.05
    assert got["a"].accuracy == 0.93 and got["a"].measured
    assert not got["b"].measured


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not JSON"),
    ("[]", "not a plan"),
    ('{"version": 1, "models": {"a": {"n_classes": 1, "disagreement": 0.1}}}',
     "n_classes >= 2"),
    ('{"version": 1, "models": {"a": {"n_classes": 2}}}', "disagreement"),
    ('{"version": 1, "models": {"a": []}}', "n_classes"),
])
def test_bad_plan_files_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        read_plan(path)
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_plan(tmp_path / "missing.json")


# settings ----------------------------------------------------------------------------------


def test_settings_defaults_and_validation(tmp_path: Path) -> None:
    ws = settings(plan_file="plan.json").resolved(tmp_path)
    assert ws.fraction == "auto" and ws.target_log2_p == -40 and ws.holding == 2000
    assert ws.max_fraction == 0.01 and ws.control_ratio == 10 and ws.repeats == "truthful"
    assert ws.plan_file == tmp_path / "plan.json"
    assert settings(fraction=0.02).fraction == 0.02
    for bad, message in (("often", "auto or a number"), (0.0, r"\(0, 0.5\]"),
                         (0.7, r"\(0, 0.5\]"), (True, "auto or a number")):
        with pytest.raises(ValidationError, match=message):
            settings(fraction=bad)
    with pytest.raises(ValidationError, match="lower control_ratio to at most 4"):
        settings(fraction=0.2, fraction_at_risk=None, control_ratio=10)
    assert settings(fraction=0.2, fraction_at_risk=None, control=False).fraction == 0.2
    with pytest.raises(ValidationError, match="http"):
        settings(timestamp_url="ftp://tsa")
    with pytest.raises(ValidationError, match="repeats"):
        settings(repeats="sometimes")
    with pytest.raises(ValidationError, match="target_log2_p"):
        settings(target_log2_p=0)


def test_written_plan_is_json_for_people_too(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    write_plan(path, {"a": plan_model(settings(), "a", 3).to_dict()})
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["models"]["a"]["marks_needed"] >= 1
    assert [v["answers"] for v in doc["models"]["a"]["volumes"]] == [1000, 2000, 5000]


def test_beyond_holding_the_rate_tapers_and_the_plan_counts_both_parts() -> None:
    import numpy as np

    from modelfence.watermark.power import marks_held_tapered

    ws = settings()
    plan = plan_model(ws, "m", 3, volumes=(1000, 2000, 5000))  # not capped at the defaults
    assert not plan.capped
    f = plan.fraction
    at = {v.answers: v for v in plan.volumes}
    assert at[1000].rate == at[2000].rate == f and at[5000].rate == f * ws.beyond_holding
    assert at[5000].expected_marks == pytest.approx(2000 * f + 3000 * f * ws.beyond_holding)
    assert at[5000].honest_cost_points < at[2000].honest_cost_points  # a heavy user pays less
    assert at[2000].held_marks >= plan.marks_needed  # the target holds where it was planned
    # the 95%-held count of the two binomials, against simulation
    rng = np.random.default_rng(0)
    sims = rng.binomial(2000, f, 200_000) + rng.binomial(3000, f * 0.25, 200_000)
    held = marks_held_tapered(5000, 2000, f, f * 0.25)
    assert np.mean(sims >= held) >= 0.95 > np.mean(sims >= held + 1)
    assert marks_held_tapered(1500, 2000, f, f * 0.25) == marks_held(1500, f)
    # under consistent repeats the rate never falls (a lower one would change old answers)
    steady = plan_model(settings(repeats="consistent"), "m", 3, volumes=(5000,))
    assert steady.volumes[0].rate == steady.fraction

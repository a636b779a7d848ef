"""The one risk engine both protocols share: combine, episodes, crossings, the risk guard.

The classifier monitor and the LLM risk book extract different evidence; these tests check
that what they do with it is the same code: the same noisy-OR, the same episode rules (an
LLM subject's alert fires once per episode, its held risk waits for the dwell), the same
one alert for a principal and its tenant, and the same guard setting `call.risk`.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from modelfence import risk
from modelfence.llm import risk as llm_risk
from modelfence.llm.risk import LlmRisk, LlmRiskBook, Observation, llm_rules
from modelfence.llm.risk_guard import LlmRiskGuard
from modelfence.llm.settings import LlmMonitorSettings
from modelfence.monitor import score as monitor_score
from modelfence.monitor import verdict
from modelfence.monitor.detectors import Reading
from modelfence.monitor.guard import MonitorGuard
from modelfence.risk import Alert, Crossing, Hysteresis, RiskGuard, alert_for, crossings

T0 = 1_800_000_000.0


def book(rules: Hysteresis | None = None, **kw: Any) -> LlmRiskBook:
    return LlmRiskBook(LlmMonitorSettings(**kw), ["m"], rules=rules)


def leak(principal: str = "eve", tenant: str | None = None) -> Observation:
    return Observation("m", principal, tenant, leak=True)


# combine ---------------------------------------------------------------------------------


def test_noisy_or_adds_independent_evidence_and_clamps() -> None:
    assert risk.noisy_or([]) == 0.0
    assert risk.noisy_or([0.5, 0.5]) == pytest.approx(0.75)
    assert risk.noisy_or([1.5, -2.0, float("nan")]) == 1.0  # clamped; NaN counts as 0
    parts = {"a": 0.5, "b": 0.2, "c": 0.1}
    assert risk.combine(parts, only={"a", "c"}) == pytest.approx(1 - 0.5 * 0.9)
    raw, sticky = risk.combine_with(parts, {"b"})
    assert (raw, sticky) == (risk.combine(parts), risk.combine(parts, {"b"}))


def test_the_monitor_and_the_llm_book_share_the_combine_function() -> None:
    # the books use the engine's functions, not copies of them
    assert getattr(llm_risk, "combine") is risk.combine  # noqa: B009
    assert getattr(monitor_score, "combine_with") is risk.combine_with  # noqa: B009
    assert not hasattr(llm_risk, "_noisy_or")
    # and the raw risk each reports is the engine's noisy-OR of its parts
    b = book(half_life_s=100.0)
    b.observe(Observation("m", "p", None, leak=True, asked=("logprobs",)), now=T0)
    got = b.risk("m", "principal", "p", now=T0 + 50)
    assert len(got.parts) == 2 and got.raw == risk.combine(got.parts)
    readings = {"ood": Reading(0.3, ""), "volume": Reading(0.4, "")}
    assert verdict.combine(readings) == risk.combine({"ood": 0.3, "volume": 0.4})
    assert verdict.combine(readings, frozenset({"ood"})) == pytest.approx(0.3)


# episodes on the LLM book ----------------------------------------------------------------


def test_the_llm_rules_start_at_alert_at_and_release_at_half_of_it() -> None:
    rules = llm_rules(LlmMonitorSettings(alert_at=0.6))
    assert (rules.threshold, rules.release, rules.hold_s) == (0.6, 0.3, 0.0)
    assert rules.min_dwell_s == llm_risk.LLM_MIN_DWELL_S > 0
    assert book(alert_at=0.6).rules == rules


def test_an_llm_subject_alerts_once_per_episode_and_its_held_risk_waits_for_the_dwell(
        ) -> None:
    b = book(half_life_s=100.0)  # a leak alone is 0.6: over alert_at (0.5)
    alerts = b.observe(leak(), now=T0) + b.observe(leak(), now=T0 + 1)
    assert [(c.subject_kind, c.subject) for c in alerts] == [("principal", "eve")]
    held = b.peek("m", "eve", None, now=T0 + 1)
    assert held == pytest.approx(0.84, abs=0.01)
    # 400 s on the evidence is a tenth of a leak: the raw risk is far below the release
    # (0.25), but the episode has not lasted its dwell (600 s): the risk acted on holds
    early = b.risk("m", "principal", "eve", now=T0 + 400)
    assert early.raw < 0.25 and early.flagged and early.score == pytest.approx(held)
    assert b.peek("m", "eve", None, now=T0 + 400) == pytest.approx(held)
    # a leak within the episode raises no second alert
    assert b.observe(leak(), now=T0 + 400) == []
    # past the dwell, with the raw risk below the release, the episode ends ...
    late = b.risk("m", "principal", "eve", now=T0 + 3000)
    assert not late.flagged and late.score == late.raw < 0.01
    # ... and the next leak starts another one: one more alert
    again = b.observe(leak(), now=T0 + 3000)
    assert [(c.subject_kind, c.risk.flagged) for c in again] == [("principal", True)]


def test_the_rules_given_decide_the_llm_episodes() -> None:
    """Without a dwell the episode ends as soon as the raw risk is below the release: the
    same evidence alerts again at 400 s, where the default rules hold it."""
    quick = Hysteresis(threshold=0.5, release=0.25, min_dwell_s=0.0, hold_s=0.0,
                       sticky=frozenset())
    b = book(quick, half_life_s=100.0)
    assert len(b.observe(leak(), now=T0)) == 1
    assert b.peek("m", "eve", None, now=T0 + 400) < 0.25
    assert len(b.observe(leak(), now=T0 + 400)) == 1


def test_another_replicas_observation_holds_the_episode_without_an_alert() -> None:
    here = book(half_life_s=100.0)
    assert here.observe(leak(), now=T0, remote=True) == []  # the replica that answered alerts
    assert here.risk("m", "principal", "eve", now=T0).flagged
    assert here.observe(leak(), now=T0 + 1) == []  # same episode: no second alert here


# crossings ----------------------------------------------------------------------------


def _llm(score: float) -> LlmRisk:
    return LlmRisk(score, {"leak": score}, 3, 0.0, True, score)


def test_one_alert_per_observation_for_a_principal_and_its_tenant() -> None:
    mine, theirs = _llm(0.7), _llm(0.6)
    both = crossings("p", "t", {"principal": mine, "tenant": theirs}, True)
    assert both == [Crossing("principal", "p", mine, "t", theirs)]
    assert crossings("p", "t", {"tenant": theirs}, False) == [
        Crossing("tenant", "t", theirs, "t")]
    assert crossings("p", "t", {"tenant": theirs}, True) == []  # the key's alert told of it
    assert crossings("p", None, {}, False) == []


def test_an_llm_principal_and_tenant_starting_together_raise_one_alert() -> None:
    b = book(half_life_s=10_000.0, tenant_allowance=0.0)
    first = b.observe(leak("key0", "acme"), now=T0)  # the tenant leaves its top member out
    assert [(c.subject_kind, c.subject, c.tenant_risk) for c in first] == [
        ("principal", "key0", None)]
    second = b.observe(leak("key1", "acme"), now=T0 + 1)
    assert len(second) == 1
    c = second[0]
    assert (c.subject_kind, c.subject, c.tenant) == ("principal", "key1", "acme")
    assert c.tenant_risk is not None and c.tenant_risk.score >= 0.5
    alert = alert_for("m", c)
    assert isinstance(alert, Alert) and alert.tenant_risk == c.tenant_risk.score
    assert alert.queries == 1 and "tenant acme is flagged too" in alert.describe()


# the risk source and its guard ------------------------------------------------------------


def _call(principal: str, tenant: str = "") -> Any:
    notes: list[tuple[str, ...]] = []
    return SimpleNamespace(principal=SimpleNamespace(id=principal, tenant=tenant),
                           model=SimpleNamespace(name="m"), risk=0.0, notes=notes,
                           note=lambda *a: notes.append(a))


def test_both_protocols_set_call_risk_with_the_one_risk_guard() -> None:
    assert issubclass(MonitorGuard, RiskGuard) and issubclass(LlmRiskGuard, RiskGuard)
    # both are the shared one; an operator's pin follows on both (`PinGuard`, below)
    assert LlmRiskGuard.on_request is RiskGuard.on_request
    assert MonitorGuard.on_request is RiskGuard.on_request
    b = book(half_life_s=100.0)
    sent: list[Alert] = []
    guard = LlmRiskGuard(b, sent.append)
    guard.record(Observation("m", "eve", "evil", leak=True, ts=T0))
    assert [(a.kind, a.subject, a.tenant) for a in sent] == [("principal", "eve", "evil")]
    call = _call("mallory", "evil")  # a new key of the same tenant carries the tenant's risk
    asyncio.run(guard.on_request(call))
    assert call.risk == b.peek("m", "mallory", "evil")
    call = _call("eve")
    asyncio.run(guard.on_request(call))
    assert call.risk == b.peek("m", "eve", None) > 0.5
    assert call.notes[0][0] == "llm_risk"


def test_a_source_that_does_not_watch_the_model_leaves_the_risk_alone() -> None:
    class Unwatched:
        def watches(self, model: str) -> bool:
            return False

        def peek(self, model: str, principal: str, tenant: str | None) -> float:
            raise AssertionError("not asked")

    call = _call("eve")
    call.risk = 0.25
    asyncio.run(RiskGuard(Unwatched()).on_request(call))
    assert call.risk == 0.25 and call.notes == []


def test_monitor_risk_is_held_by_the_same_episode_rules() -> None:
    """The monitor's settings make a `Hysteresis` of the engine's, stepped by `risk.step`."""
    settings = verdict.MonitorSettings(threshold=0.5, min_dwell_s=10.0, hold_s=0.0)
    rules = Hysteresis.of(settings)
    assert rules.release == pytest.approx(0.3) and rules.sticky == frozenset(verdict.STICKY)
    ep, began = risk.step(risk.NO_EPISODE, 0.8, 0.0, T0, rules)
    assert began and ep.active
    assert risk.view(ep, 0.1, T0 + 5, rules).level == 0.8  # before the dwell: held
    assert risk.view(ep, 0.1, T0 + 10, rules).level == pytest.approx(0.1)
    assert np.isinf(risk.view(ep, 0.1, T0 + 10, rules).since)

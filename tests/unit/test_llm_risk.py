"""The LLM risk book (evidence, decay, tenants, alerts, bounds) and the control bands."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from modelfence.llm.risk import LlmRiskBook, Observation
from modelfence.llm.settings import LlmModel, LlmMonitorSettings

T0 = 1_800_000_000.0


def book(**kw: float) -> LlmRiskBook:
    return LlmRiskBook(LlmMonitorSettings(**kw), ["m"])  # type: ignore[arg-type]


def test_a_leak_alerts_once_and_decays_with_the_half_life() -> None:
    b = book(half_life_s=100.0)
    crossings = b.observe(Observation("m", "eve", "evil", leak=True), now=T0)
    assert [(c.kind, c.subject) for c in crossings] == [("principal", "eve"), ("tenant", "evil")]
    assert b.peek("m", "eve", "evil", now=T0) == pytest.approx(0.6)
    assert b.observe(Observation("m", "eve", "evil", leak=True), now=T0 + 1) == []  # once
    assert b.peek("m", "eve", None, now=T0 + 1) == pytest.approx(0.84, abs=0.01)  # noisy-OR
    assert b.peek("m", "eve", None, now=T0 + 101) == pytest.approx(0.42, abs=0.01)  # halved
    assert b.peek("m", "eve", None, now=T0 + 2000) < 0.01
    # once the risk has clearly fallen back, the next crossing alerts again
    assert b.observe(Observation("m", "eve", None, leak=True), now=T0 + 2000)


def test_the_tenant_carries_the_risk_of_all_its_keys() -> None:
    b = book()
    for i in range(5):  # five keys, each probing once: each stays low, the tenant does not
        b.observe(Observation("m", f"key{i}", "ring", probe=True), now=T0)
    assert b.peek("m", "key0", None, now=T0) == pytest.approx(0.1)
    assert b.peek("m", "fresh-key", "ring", now=T0) == pytest.approx(1 - 0.9**5)
    parts = b.risk("m", "tenant", "ring", now=T0)
    assert parts.requests == 5 and set(parts.parts) == {"probe"}
    assert "probe" in parts.explain()


def test_screening_verdicts_count_by_their_score() -> None:
    b = book()
    b.observe(Observation("m", "a", None, screen="extraction", screen_score=1.0), now=T0)
    b.observe(Observation("m", "b", None, screen="injection", screen_score=0.5), now=T0)
    b.observe(Observation("m", "c", None, screen="benign", screen_score=0.9), now=T0)
    assert b.peek("m", "a", None, now=T0) == pytest.approx(0.35)
    assert b.peek("m", "b", None, now=T0) == pytest.approx(0.1)
    assert b.peek("m", "c", None, now=T0) == 0.0


def test_token_volume_far_above_the_peers_raises_risk() -> None:
    b = book()
    for i in range(20):
        b.observe(Observation("m", f"user{i}", None, tokens=500), now=T0)
    assert b.peek("m", "user0", None, now=T0) == 0.0
    b.observe(Observation("m", "distiller", None, tokens=500), now=T0 + 11)
    assert b.peek("m", "distiller", None, now=T0 + 11) == 0.0  # like its peers
    b.observe(Observation("m", "distiller", None, tokens=500_000), now=T0 + 12)
    risk = b.risk("m", "principal", "distiller", now=T0 + 12)
    assert risk.parts["volume"] == pytest.approx(0.5, abs=0.01)  # 1,000x the median


def test_volume_needs_peers() -> None:
    b = book()
    b.observe(Observation("m", "alone", None, tokens=10**9), now=T0)
    assert b.peek("m", "alone", None, now=T0) == 0.0


def test_subjects_are_bounded() -> None:
    b = book(max_subjects=10)
    for i in range(100):
        b.observe(Observation("m", f"p{i}", None, leak=True), now=T0)
    assert b.peek("m", "p0", None, now=T0) == 0.0  # dropped, least recently seen
    assert b.peek("m", "p99", None, now=T0) > 0.5
    assert b.knows("m") and not b.knows("other")
    assert b.peek("other", "p99", None) == 0.0


def _model(**kw: object) -> LlmModel:
    return LlmModel(name="m", upstream="http://127.0.0.1:1/v1", **kw)  # type: ignore[arg-type]


BANDS = [{"name": "watched", "from_risk": 0.3, "controls": {"max_tokens": 256}},
         {"name": "locked", "from_risk": 0.7, "controls": {"max_tokens": 16, "max_n": 1}}]


def test_bands_follow_risk_and_policy_pins() -> None:
    m = _model(controls={"logprobs": True}, bands=BANDS)
    assert m.controls_for(0.0)[0] == "default" and m.controls_for(0.0)[1].logprobs
    assert m.controls_for(0.3)[0] == "watched"
    assert m.controls_for(0.95)[1].max_tokens == 16
    assert m.controls_for(0.95, ("watched",))[0] == "watched"  # a pin wins over risk
    assert m.controls_for(0.0, ("default",))[0] == "default"
    assert m.controls_for(0.0, ("no-such-band",))[0] == "locked"  # unknown pin: strictest
    assert _model().controls_for(0.99) == ("default", _model().controls)


@pytest.mark.parametrize("bands", [
    [BANDS[1], BANDS[0]],  # not rising
    [BANDS[0], {**BANDS[1], "name": "watched"}],  # names repeat
    [{**BANDS[0], "name": "default"}],  # the base controls' name
])
def test_bad_bands_are_refused(bands: list[dict[str, object]]) -> None:
    with pytest.raises(ValidationError):
        _model(bands=bands)


def test_stream_entries_round_trip() -> None:
    from modelfence.llm.risk_sync import decode, encode

    obs = Observation("m", "p", "t", tokens=12, leak=True, screen="extraction",
                      screen_score=0.9, probe=True, ts=T0 + 0.25, origin="host:1")
    wire = {k.encode(): v.encode() for k, v in encode(obs).items()}
    assert decode(wire) == obs
    plain = Observation("m", "p", None, ts=T0, origin="h")
    assert decode({k.encode(): v.encode() for k, v in encode(plain).items()}) == plain
    with pytest.raises(KeyError):
        decode({b"m": b"m"})


async def test_a_restarted_replica_replays_its_own_evidence(redis_url: str) -> None:
    import secrets

    import redis.asyncio

    from modelfence.llm.risk_sync import RiskStream

    key = f"mftest:llm-risk:{secrets.token_hex(4)}"
    settings = LlmMonitorSettings(shared=redis_url, key=key)
    before = LlmRiskBook(settings, ["m"])
    stream = RiskStream(before, url=redis_url, key=key, stream_max=1000, replica="host:7:aa")
    await stream.start()
    obs = Observation("m", "eve", None, leak=True, ts=T0, origin="host:7:aa")
    before.observe(obs, now=T0)
    stream.publish(obs)
    stream.publish(Observation("other-model", "eve", None, leak=True, ts=T0, origin="x"))
    await asyncio.sleep(0.2)
    await stream.stop()
    client = redis.asyncio.Redis.from_url(redis_url)
    await client.xadd(key, {"m": "m", "junk": "1"})  # a malformed entry is skipped
    try:
        after = LlmRiskBook(settings, ["m"])  # same host and pid, a new process
        restarted = RiskStream(after, url=redis_url, key=key, stream_max=1000,
                               replica="host:7:bb")
        await restarted.start()
        assert after.peek("m", "eve", None, now=T0) == pytest.approx(0.6)
        assert not after.knows("other-model")
        await restarted.stop()
    finally:
        await client.delete(key)
        await client.aclose()

"""The LLM risk book (evidence, decay, tenants, alerts, bounds) and the control bands."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from pydantic import ValidationError

from modelfence.llm.risk import LlmRiskBook, Observation
from modelfence.llm.settings import LlmModel, LlmMonitorSettings

T0 = 1_800_000_000.0


def book(**kw: float) -> LlmRiskBook:
    return LlmRiskBook(LlmMonitorSettings(**kw), ["m"])  # type: ignore[arg-type]


def test_a_leak_alerts_once_and_its_evidence_decays_with_the_half_life() -> None:
    b = book(half_life_s=100.0)
    crossings = b.observe(Observation("m", "eve", "evil", leak=True), now=T0)
    assert [(c.subject_kind, c.subject) for c in crossings] == [("principal", "eve")]
    assert b.peek("m", "eve", "evil", now=T0) == pytest.approx(0.6)
    assert b.observe(Observation("m", "eve", "evil", leak=True), now=T0 + 1) == []  # once
    assert b.peek("m", "eve", None, now=T0 + 1) == pytest.approx(0.84, abs=0.01)  # noisy-OR
    # the count of leaks halves (2 → 1): the raw risk is one leak's again, while the risk
    # acted on is held where the episode rose until the raw risk falls below the release
    assert b.risk("m", "principal", "eve", now=T0 + 101).raw == pytest.approx(0.6, abs=0.01)
    assert b.peek("m", "eve", None, now=T0 + 101) == pytest.approx(0.84, abs=0.01)
    assert b.peek("m", "eve", None, now=T0 + 2000) < 0.01
    # once the risk has clearly fallen back, the next crossing alerts again
    assert b.observe(Observation("m", "eve", None, leak=True), now=T0 + 2000)


def test_a_thief_split_over_ten_keys_shows_at_the_tenant() -> None:
    b = book()
    crossings = []
    for i in range(10):  # each key asks for the system prompt once: within its allowance
        crossings += b.observe(Observation("m", f"key{i}", "ring", tokens=50,
                                           screen="extraction", screen_score=0.8),
                               now=T0 + 10 * i)
    assert [b.peek("m", f"key{i}", None, now=T0 + 100) for i in range(10)] == [0.0] * 10
    assert [c.subject_kind for c in crossings] == ["tenant"]  # the ring, once
    tenant = b.risk("m", "tenant", "ring", now=T0 + 100)
    assert tenant.score >= 0.5 and tenant.queries == 10 and "extraction" in tenant.explain()
    assert b.peek("m", "fresh-key", "ring", now=T0 + 100) == pytest.approx(tenant.score)


def test_one_member_does_not_move_its_peers_unless_the_tenant_behaves_differently() -> None:
    b = book()
    for u in range(10):
        b.observe(Observation("m", f"user{u}", "acme", tokens=300), now=T0)
    alerts = []
    for i in range(5):  # one member leaks and asks for the prompt again and again
        alerts += b.observe(Observation("m", "user0", "acme", tokens=20, leak=True,
                                        screen="extraction", screen_score=1.0),
                            now=T0 + 60 + i)
    assert [c.subject_kind for c in alerts] == ["principal"]
    assert b.peek("m", "user0", "acme", now=T0 + 100) > 0.9
    assert [b.peek("m", f"user{u}", "acme", now=T0 + 100) for u in range(1, 10)] == [0.0] * 9
    assert b.risk("m", "tenant", "acme", now=T0 + 100).score == 0.0  # the left-out member
    b.observe(Observation("m", "user1", "acme", leak=True), now=T0 + 200)  # a second one
    assert b.peek("m", "user2", "acme", now=T0 + 200) == 0.0  # two mistakes: not the tenant
    b.observe(Observation("m", "user2", "acme", leak=True), now=T0 + 300)
    b.observe(Observation("m", "user3", "acme", leak=True), now=T0 + 400)
    # four members leaking: the tenant as a whole does, and its other members see it
    assert b.peek("m", "user5", "acme", now=T0 + 400) >= 0.5


def test_distill_evidence_and_the_member_left_out_of_the_tenant() -> None:
    """Distillation windows arrive apart from calls: a principal's names no tenant, a
    tenant's names the key it blames. The tenant leaves out the member that gave *it* the
    most, not the one with the most evidence of its own."""
    b = book()
    b.observe(Observation("m", "solo", None, distill=0.5), now=T0)
    assert b.peek("m", "solo", None, now=T0) == pytest.approx(0.3)  # weight x evidence
    assert b.risk("m", "principal", "solo", now=T0).queries == 0  # not a request
    for _ in range(3):
        b.observe(Observation("m", "a", None, distill=1.0), now=T0)  # a's own windows
    for who, windows in [("a", 1), ("b", 3), ("c", 2)]:
        for _ in range(windows):
            b.observe(Observation("m", who, "lab", distill=1.0), now=T0)
    # six tenant windows; b gave the most (3) and is left out; 1 more is allowed
    assert b.risk("m", "tenant", "lab", now=T0).parts["distill"] == pytest.approx(
        1 - 0.4 ** 2)


def _day(users: int, tenant: str | None, rng: random.Random, per_day: range,
         fp_every: int = 250) -> tuple[list[tuple[float, str]], set[int]]:
    """A day of honest prompts at random times; every `fp_every`th a screener hit."""
    times = sorted((rng.uniform(0, 86_400), f"user{u}") for u in range(users)
                   for _ in range(rng.choice(per_day)))
    return times, set(range(fp_every // 2, len(times), fp_every))


def _honest_day(b: LlmRiskBook, users: int, *, fp_every: int = 250, seed: int = 0,
                per_day: range = range(20, 150)) -> tuple[int, int, dict[str, str], float]:
    """A day of a tenant's honest prompts, one in `fp_every` screened as an attack: band
    changes, alerts, each user's last band, and the share of prompts screened."""
    rng = random.Random(seed)
    model = _model(bands=BANDS)
    times, hits = _day(users, "acme", rng, per_day, fp_every=fp_every)
    bands: dict[str, str] = {}
    changes = alerts = 0
    for i, (t, user) in enumerate(times):
        band = model.controls_for(b.peek("m", user, "acme", now=T0 + t))[0]
        changes += user in bands and bands[user] != band
        bands[user] = band
        kind = rng.choice(["extraction", "injection"]) if i in hits else "benign"
        alerts += len(b.observe(Observation("m", user, "acme", tokens=400, screen=kind,
                                            screen_score=rng.uniform(0.6, 1.0)), now=T0 + t))
    return changes, alerts, bands, len(hits) / len(times)


@pytest.mark.parametrize(("users", "per_day"), [(50, range(20, 150)), (1, range(500, 501)),
                                                (10, range(100, 300))])
def test_honest_users_with_screener_false_positives_keep_their_band_all_day(
        users: int, per_day: range) -> None:
    """0.4% of honest prompts screened as extraction or injection: no alert, no band change
    for any user, in a tenant of 50, a heavy user (500 prompts a day) alone, a tenant of 10."""
    b = book()
    changes, alerts, bands, share = _honest_day(b, users, seed=users, per_day=per_day)
    assert share == pytest.approx(0.004, rel=0.1)
    assert (changes, alerts) == (0, 0)
    assert set(bands.values()) == {"default"}
    # the book saw the hits: summed as before, the tenant would have alerted
    tenant = b.risk("m", "tenant", "acme", now=T0 + 86_400)
    assert set(tenant.parts) & {"extraction", "injection"}


def test_a_population_whose_prompts_trip_the_screener_more_often_sets_its_own_background(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A help desk whose users say "password" and "confidential" all day: 4% of honest
    prompts screened (2% as each kind, five times the configured floor). The model's own
    rate is the background, so its tenant of 50 keeps its band; at the fixed floor it
    would not."""
    from modelfence.llm import risk

    b = book()
    assert _honest_day(b, 50, fp_every=25, seed=5)[:2] == (0, 0)
    assert b.background_rate("m", "extraction") == pytest.approx(0.02, rel=0.5)
    monkeypatch.setattr(risk, "BACKGROUND_MIN_REQUESTS", math.inf)  # the fixed floor only
    changes, alerts, _, _ = _honest_day(book(), 50, fp_every=25, seed=5)
    assert alerts >= 1 and changes >= 1


def test_a_learned_background_still_shows_a_ring_and_is_capped() -> None:
    b = book()
    _honest_day(b, 50, fp_every=25, seed=6)  # a day of a noisy honest population
    crossings = []
    for i in range(10):  # then a ring of ten keys, each asking for the system prompt twice
        for j in range(2):
            crossings += b.observe(Observation("m", f"key{i}", "ring", tokens=50,
                                               screen="extraction", screen_score=0.9),
                                   now=T0 + 86_400 + 20 * i + j)
    assert "tenant" in [c.subject_kind for c in crossings]
    flood = book()  # thieves flooding a model cannot lift everyone's allowance past the cap
    for i in range(400):
        flood.observe(Observation("m", f"t{i}", None, tokens=10, screen="extraction",
                                  screen_score=0.9), now=T0 + i)
    from modelfence.llm.risk import SCREEN_RATE_CAP

    assert flood.background_rate("m", "extraction") == SCREEN_RATE_CAP
    assert book().background_rate("m", "extraction") == 0.004  # too little traffic: the floor


def test_a_caller_screened_as_extraction_again_and_again_alerts_on_the_third() -> None:
    b = book()
    first = b.observe(Observation("m", "x", None, tokens=20, screen="extraction",
                                  screen_score=0.9), now=T0)
    assert first == [] and b.peek("m", "x", None, now=T0) == 0.0  # maybe a false positive
    assert b.observe(Observation("m", "x", None, screen="extraction", screen_score=0.9),
                     now=T0 + 30) == []
    assert 0.2 < b.peek("m", "x", None, now=T0 + 30) < 0.3  # one beyond the allowance
    third = b.observe(Observation("m", "x", None, screen="extraction", screen_score=0.9),
                      now=T0 + 60)
    assert [c.subject_kind for c in third] == ["principal"]


def test_screening_verdicts_count_by_their_score() -> None:
    b = book()
    for who, kind, score in [("a", "extraction", 1.0), ("b", "injection", 0.5),
                             ("c", "benign", 0.9)]:
        for i in range(3):
            b.observe(Observation("m", who, None, screen=kind, screen_score=score), now=T0 + i)
    # the first hit is the allowance; each other counts as weight x score (a noisy-OR)
    assert b.peek("m", "a", None, now=T0 + 2) == pytest.approx(1 - 0.65 ** 2, abs=0.01)
    # half a score is worth half of a full hit's log-survival: 3 x 0.47 hits, 1 allowed
    events = 3 * math.log(1 - 0.2 * 0.5) / math.log(1 - 0.2)
    assert b.peek("m", "b", None, now=T0 + 2) == pytest.approx(1 - 0.8 ** (events - 1),
                                                               abs=0.01)
    assert b.peek("m", "c", None, now=T0 + 2) == 0.0


def test_clamped_fields_count_as_probes_by_how_telling_they_are() -> None:
    from modelfence.llm.risk import poisson_quantile

    b = book()
    for i in range(12):
        b.observe(Observation("m", "lp", None, tokens=10, asked=("logprobs",)), now=T0 + i)
        b.observe(Observation("m", "n", None, tokens=10, asked=("n",)), now=T0 + i)
        b.observe(Observation("m", "sdk", None, tokens=10, asked=("max_tokens",)), now=T0 + i)
        b.observe(Observation("m", "old", None, probe=True), now=T0 + i)  # unnamed refusal
    lp, n = b.risk("m", "principal", "lp", now=T0 + 12), b.risk("m", "principal", "n",
                                                                now=T0 + 12)
    assert lp.parts["probe"] == pytest.approx(1 - 0.9 ** 11, abs=0.01)  # one allowed
    # n over the cap counts 0.05 each beyond what one request in ten of honest ones shows
    allowed = poisson_quantile(0.1 * 12, LlmMonitorSettings().false_alarm)
    assert n.parts["sampling"] == pytest.approx(1 - 0.95 ** (12 - allowed), abs=0.01)
    assert 0.0 < n.score < 0.3
    assert b.peek("m", "old", None, now=T0 + 12) == pytest.approx(lp.score)
    # max_tokens over the cap: what honest SDKs send; at most `clamp`, below every band
    assert b.risk("m", "principal", "sdk", now=T0 + 12).parts == {"clamp": pytest.approx(0.05)}


def test_the_controls_name_each_field_asked_beyond_the_band() -> None:
    """Clamped or refused, each field over the band's controls is named for the book."""
    from modelfence.errors import BadRequest
    from modelfence.llm.controls import apply_controls

    open_ = _model(controls={"logprobs": True, "logit_bias": "clamp"})
    asked: list[str] = []
    body = apply_controls("chat", {"messages": [], "n": 4, "logprobs": True, "top_logprobs": 20,
                                   "max_tokens": 10**6, "logit_bias": {"7": 100}},
                          open_, asked=asked)
    assert (body["n"], body["top_logprobs"], body["max_tokens"]) == (1, 5, 4096)
    assert sorted(asked) == ["logit_bias", "max_tokens", "n", "top_logprobs"]
    asked = []
    apply_controls("chat", {"messages": [], "max_tokens": 100}, open_, asked=asked)
    assert asked == []  # within the controls: nothing
    for body_, field in [({"logprobs": True}, "logprobs"), ({"logit_bias": {"1": 1}},
                                                            "logit_bias")]:
        asked = []
        with pytest.raises(BadRequest):
            apply_controls("chat", {"messages": [], **body_}, _model(), asked=asked)
        assert asked == [field]  # named before the 400
    asked = []
    with pytest.raises(BadRequest):
        apply_controls("completion", {"prompt": "x", "echo": True, "best_of": 3}, _model(),
                       asked=asked)
    assert asked == ["best_of", "echo"]


def test_a_patient_prober_alerts_after_eight_probes() -> None:
    """One logprobs probe every 15 minutes: today's hourly half-life never reached 0.5."""
    b = book()
    for i in range(1, 30):
        if b.observe(Observation("m", "slow", None, asked=("logprobs", "top_logprobs")),
                     now=T0 + 900 * i):
            break
    assert i == 8
    hourly = book(half_life_s=3600.0)
    assert not any(hourly.observe(Observation("m", "slow", None, asked=("logprobs",)),
                                  now=T0 + 900 * i) for i in range(200))


def test_an_honest_heavy_user_hitting_caps_keeps_its_band_for_a_week() -> None:
    b, model = book(), _model(bands=BANDS)
    rng = random.Random(7)
    bands = set()
    for day in range(7):
        for j in range(150):  # every request over max_tokens (its SDK), n=2 on one in ten,
            now = T0 + day * 86_400 + j * 576  # logprobs by mistake once a day
            asked = (("max_tokens", "n") if j % 10 == 3 else
                     ("logprobs",) if j == 77 else ("max_tokens",))
            assert not b.observe(Observation("m", "dev", "shop", tokens=rng.randint(50, 900),
                                             asked=asked), now=now)
            bands.add(model.controls_for(b.peek("m", "dev", "shop", now=now))[0])
    assert bands == {"default"}
    assert b.risk("m", "principal", "dev", now=T0 + 7 * 86_400).parts["sampling"] < 0.1


def test_each_kind_halves_over_its_own_horizon() -> None:
    b = book(false_alarm=0.5)  # no allowance: the parts are plain decayed counts
    b.observe(Observation("m", "p", None, asked=("logprobs",), screen="extraction",
                          screen_score=1.0), now=T0)
    at = {h: b.risk("m", "principal", "p", now=T0 + h * 3600).parts for h in (0, 6, 48)}
    assert at[0]["extraction"] == pytest.approx(0.35) and at[0]["probe"] == pytest.approx(0.1)
    # screener hits halve in 6 hours; probes in 2 days
    assert at[6]["extraction"] == pytest.approx(1 - 0.65 ** 0.5, abs=1e-3)
    assert at[6]["probe"] == pytest.approx(1 - 0.9 ** 0.5 ** (6 / 48), abs=1e-3)
    assert at[48]["probe"] == pytest.approx(1 - 0.9 ** 0.5, abs=1e-3)
    assert at[48]["extraction"] < 0.01  # long gone
    quick = book(half_lives={"probe": 60.0}, false_alarm=0.5)  # type: ignore[arg-type]
    quick.observe(Observation("m", "p", None, asked=("logprobs",)), now=T0)
    assert quick.risk("m", "principal", "p", now=T0 + 60).raw == pytest.approx(
        1 - 0.9 ** 0.5, abs=1e-3)
    # the risk acted on is held where it rose until the episode rules let it fall
    assert quick.peek("m", "p", None, now=T0 + 60) == pytest.approx(0.1)


def test_poisson_allowance() -> None:
    from modelfence.llm.risk import poisson_quantile

    assert poisson_quantile(0.0, 0.001) == 0
    assert poisson_quantile(0.0005, 0.001) == 0  # too rare to expect even one
    assert poisson_quantile(0.004, 0.001) == 1  # a new user may show one false positive
    assert poisson_quantile(2.0, 0.001) == 8  # P(X > 7) = 0.0011, P(X > 8) = 0.00024
    assert poisson_quantile(400.0, 0.001) == pytest.approx(462, abs=2)  # normal beyond 100


def test_token_volume_far_above_the_peers_raises_risk() -> None:
    b = book()
    for i in range(20):  # regular users: five requests of 100 tokens each
        for j in range(5):
            b.observe(Observation("m", f"user{i}", None, tokens=100), now=T0 + j)
    for i in range(500):  # a flood of keys used once, with little: not peers
        b.observe(Observation("m", f"once{i}", None, tokens=1), now=T0 + 5)
    assert b.peek("m", "user0", None, now=T0 + 20) == 0.0
    b.observe(Observation("m", "distiller", None, tokens=500), now=T0 + 21)
    assert b.peek("m", "distiller", None, now=T0 + 21) == 0.0  # like its peers
    b.observe(Observation("m", "distiller", None, tokens=500_000), now=T0 + 22)
    risk = b.risk("m", "principal", "distiller", now=T0 + 22)
    assert risk.parts["volume"] == pytest.approx(0.5, abs=0.01)  # 1,000x the median


def test_a_tenant_spends_per_member() -> None:
    """A tenant of 50 honest users spends 50 users' tokens: not volume evidence; nor is
    one heavy member's spending its peers'; a tenant whose 10 keys each spend 50 users'
    tokens is."""
    b = book()
    for u in range(20):  # tenants of one user each, five requests of 200 tokens
        for j in range(5):
            b.observe(Observation("m", f"solo{u}", f"t{u}", tokens=200), now=T0 + j)
    for u in range(50):
        for j in range(5):  # the peers' median is recomputed every 10 s
            b.observe(Observation("m", f"user{u}", "big", tokens=200), now=T0 + 20 + j)
    for k in range(10):
        b.observe(Observation("m", f"key{k}", "ring", tokens=50_000), now=T0 + 30)
    for u in range(9):  # one member spends 500 users' tokens: its own volume, not its peers'
        b.observe(Observation("m", f"peer{u}", "mixed", tokens=1000), now=T0 + 30)
    b.observe(Observation("m", "heavy", "mixed", tokens=500_000), now=T0 + 30)
    assert b.risk("m", "principal", "heavy", now=T0 + 30).parts["volume"] == pytest.approx(0.5)
    assert b.risk("m", "tenant", "mixed", now=T0 + 30).parts.get("volume", 0.0) == 0.0
    assert b.peek("m", "peer0", "mixed", now=T0 + 30) == 0.0
    assert b.risk("m", "tenant", "big", now=T0 + 30).parts.get("volume", 0.0) == 0.0
    assert b.risk("m", "tenant", "ring", now=T0 + 30).parts["volume"] == pytest.approx(
        0.5 * (math.log10(50) - 1), abs=0.01)


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
    assert b.watches("m") and not b.watches("other")
    assert b.peek("other", "p99", None) == 0.0


def test_a_flagged_turn_screened_again_later_in_its_conversation_counts_once() -> None:
    from modelfence.llm.risk_repeats import RepeatedHits, user_turns

    hits = RepeatedHits(per_principal=4, max_principals=2)
    flagged = "what does 'confidential' mean on an offer letter?"
    chat: list[dict[str, object]] = [{"role": "system", "content": "Be kind."}]
    fresh = []
    for turn in [flagged, "and 'at will'?", "thanks!", "one more question"]:
        chat = [*chat, {"role": "user", "content": turn}]
        fresh.append(hits.fresh("ann", "chat", {"messages": chat}))
        chat = [*chat, {"role": "assistant", "content": "..."}]
    assert fresh == [True, False, False, False]
    # a new conversation, another principal, a completion: new evidence
    assert hits.fresh("ann", "chat", {"messages": [{"role": "user", "content": "hi"}]})
    assert hits.fresh("bob", "chat", {"messages": chat})
    assert hits.fresh("ann", "completion", {"prompt": flagged})
    assert user_turns("chat", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}]}, "junk"]}) == user_turns(
            "chat", {"messages": [{"role": "user", "content": "a"}]})
    for who in ("c", "d", "e"):  # bounded: the least recently seen principal is forgotten
        hits.fresh(who, "chat", {"messages": chat})
    assert hits.fresh("ann", "chat", {"messages": chat})


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
                      screen_score=0.9, probe=True, distill=0.5, ts=T0 + 0.25,
                      origin="host:1", asked=("n", "max_tokens"))
    wire = {k.encode(): v.encode() for k, v in encode(obs).items()}
    assert decode(wire) == obs
    plain = Observation("m", "p", None, ts=T0, origin="h")
    assert decode({k.encode(): v.encode() for k, v in encode(plain).items()}) == plain
    # an entry written before distill ("d") and asked ("a") were carried still decodes
    old = {k: v for k, v in wire.items() if k not in (b"a", b"d")}
    assert decode(old) == Observation("m", "p", "t", tokens=12, leak=True, screen="extraction",
                                      screen_score=0.9, probe=True, ts=T0 + 0.25,
                                      origin="host:1")
    with pytest.raises(KeyError):
        decode({b"m": b"m"})
    with pytest.raises(ValueError, match="too many"):
        decode({**wire, b"a": b",".join([b"n"] * 17)})
    # what it carries is scored alike on a replica that reads it
    here, there = book(), book()
    for _ in range(3):
        here.observe(obs, now=T0)
        there.observe(decode(wire), now=T0, remote=True)
    mine, theirs = here.risk("m", "principal", "p", now=T0), there.risk("m", "principal", "p",
                                                                       now=T0)
    assert (theirs.score, theirs.parts, theirs.queries) == (mine.score, mine.parts,
                                                             mine.queries)
    assert "probe" in there.risk("m", "principal", "p", now=T0).parts


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
        assert not after.watches("other-model")
        await restarted.stop()
    finally:
        await client.delete(key)
        await client.aclose()

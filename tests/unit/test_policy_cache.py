"""The decision cache never changes an answer: it equals uncached Cedar, and it is dropped
whenever what a decision depended on changes (a reload, the principal's attributes, a
context value across a policy's threshold); a revoked key is refused before policy."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from modelfence.config import ModelAttributes, settings_from_mapping
from modelfence.errors import PolicyError
from modelfence.identity.principal import Principal
from modelfence.policy import Facts, PolicyEngine, cedar_request
from modelfence.policy.engine import DEFAULT_POLICY, DEFAULT_SCHEMA, Verdict
from modelfence.policy.reads import DECIMALS, LONGS, bucket, context_reads, decimal_units
from modelfence.policy.request import CONTEXT_VALUES, context
from modelfence.policy.snapshot import load_policies

from ..support import digits_rows, infer_body

ALICE = Principal(id="alice", tenant="acme", groups=("analysts",), models=("digits",),
                  key_id="0123456789abcdef")
MODEL = ModelAttributes(owner="acme", sensitivity=1, tags=["vision"])
NOW = 1_764_000_000.0  # a fixed clock: both paths must see the same request


def engine_for(tmp_path: Path, text: str, name: str = "p.cedar") -> PolicyEngine:
    path = tmp_path / name
    path.write_text(text)
    engine = PolicyEngine([path], DEFAULT_SCHEMA)
    engine.load()
    return engine


def cached(engine: PolicyEngine, principal: Principal = ALICE, model: str = "digits",
           action: str = "infer", **facts: object) -> Verdict:
    f = Facts(**{"source": "127.0.0.1", "now": NOW, **facts})  # type: ignore[arg-type]
    return engine.decide_call(principal, action, model, MODEL, f)


def uncached(engine: PolicyEngine, principal: Principal = ALICE, model: str = "digits",
             action: str = "infer", **facts: object) -> Verdict:
    f = Facts(**{"source": "127.0.0.1", "now": NOW, **facts})  # type: ignore[arg-type]
    request, entities = cedar_request(principal, action, model, MODEL, f)
    return engine.decide(request, entities)


def cache_len(engine: PolicyEngine) -> int:
    return len(engine._decisions or ())


RISKY = '''
@id("own") permit(principal, action, resource) when { principal.models.contains(resource.name) };
@id("risky") forbid(principal, action, resource) when { context.risk.greaterThan(decimal("0.8")) };
@id("night") forbid(principal, action, resource) when { context.hour < 6 };
'''


def test_a_cached_allow_does_not_survive_a_reload_that_forbids_it(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, RISKY)
    assert cached(engine).allowed and cached(engine).allowed
    assert cache_len(engine) == 1
    (tmp_path / "p.cedar").write_text(RISKY + '@id("closed") forbid(principal, action, resource);')
    engine.load()
    verdict = cached(engine)
    assert (verdict.allowed, verdict.policies) == (False, ("closed",))
    # a worker restart that falls back to the last good set gets a fresh cache too
    engine.use(engine.bundle)
    assert cache_len(engine) == 0 and not cached(engine).allowed


def test_a_context_change_across_a_threshold_is_a_new_decision(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, RISKY)
    assert cached(engine, risk=0.1).allowed
    assert cached(engine, risk=0.79).allowed  # the same side of 0.8: the same entry
    assert cache_len(engine) == 1
    assert cached(engine, risk=0.8).allowed  # on it: not greater
    verdict = cached(engine, risk=0.8001)
    assert (verdict.allowed, verdict.policies) == (False, ("risky",))
    assert not cached(engine, risk=1.0).allowed
    assert cached(engine, risk=0.3).allowed
    night = NOW - NOW % 86400 + 5 * 3600  # 05:00 UTC
    assert not cached(engine, now=night).allowed
    assert cached(engine, now=night + 3600).allowed


def test_principal_attribute_changes_are_new_decisions(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, DEFAULT_POLICY.read_text())
    assert cached(engine).allowed
    # the same principal id, now with a purpose-bound grant, then with no model grant
    bound = Principal(id="alice", tenant="acme", groups=("analysts",), models=("digits",),
                      key_id="0123456789abcdef", attributes={"purpose": "research"})
    assert not cached(engine, bound).allowed
    assert cached(engine, bound, purpose="research").allowed
    ungranted = Principal(id="alice", tenant="acme", models=("other",))
    assert not cached(engine, ungranted).allowed
    fenced = Principal(id="alice", tenant="acme", models=("digits",),
                       attributes={"networks": ["10.0.0.0/8"]})
    assert not cached(engine, fenced).allowed
    assert cached(engine, fenced, source="10.1.2.3").allowed
    assert cached(engine).allowed  # the original grant still decides as before


def test_errors_are_not_cached_and_still_refuse(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, '''
permit(principal, action, resource);
forbid(principal, action, resource)
when { context.queries + 9223372036854775000 > 9223372036854775806 };''')
    for _ in range(2):
        with pytest.raises(PolicyError, match="policy evaluation failed"):
            cached(engine, queries=10**4)
    assert cached(engine, queries=5).allowed
    assert cache_len(engine) == 1


def test_the_cache_is_bounded_and_can_be_off(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, DEFAULT_POLICY.read_text())
    engine.cache_size = 50
    for i in range(500):
        assert cached(engine, purpose=f"p{i}").allowed
    assert cache_len(engine) == 50
    engine.cache_size = 0
    engine.use(engine.bundle)
    assert cached(engine).allowed and cache_len(engine) == 0


def test_reads_name_exact_attributes_and_thresholds() -> None:
    reads = context_reads(CEDAR_READS, CONTEXT_VALUES)
    assert reads is not None
    assert reads.exact == {"purpose", "now"}
    assert dict(reads.thresholds) == {"queries": (100,), "hour": (7,), "screen_score": (2500,)}
    whole = context_reads("permit(principal, action, resource) when { context == context };",
                          CONTEXT_VALUES)
    assert whole is not None and whole.exact == set(CONTEXT_VALUES) and not whole.thresholds
    assert decimal_units("0.8") == 8000 and decimal_units("-1.0001") == -10001
    assert [bucket(v, (5, 10)) for v in (4, 5, 6, 10, 11)] == [0, 1, 2, 3, 4]


def test_every_context_attribute_has_a_key_value() -> None:
    """An attribute added to the context without a key value would be missing from keys."""
    sent = context(ALICE, Facts(source="127.0.0.1", now=NOW))
    assert set(CONTEXT_VALUES) == set(sent)
    assert set(sent) >= LONGS | DECIMALS


CEDAR_READS = ('''
permit(principal, action, resource) when { context.queries < 100 && context.hour >= 7 };
forbid(principal, action, resource) when { decimal("0.25").lessThan(context.screen_score) };
forbid(principal, action, resource) when { context.purpose == "x" && context has risk };
forbid(principal, action, resource) when { context.now > principal.clearance };''')


# -- property: the cache equals uncached Cedar on random policy sets and requests -----------

LONG_TESTS = [("context.queries", (0, 3, 50, 1000)), ("context.hour", (0, 6, 7, 19, 23)),
              ("context.weekday", (0, 4, 5, 6)), ("context.now", (int(NOW), int(NOW) + 7200))]
DECIMAL_TESTS = [("context.risk", ("0.0", "0.5", "0.8", "0.95", "1.0")),
                 ("context.screen_score", ("0.25", "0.5", "0.9")),
                 ("context.epsilon_spent", ("0.5", "1.0", "8.0"))]
EXACT_TESTS = ['context.purpose == "research"', 'context.screen == "injection"',
               "context.screen_failed", "context.network_allowed",
               'context.source_ip.isInRange(ip("10.0.0.0/8"))',
               "principal.clearance < resource.sensitivity",
               'principal in Group::"analysts"', 'resource.tags.contains("restricted")',
               "context.queries + 9223372036854775000 > 9223372036854775806",
               "context.risk.greaterThan(context.screen_score)"]


def random_condition(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        attr, values = rng.choice(LONG_TESTS)
        return f"{attr} {rng.choice(['<', '<=', '>', '>=', '==', '!='])} {rng.choice(values)}"
    if roll < 0.7:
        attr, texts = rng.choice(DECIMAL_TESTS)
        method = rng.choice(["lessThan", "lessThanOrEqual", "greaterThan",
                             "greaterThanOrEqual"])
        if rng.random() < 0.5:
            return f'{attr}.{method}(decimal("{rng.choice(texts)}"))'
        return f'decimal("{rng.choice(texts)}").{method}({attr})'
    return rng.choice(EXACT_TESTS)


def random_policies(rng: random.Random) -> str:
    out = ['@id("grants") permit(principal, action, resource) '
           'when { principal.models.contains(resource.name) };']
    for i in range(rng.randint(1, 5)):
        effect = rng.choice(["permit", "forbid", "forbid"])
        joined = f" {rng.choice(['&&', '||'])} ".join(
            random_condition(rng) for _ in range(rng.randint(1, 3)))
        out.append(f'@id("r{i}") {effect}(principal, action, resource) '
                   f'{rng.choice(["when", "unless"])} {{ {joined} }};')
    return "\n".join(out)


PRINCIPALS = [
    ALICE,
    Principal(id="bob", tenant="acme", models=("digits",), attributes={"clearance": 3}),
    Principal(id="carol", tenant="t2", groups=("analysts",), models=("digits", "secret"),
              attributes={"purpose": "research", "networks": ["10.0.0.0/8"]}),
]


def random_facts(rng: random.Random) -> dict[str, object]:
    near = [0.0, 0.25, 0.2500, 0.24995, 0.25004, 0.5, 0.79999, 0.8, 0.80004, 0.80005, 0.8001,
            0.9, 0.95, 1.0, 1.5, -0.1]
    return {
        "source": rng.choice(["127.0.0.1", "10.1.2.3", "192.168.1.9", "not-an-ip"]),
        "purpose": rng.choice(["", "research", "other"]),
        "risk": rng.choice(near) if rng.random() < 0.7 else rng.random(),
        "screen_score": rng.choice(near) if rng.random() < 0.7 else rng.random(),
        "queries": rng.choice([0, 1, 2, 3, 4, 49, 50, 51, 999, 1000, 1001, 10**4]),
        "screen": rng.choice(["", "benign", "injection"]),
        "screen_failed": rng.random() < 0.2,
        "epsilon_spent": rng.choice([0.0, 0.49995, 0.5, 0.50004, 1.0, 7.9999, 8.0, 8.5, 1e12]),
        "now": NOW + rng.choice([0, 1, 3599, 3600, 7199, 7200, 7201]) + rng.choice(
            [0, 86400 * rng.randint(0, 6)]) + rng.randint(0, 23) * 3600,
    }


def outcome(decide: object, *args: object, **kw: object) -> tuple[object, ...]:
    try:
        v = decide(*args, **kw)  # type: ignore[operator]
    except PolicyError as exc:
        return ("error", str(exc))
    return (v.allowed, v.policies, v.shaping)


@pytest.mark.parametrize("seed", range(8))
def test_cached_decisions_equal_uncached_cedar(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    hits = 0
    for round_ in range(5):
        engine = engine_for(tmp_path, random_policies(rng), f"p{round_}.cedar")
        for _ in range(150):
            principal = rng.choice(PRINCIPALS)
            model = rng.choice(["digits", "secret"])
            facts = random_facts(rng)
            before = cache_len(engine)
            got = outcome(cached, engine, principal, model, **facts)
            hits += cache_len(engine) == before and got[0] != "error"
            want = outcome(uncached, engine, principal, model, **facts)
            assert got == want, (engine.bundle.text, principal, model, facts)
    assert hits > 50  # the cache was used, not only filled


# -- a revoked key never gets in, whatever the cache holds ------------------------------------

ADMIN = {"Authorization": "Bearer admin-" + "t" * 30}


@pytest.fixture()
def gateway(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits_files: dict[str, Path]
            ) -> Iterator[tuple[TestClient, TestClient]]:
    monkeypatch.setenv("MODELFENCE_SECRET", "s" * 40)
    monkeypatch.setenv("MODELFENCE_ADMIN_TOKEN", "admin-" + "t" * 30)
    from modelfence.gateway.app import build_app

    app = build_app(settings_from_mapping({
        "server": {"admin_listen": None},
        "stores": {"keys": f"sqlite:///{tmp_path / 'keys.db'}"},
        "audit": {"sink": "none://", "disabled_acknowledged": True},
        "models": [{"name": "digits",
                    "backend": {"type": "skops", "path": str(digits_files["skops"])}}]}))
    with TestClient(app) as client:
        admin = TestClient(app.state.admin_app)
        admin.portal = client.portal
        yield client, admin


def test_a_revoked_key_is_refused_though_its_allow_is_cached(
        gateway: tuple[TestClient, TestClient]) -> None:
    client, admin = gateway
    made = admin.post("/admin/keys", headers=ADMIN, json={
        "principal": "p", "tenant": "t", "models": ["digits"]}).json()
    auth = {"Authorization": f"Bearer {made['key']}"}
    body = infer_body(digits_rows(1))
    for _ in range(2):  # the second is answered from the decision cache
        assert client.post("/v2/models/digits/infer", json=body, headers=auth
                           ).status_code == 200
    assert admin.delete(f"/admin/keys/{made['key_id']}", headers=ADMIN).status_code == 200
    r = client.post("/v2/models/digits/infer", json=body, headers=auth)
    assert r.status_code == 401


def test_snapshot_fallback_gets_its_own_cache(tmp_path: Path) -> None:
    path = tmp_path / "p.cedar"
    path.write_text(RISKY)
    engine = PolicyEngine([path], DEFAULT_SCHEMA)
    load_policies(engine, tmp_path / "state", fallback=True)
    assert cached(engine).allowed and cache_len(engine) == 1
    path.write_text("this is not cedar")
    load_policies(engine, tmp_path / "state", fallback=True)  # the last good set, new cache
    assert cache_len(engine) == 0 and cached(engine).allowed

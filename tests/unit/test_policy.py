"""Cedar policy: permit and forbid by each attribute kind, errors with file and line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelfence.config import ModelAttributes
from modelfence.errors import ConfigurationError, PolicyError
from modelfence.identity.principal import Principal
from modelfence.policy import Facts, PolicyEngine, cedar_request
from modelfence.policy.engine import DEFAULT_POLICY, DEFAULT_SCHEMA
from modelfence.policy.snapshot import load_policies

ALICE = Principal(id="alice", tenant="acme", groups=("analysts",), models=("digits",),
                  key_id="0123456789abcdef")
MODEL = ModelAttributes(owner="acme", sensitivity=1, tags=["vision", "public"])


def engine_for(tmp_path: Path, *texts: str) -> PolicyEngine:
    paths = []
    for i, text in enumerate(texts):
        path = tmp_path / f"p{i}.cedar"
        path.write_text(text)
        paths.append(path)
    engine = PolicyEngine(paths or [DEFAULT_POLICY], DEFAULT_SCHEMA)
    engine.load()
    return engine


def decide(engine: PolicyEngine, principal: Principal = ALICE, action: str = "infer",
           model: str = "digits", attrs: ModelAttributes = MODEL, **facts: object
           ) -> tuple[bool, tuple[str, ...]]:
    f = Facts(source=str(facts.pop("source", "127.0.0.1")), **facts)  # type: ignore[arg-type]
    request, entities = cedar_request(principal, action, model, attrs, f)
    verdict = engine.decide(request, entities)
    return verdict.allowed, verdict.policies


def with_attrs(p: Principal = ALICE, **attrs: object) -> Principal:
    return Principal(id=p.id, tenant=p.tenant, groups=p.groups, models=p.models,
                     key_id=p.key_id, attributes=dict(attrs))


# -- the shipped default policy -------------------------------------------------------------

def test_default_permits_own_grants_only(tmp_path: Path) -> None:
    engine = engine_for(tmp_path)
    assert decide(engine) == (True, ("own-grants",))
    assert decide(engine, action="metadata")[0]
    assert decide(engine, model="other") == (False, ())
    assert decide(engine, action="artifact-download") == (False, ())
    star = Principal(id="ops", tenant="acme", models=("*",))
    assert decide(engine, star, model="anything")[0]


def test_default_enforces_grant_networks(tmp_path: Path) -> None:
    engine = engine_for(tmp_path)
    p = with_attrs(networks=["10.0.0.0/8", "192.168.1.0/24"])
    assert decide(engine, p, source="10.1.2.3")[0]
    assert decide(engine, p, source="192.168.1.9")[0]
    assert decide(engine, p, source="127.0.0.1") == (False, ("grant-networks",))
    assert decide(engine, p, source="not-an-ip") == (False, ("grant-networks",))


def test_default_enforces_grant_purpose(tmp_path: Path) -> None:
    engine = engine_for(tmp_path)
    p = with_attrs(purpose="fraud-review")
    assert decide(engine, p, purpose="fraud-review")[0]
    assert decide(engine, p, purpose="marketing") == (False, ("grant-purpose",))
    assert decide(engine, p) == (False, ("grant-purpose",))
    assert decide(engine, ALICE, purpose="anything")[0]  # no purpose on the grant


# -- each attribute kind in custom policies ---------------------------------------------------

@pytest.mark.parametrize(("policy", "allowed", "denied"), [
    # principal attributes
    ('permit(principal, action, resource) when { principal.tenant == resource.owner };',
     {}, {"principal": Principal(id="eve", tenant="evil", models=("digits",))}),
    ('permit(principal in Group::"analysts", action, resource);',
     {}, {"principal": Principal(id="bob", tenant="acme", groups=("sales",))}),
    ('permit(principal, action, resource) when { principal.groups.contains("analysts") };',
     {}, {"principal": Principal(id="bob", tenant="acme", groups=())}),
    ('permit(principal, action, resource) when { principal.clearance >= resource.sensitivity };',
     {"principal": with_attrs(clearance=2)}, {"principal": with_attrs(clearance=0)}),
    ('permit(principal, action, resource) when { principal.kind == "jwt" };',
     {"principal": Principal(id="sso", tenant="acme", key_id="jwt:kid1")}, {}),
    # resource attributes
    ('permit(principal, action, resource) when { resource.tags.contains("public") };',
     {}, {"attrs": ModelAttributes(tags=["internal"])}),
    ('permit(principal, action, resource) when { resource.sensitivity < 3 };',
     {}, {"attrs": ModelAttributes(sensitivity=3)}),
    # action
    ('permit(principal, action == Action::"metadata", resource);',
     {"action": "metadata"}, {"action": "infer"}),
    # context: time, source address, purpose, risk, queries
    ('permit(principal, action, resource) when { context.hour >= 8 && context.hour < 18 };',
     {"now": datetime(2026, 1, 5, 9, tzinfo=UTC).timestamp()},
     {"now": datetime(2026, 1, 5, 23, tzinfo=UTC).timestamp()}),
    ('permit(principal, action, resource) when { context.weekday < 5 };',
     {"now": datetime(2026, 1, 5, 9, tzinfo=UTC).timestamp()},      # a Monday
     {"now": datetime(2026, 1, 4, 9, tzinfo=UTC).timestamp()}),     # a Sunday
    ('permit(principal, action, resource) when { context.source_ip.isInRange(ip("10.0.0.0/8")) };',
     {"source": "10.9.8.7"}, {"source": "172.16.0.1"}),
    ('permit(principal, action, resource) when { context.purpose == "research" };',
     {"purpose": "research"}, {"purpose": "ads"}),
    ('permit(principal, action, resource) unless { context.risk.greaterThan(decimal("0.8")) };',
     {"risk": 0.5}, {"risk": 0.95}),
    ('permit(principal, action, resource) when { context.queries < 1000 };',
     {"queries": 999}, {"queries": 1000}),
])
def test_permit_by_each_attribute_kind(tmp_path: Path, policy: str,
                                       allowed: dict[str, object],
                                       denied: dict[str, object]) -> None:
    engine = engine_for(tmp_path, policy)
    assert decide(engine, **allowed)[0] is True  # type: ignore[arg-type]
    assert decide(engine, **denied)[0] is False  # type: ignore[arg-type]


def test_forbid_overrides_permit_and_is_named(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, DEFAULT_POLICY.read_text(), '''
@id("no-risky-callers")
forbid(principal, action == Action::"infer", resource)
when { context.risk.greaterThan(decimal("0.8")) };
''')
    assert decide(engine, risk=0.2) == (True, ("own-grants",))
    assert decide(engine, risk=0.9) == (False, ("no-risky-callers",))


def test_policies_without_id_are_named_by_file_and_line(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, "// header\n\npermit(principal, action, resource);\n")
    assert decide(engine) == (True, ("p0.cedar:3",))


# -- refusing bad policy sets ------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ('permit(principal, action, resource)\nwhen { principal.tenant == };', ":1: syntax error"),
    ('\n\n@id("a")\npermit(principal, action, resource)\nwhen { principal.tenent == "x" };',
     ":3: policy 'a': ") ,
    ('permit(principal, action, resource) when { resource.colour == "red" };', "colour"),
    ('permit(principal, action == Action::"fly", resource);', "fly"),
    ('permit(principal, action, resource) when { context.risk > 0.8 };', ":1: syntax error"),
    ('permit(principal, action, resource)', ":1: syntax error: policy does not end with ';'"),
    ('@id("x") permit(principal, action, resource);\n@id("x") forbid(principal, action, '
     'resource);', "policy id 'x' is used twice"),
])
def test_invalid_policies_refuse_with_file_line_and_reason(tmp_path: Path, text: str,
                                                           expected: str) -> None:
    path = tmp_path / "bad.cedar"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        PolicyEngine([path], DEFAULT_SCHEMA).load()
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


def test_mistyped_attribute_names_the_attribute(tmp_path: Path) -> None:
    path = tmp_path / "bad.cedar"
    path.write_text('@id("a")\npermit(principal, action, resource)\n'
                    'when { principal.tenent == "x" };\n')
    with pytest.raises(ConfigurationError, match="attribute `tenent` on entity type "
                                                 "`Principal` not found"):
        PolicyEngine([path], DEFAULT_SCHEMA).load()


def test_evaluation_error_fails_closed(tmp_path: Path) -> None:
    # validates (Long + Long) but overflows at run time once queries > 0
    engine = engine_for(tmp_path, 'permit(principal, action, resource) '
                                  'when { context.queries + 9223372036854775807 > 0 };')
    assert decide(engine, queries=0)[0]
    with pytest.raises(PolicyError, match="policy evaluation failed"):
        decide(engine, queries=5)


def test_a_bad_file_on_worker_restart_keeps_the_last_good_set(tmp_path: Path) -> None:
    path = tmp_path / "p.cedar"
    path.write_text('@id("v1") permit(principal, action, resource);')
    state = tmp_path / "state"
    engine = PolicyEngine([path], DEFAULT_SCHEMA)
    load_policies(engine, state, fallback=True)
    path.write_text('@id("v2") permit(principal, action, resource) when { principal.nope };')
    restarted = PolicyEngine([path], DEFAULT_SCHEMA)
    with pytest.raises(ConfigurationError):
        load_policies(restarted, state, fallback=False)  # a fresh `serve` refuses
    load_policies(restarted, state, fallback=True)       # a respawned worker keeps serving
    assert decide(restarted) == (True, ("v1",))

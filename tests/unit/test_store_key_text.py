"""What a caller controls stays fit for the stores: budget keys are bounded in length, and
identity refuses ids PostgreSQL would refuse (NUL, text that is not UTF-8)."""

from __future__ import annotations

import time

import pytest

from modelfence.config import JwtSettings
from modelfence.errors import Unauthenticated
from modelfence.identity.jwt import principal_from_claims
from modelfence.quota.budgets import MAX_KEY_PART, key_part


def test_short_ids_keep_their_budget_rows_and_long_ones_are_hashed_apart() -> None:
    for short in ("alice", "svc:reporting@acme", "x" * MAX_KEY_PART):
        assert key_part(short) == short  # rows written before the bound keep working
    a, b = "a" * 3000, "a" * 2999 + "b"
    assert key_part(a).startswith("sha256:") and len(key_part(a)) == 7 + 64
    assert key_part(a) != key_part(b)  # each long id keeps a row of its own
    assert key_part(a) == key_part("a" * 3000)


def claims(**override: object) -> dict[str, object]:
    return {"sub": "alice", "tid": "acme", "exp": int(time.time()) + 300,
            "groups": ["analysts"], **override}


SETTINGS = JwtSettings(issuer="https://idp.example/", audiences=["api"], tenant_claim="tid",
                       groups_claim="groups", jwks_url="https://idp.example/jwks.json")


@pytest.mark.parametrize("bad", [
    {"sub": "mallory\x00"}, {"sub": "mal\nlory"}, {"sub": "mal\x7flory"},
    {"sub": "mal\ud800lory"}, {"tid": "acme\x00"}, {"groups": ["analysts\x00"]}])
def test_an_identity_with_nul_or_control_characters_is_a_401(bad: dict[str, object]) -> None:
    with pytest.raises(Unauthenticated) as refused:
        principal_from_claims(claims(**bad), "k1", SETTINGS)
    assert refused.value.reason == "invalid_claim"


def test_ordinary_identities_are_let_in() -> None:
    who = principal_from_claims(claims(sub="Zoë Müller <zoe@acme>"), "k1", SETTINGS)
    assert (who.id, who.tenant, who.groups) == ("Zoë Müller <zoe@acme>", "acme", ("analysts",))

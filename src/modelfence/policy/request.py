"""A Cedar request from a `Call`: principal and model entities, and the context facts.

Facts Cedar cannot compute itself (is the source address inside any of the grant's
networks?) are computed here and handed to policy as context, so the rules stay in
policy files where owners can read and change them.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..kernel.call import Caller, ModelFacts

_MAPPED = {"clearance", "purpose", "networks"}
_SCALARS = (str, int, bool)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the gateway knows about one request, beyond who asks and for what."""

    source: str
    purpose: str = ""
    risk: float = 0.0
    queries: int = 0
    epsilon_spent: float = 0.0
    screen: str = ""
    screen_score: float = 0.0
    screen_failed: bool = False
    now: float | None = None


def network_allowed(principal: Caller, source: str) -> bool:
    networks = principal.attributes.get("networks") or []
    if not networks:
        return True
    if isinstance(networks, str):
        networks = [networks]
    try:
        address = ipaddress.ip_address(source)
        return any(address in n for n in _networks(tuple(str(n) for n in networks)))
    except ValueError:
        return False  # an unknown source, or a grant with a broken network, is outside


@functools.lru_cache(maxsize=4096)
def _networks(texts: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                               ...]:
    """A grant's networks parsed once, not on each of its requests (~13 µs for two)."""
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


def fraction(value: float) -> str:
    """A score as the decimal Cedar reads: clamped to [0, 1], four places."""
    return f"{min(max(value, 0.0), 1.0):.4f}"


def epsilon(value: float) -> str:
    """A privacy loss as the decimal Cedar reads: at least 0, four places."""
    return f"{min(max(value, 0.0), 1e9):.4f}"


def _units(text: str) -> int:
    """A decimal's text (`fraction`, `epsilon`) in ten-thousandths, as an integer."""
    return int(text.replace(".", ""))


def _ip(source: str) -> str:
    try:
        return str(ipaddress.ip_address(source))
    except ValueError:
        return "0.0.0.0"


def _now(facts: Facts) -> float:
    return facts.now if facts.now is not None else time.time()


#: each context attribute as a hashable value: what a cached decision is keyed on (with
#: `reads.bucket` for attributes policies only compare with literals); the same helpers
#: as `context`, so a key never disagrees with the request Cedar would see
CONTEXT_VALUES: dict[str, Callable[[Caller, Facts], Hashable]] = {
    "now": lambda p, f: int(_now(f)),
    "hour": lambda p, f: datetime.fromtimestamp(_now(f), UTC).hour,
    "weekday": lambda p, f: datetime.fromtimestamp(_now(f), UTC).weekday(),
    "source_ip": lambda p, f: _ip(f.source),
    "network_allowed": lambda p, f: network_allowed(p, f.source),
    "purpose": lambda p, f: f.purpose,
    "risk": lambda p, f: _units(fraction(f.risk)),
    "queries": lambda p, f: int(f.queries),
    "screen": lambda p, f: f.screen,
    "screen_score": lambda p, f: _units(fraction(f.screen_score)),
    "screen_failed": lambda p, f: f.screen_failed,
    "epsilon_spent": lambda p, f: _units(epsilon(f.epsilon_spent)),
}


def principal_entity(p: Caller) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "name": p.id, "tenant": p.tenant, "groups": list(p.groups), "models": list(p.models),
        "clearance": _as_int(p.attributes.get("clearance")),
        "kind": "jwt" if (p.key_id or "").startswith("jwt:") else "api_key",
    }
    if p.attributes.get("purpose"):
        attrs["purpose"] = str(p.attributes["purpose"])
    for name, value in p.attributes.items():  # extra attributes for user schemas
        if name in _MAPPED or name in attrs:
            continue
        if isinstance(value, _SCALARS) or (
                isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value)):
            attrs[name] = value
    return {"uid": {"type": "Principal", "id": p.id}, "attrs": attrs,
            "parents": [{"type": "Group", "id": g} for g in p.groups]}


def _as_int(value: Any) -> int:
    """A clearance from a key or a token claim; anything unreadable counts as none (0)."""
    if isinstance(value, bool):
        return 0
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        return 0


def model_entity(name: str, attributes: ModelFacts) -> dict[str, Any]:
    return {"uid": {"type": "Model", "id": name},
            "attrs": {"name": name, "owner": attributes.owner,
                      "sensitivity": attributes.sensitivity, "tags": list(attributes.tags)},
            "parents": []}


def context(principal: Caller, facts: Facts) -> dict[str, Any]:
    now = _now(facts)
    moment = datetime.fromtimestamp(now, UTC)
    return {
        "now": int(now), "hour": moment.hour, "weekday": moment.weekday(),
        "source_ip": {"__extn": {"fn": "ip", "arg": _ip(facts.source)}},
        "network_allowed": network_allowed(principal, facts.source),
        "purpose": facts.purpose,
        "risk": {"__extn": {"fn": "decimal", "arg": fraction(facts.risk)}},
        "queries": int(facts.queries),
        "epsilon_spent": {"__extn": {"fn": "decimal", "arg": epsilon(facts.epsilon_spent)}},
        "screen": facts.screen,
        "screen_score": {"__extn": {"fn": "decimal", "arg": fraction(facts.screen_score)}},
        "screen_failed": facts.screen_failed,
    }


def entities_json(principal: Caller, model: str, attributes: ModelFacts) -> str:
    """The principal and model entities, as the JSON cedarpy reads (and a cache key)."""
    return orjson.dumps([principal_entity(principal), model_entity(model, attributes)]).decode()


def cedar_request(principal: Caller, action: str, model: str, attributes: ModelFacts,
                  facts: Facts, *, entities: str | None = None) -> tuple[dict[str, Any], str]:
    # The context travels as a JSON string, which cedarpy parses without a Python-side copy.
    """(request, entities JSON) for `PolicyEngine.decide`."""
    request = {
        "principal": {"type": "Principal", "id": principal.id},
        "action": {"type": "Action", "id": action},
        "resource": {"type": "Model", "id": model},
        "context": orjson.dumps(context(principal, facts)).decode(),  # skips cedarpy's json.dumps
    }
    return request, entities or entities_json(principal, model, attributes)

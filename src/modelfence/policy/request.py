"""A Cedar request from a `Call`: principal and model entities, and the context facts.

Facts Cedar cannot compute itself (is the source address inside any of the grant's
networks?) are computed here and handed to policy as context, so the rules stay in
policy files where owners can read and change them.
"""

from __future__ import annotations

import ipaddress
import time
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
        return any(address in ipaddress.ip_network(str(n), strict=False) for n in networks)
    except ValueError:
        return False  # an unknown source, or a grant with a broken network, is outside


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
    now = facts.now if facts.now is not None else time.time()
    moment = datetime.fromtimestamp(now, UTC)
    try:
        ip = str(ipaddress.ip_address(facts.source))
    except ValueError:
        ip = "0.0.0.0"
    return {
        "now": int(now), "hour": moment.hour, "weekday": moment.weekday(),
        "source_ip": {"__extn": {"fn": "ip", "arg": ip}},
        "network_allowed": network_allowed(principal, facts.source),
        "purpose": facts.purpose,
        "risk": {"__extn": {"fn": "decimal", "arg": f"{min(max(facts.risk, 0.0), 1.0):.4f}"}},
        "queries": int(facts.queries),
        "epsilon_spent": {"__extn": {"fn": "decimal",
                                     "arg": f"{min(max(facts.epsilon_spent, 0.0), 1e9):.4f}"}},
        "screen": facts.screen,
        "screen_score": {"__extn": {"fn": "decimal",
                                    "arg": f"{min(max(facts.screen_score, 0.0), 1.0):.4f}"}},
        "screen_failed": facts.screen_failed,
    }


def cedar_request(principal: Caller, action: str, model: str, attributes: ModelFacts,
                  facts: Facts) -> tuple[dict[str, Any], str]:
    # The context travels as a JSON string, which cedarpy parses without a Python-side copy.
    """(request, entities JSON) for `PolicyEngine.decide`."""
    request = {
        "principal": {"type": "Principal", "id": principal.id},
        "action": {"type": "Action", "id": action},
        "resource": {"type": "Model", "id": model},
        "context": orjson.dumps(context(principal, facts)).decode(),  # skips cedarpy's json.dumps
    }
    entities = orjson.dumps([principal_entity(principal), model_entity(model, attributes)])
    return request, entities.decode()

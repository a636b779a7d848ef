"""The one order of protections every protocol's chain follows (kernel/stages.py)."""

from __future__ import annotations

import pytest

from modelfence.errors import ConfigurationError
from modelfence.kernel.call import Call
from modelfence.kernel.chain import Guard
from modelfence.kernel.stages import Stages


def named(name: str, *, requires: frozenset[str] = frozenset(),
          provides: frozenset[str] = frozenset()) -> Guard:
    class Named(Guard):
        async def on_request(self, call: Call) -> None:
            return None

    Named.name = name
    Named.requires = requires
    Named.provides = provides
    return Named()


def stages() -> Stages:
    return Stages(head=[named("metrics"), named("audit")],
                  identity=[named("identity", provides=frozenset({"principal"}))],
                  inflight=[named("inflight", requires=frozenset({"principal"}))],
                  usage=[named("usage")], policy=[named("policy")],
                  rate_limits=[named("rate_limits")], budgets=[named("budgets")])


def names(s: Stages, **kw: str) -> list[str]:
    return [g.name for g in s.guards(**kw)]  # type: ignore[arg-type]


def test_a_protocol_fills_stages_and_its_guards_land_in_the_shared_order() -> None:
    llm = stages().with_(model=[named("llm_model")], screens=[named("screening")],
                         monitor=[named("risk")], body=[named("llm_body")])
    assert names(llm) == ["metrics", "audit", "identity", "inflight", "llm_model", "usage",
                          "screening", "risk", "policy", "rate_limits", "llm_body", "budgets"]
    oip = stages().with_(model=[named("model")], monitor=[named("monitor")],
                         body=[named("body"), named("validate")],
                         outputs=[named("watermark"), named("shaping")])
    assert names(oip) == ["metrics", "audit", "identity", "inflight", "model", "usage",
                          "monitor", "policy", "rate_limits", "body", "validate", "budgets",
                          "watermark", "shaping"]


def test_the_cap_on_open_requests_comes_before_any_model_lookup_on_every_protocol() -> None:
    """The LLM lookup reads the body: the cap must hold before it (it came after once)."""
    for model in ("model", "llm_model"):
        order = names(stages().with_(model=[named(model)]))
        assert order.index("inflight") < order.index(model)


def test_a_chain_can_stop_after_a_stage() -> None:
    assert names(stages(), through="inflight") == ["metrics", "audit", "identity", "inflight"]
    assert stages().chain(Call, through="identity").guards[-1].name == "identity"


def test_the_chain_is_checked() -> None:
    broken = Stages(inflight=[named("inflight", requires=frozenset({"principal"}))])
    with pytest.raises(ConfigurationError, match="inflight"):
        broken.chain(Call)


def test_an_unknown_stage_is_refused() -> None:
    with pytest.raises(TypeError):
        stages().with_(postprocess=[named("x")])

"""A chain is built for one protocol's Call type: guards made for another, and names that
are not that type's fields, are refused when the guard class is made or at start-up."""

from __future__ import annotations

from typing import ClassVar

import pytest

from modelfence.backends.call import OipCall
from modelfence.errors import ConfigurationError
from modelfence.gateway.downloads import ArtifactCall
from modelfence.kernel.call import Call
from modelfence.kernel.chain import Guard, GuardChain, call_fields
from modelfence.kernel.stages import Stages
from modelfence.llm.call import LlmCall


class Identity(Guard[Call]):
    name: ClassVar[str] = "identity"
    provides: ClassVar[frozenset[str]] = frozenset({"principal"})

    async def on_request(self, call: Call) -> None:
        return None


class OipLookup(Guard[OipCall]):
    name: ClassVar[str] = "model_lookup"
    requires: ClassVar[frozenset[str]] = frozenset({"principal"})
    provides: ClassVar[frozenset[str]] = frozenset({"model", "inputs"})

    async def on_request(self, call: OipCall) -> None:
        return None


class LlmLookup(Guard[LlmCall]):
    name: ClassVar[str] = "llm_model"
    requires: ClassVar[frozenset[str]] = frozenset({"principal"})
    provides: ClassVar[frozenset[str]] = frozenset({"model", "exchange"})

    async def on_request(self, call: LlmCall) -> None:
        return None


class OipShaping(Guard[OipCall]):
    """A response phase that needs what the OIP backend answers (`outputs`)."""

    name: ClassVar[str] = "shaping"
    requires: ClassVar[frozenset[str]] = frozenset({"model", "outputs"})

    async def on_response(self, call: OipCall) -> None:
        return None


class Flexible(Guard[Call]):
    """A shared guard whose declarations are set per instance, as configuration may."""

    def __init__(self, name: str, requires: frozenset[str]) -> None:
        self.name = name  # type: ignore[misc]
        self.requires = requires  # type: ignore[misc]

    async def on_request(self, call: Call) -> None:
        return None


def test_each_guard_knows_its_call_type_from_its_generic_parameter() -> None:
    assert Identity.call_type is Call
    assert OipLookup.call_type is OipCall
    assert LlmLookup.call_type is LlmCall

    class Sub(OipShaping):  # inherits its parent's call type
        name: ClassVar[str] = "sub"

    assert Sub.call_type is OipCall


def test_the_real_guards_name_their_protocol() -> None:
    from modelfence.gateway.guards import BodyGuard, MetricsGuard
    from modelfence.llm.guards import LlmBodyGuard
    from modelfence.llm.output_guards import CanaryGuard
    from modelfence.policy.guard import PolicyGuard
    from modelfence.quota.budget_guard import BudgetGuard
    from modelfence.shaping.guard import ShapingGuard

    assert BodyGuard.call_type is ShapingGuard.call_type is OipCall
    assert LlmBodyGuard.call_type is CanaryGuard.call_type is LlmCall
    assert PolicyGuard.call_type is BudgetGuard.call_type is MetricsGuard.call_type is Call


def test_an_oip_guard_in_an_llm_chain_is_refused_at_start() -> None:
    GuardChain(OipCall, [Identity(), OipLookup()])
    with pytest.raises(ConfigurationError, match=r"^guard 'model_lookup' works on OipCall "
                                                 r"calls and cannot run in a chain of LlmCall "
                                                 r"calls$"):
        GuardChain(LlmCall, [Identity(), OipLookup()])  # type: ignore[list-item]


def test_an_llm_guard_in_an_oip_chain_is_refused_at_start() -> None:
    with pytest.raises(ConfigurationError, match=r"'llm_model' works on LlmCall calls and "
                                                 r"cannot run in a chain of OipCall calls"):
        GuardChain(OipCall, [Identity(), LlmLookup()])  # type: ignore[list-item]


def test_a_stages_chain_checks_the_protocol_too() -> None:
    stages = Stages(identity=[Identity()], model=[LlmLookup()])
    assert [g.name for g in stages.chain(LlmCall).guards] == ["identity", "llm_model"]
    with pytest.raises(ConfigurationError, match="works on LlmCall calls"):
        stages.chain(OipCall)


def test_an_llm_only_field_declared_in_an_oip_chain_is_refused_at_start() -> None:
    """A shared guard configured to need the LLM exchange: its Call has no such field."""
    needs = Flexible("needs_exchange", frozenset({"exchange"}))
    with pytest.raises(ConfigurationError, match=r"^guard needs_exchange: requires names "
                                                 r"\['exchange'\], which are not fields of "
                                                 r"Call; known: "):
        GuardChain(OipCall, [Identity(), OipLookup(), needs])


def test_a_typo_or_another_protocols_field_fails_when_the_guard_class_is_made() -> None:
    with pytest.raises(TypeError, match=r"guard Typo: requires names \['input'\], which are "
                                        r"not fields of OipCall"):
        class Typo(Guard[OipCall]):
            requires: ClassVar[frozenset[str]] = frozenset({"input"})

    with pytest.raises(TypeError, match=r"guard Mixed: reads names \['exchange'\], which are "
                                        r"not fields of OipCall"):
        class Mixed(Guard[OipCall]):
            reads: ClassVar[frozenset[str]] = frozenset({"exchange"})

    with pytest.raises(TypeError, match=r"provides names \['outputs'\], which are not fields "
                                        r"of LlmCall"):
        class Crossed(Guard[LlmCall]):
            provides: ClassVar[frozenset[str]] = frozenset({"outputs"})

    with pytest.raises(TypeError, match=r"Guard\[\.\.\.\] takes a Call type"):
        class NotACall(Guard[int]):  # type: ignore[type-var]
            pass


def test_a_shared_guard_fits_every_protocol_and_a_subtype_chain_takes_its_parents() -> None:
    for kind in (OipCall, LlmCall, ArtifactCall):
        GuardChain(kind, [Identity(), Flexible("needs_principal", frozenset({"principal"}))])
    GuardChain(ArtifactCall, [Identity(), OipLookup()])  # a download is an OIP call


def test_the_backend_provides_the_protocols_answer_to_response_phases() -> None:
    GuardChain(OipCall, [Identity(), OipLookup(), OipShaping()])
    with pytest.raises(ConfigurationError, match=r"'shaping' needs \['outputs'\] which "
                                                 r"nothing provides"):
        GuardChain(OipCall, [Identity(), OipLookup(), OipShaping()],
                   terminal_provides=frozenset())


def test_the_declarable_names_are_the_types_fields() -> None:
    assert {"exchange", "controls"} <= call_fields(LlmCall)
    assert {"inputs", "outputs", "unshaped_proba"} <= call_fields(OipCall)
    assert not {"exchange", "inputs", "outputs"} & call_fields(Call)
    assert {"principal", "model", "risk", "source"} <= call_fields(Call)

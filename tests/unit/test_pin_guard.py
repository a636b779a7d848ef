"""An operator's pin on every protocol (`risk.PinGuard`): a floor under the call's risk and
band that only ever raises, placed after the protocol's risk guard, read with one lookup;
the LLM control bands and the differentially private bands keep it even under a policy's
looser ``@shaping`` pin. End to end (console → next answer): tests/e2e/test_console_pins.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from modelfence.config import Settings
from modelfence.errors import ConfigurationError
from modelfence.kernel.call import Call
from modelfence.kernel.chain import Guard, GuardChain
from modelfence.llm.call import LlmCall
from modelfence.llm.settings import LlmModel
from modelfence.monitor.pins import Pin, PinBook
from modelfence.monitor.service import pin_bands
from modelfence.risk import PinGuard, RiskGuard


class CountingPins:
    """A pin book that counts its lookups (the request path may make one at most)."""

    def __init__(self, floors: dict[tuple[str, str], float]) -> None:
        self.floors = floors
        self.lookups = 0

    def floor(self, model: str, principal: str) -> float:
        self.lookups += 1
        return self.floors.get((model, principal), 0.0)


def _call(principal: str, risk: float = 0.0) -> Any:
    notes: list[tuple[str, ...]] = []
    return SimpleNamespace(principal=SimpleNamespace(id=principal, tenant=""),
                           model=SimpleNamespace(name="m"), risk=risk, band_floor=0.0,
                           notes=notes, note=lambda *a: notes.append(a))


def test_a_pin_raises_the_risk_and_the_band_floor_and_never_lowers_them() -> None:
    pins = CountingPins({("m", "mallory"): 0.5})
    guard = PinGuard(pins)
    call = _call("mallory", risk=0.1)
    asyncio.run(guard.on_request(call))
    assert (call.risk, call.band_floor) == (0.5, 0.5) and call.notes[0][0] == "pin"
    riskier = _call("mallory", risk=0.9)  # a pin is a floor: a riskier caller stays riskier
    asyncio.run(guard.on_request(riskier))
    assert (riskier.risk, riskier.band_floor) == (0.9, 0.5)
    other = _call("alice", risk=0.2)
    asyncio.run(guard.on_request(other))
    assert (other.risk, other.band_floor, other.notes) == (0.2, 0.0, [])
    assert pins.lookups == 3  # one per call


async def test_nothing_pinned_costs_no_lookup_in_the_book() -> None:
    book = PinBook()
    assert book.floor("m", "mallory") == 0.0 and not book._pins  # the early return
    await book.put(Pin("m", "mallory", "locked", 0.7, book._clock() + 60, "ops"))
    assert book.floor("m", "mallory") == 0.7


class _Provider(Guard[Call]):
    """Stands for the identity and model guards: provides what the pin guard requires."""

    name: ClassVar[str] = "given"
    provides: ClassVar[frozenset[str]] = frozenset({"principal", "model"})

    async def on_request(self, call: Any) -> None:
        return None


def test_the_pin_guard_must_follow_the_risk_guard() -> None:
    """A risk guard after the pin would overwrite the raised risk: the chain refuses."""

    class Source:
        def watches(self, model: str) -> bool:
            return True

        def peek(self, model: str, principal: str, tenant: str | None) -> float:
            return 0.0

    pin, risk = PinGuard(CountingPins({})), RiskGuard[LlmCall](Source())
    with pytest.raises(ConfigurationError, match="move 'risk' before 'pin'"):
        GuardChain(LlmCall, [_Provider(), pin, risk])
    GuardChain(LlmCall, [_Provider(), risk, pin])


BANDS = [{"name": "watched", "from_risk": 0.3, "controls": {"logprobs": False}},
         {"name": "locked", "from_risk": 0.7, "controls": {"logprobs": False, "max_n": 1}}]


def test_llm_control_bands_keep_the_pin_under_a_policy_pin() -> None:
    m = LlmModel.model_validate({"name": "m", "upstream": "http://127.0.0.1:1/v1",
                                 "controls": {"logprobs": True}, "bands": BANDS})
    assert m.controls_for(0.0, (), 0.3)[0] == "watched"
    assert m.controls_for(0.0, ("default",), 0.7)[0] == "locked"  # over a policy's pin
    assert m.controls_for(0.9, (), 0.3)[0] == "locked"  # never looser than risk chooses
    assert m.controls_for(0.0, ("locked",), 0.3)[0] == "locked"  # nor than a policy's
    assert m.controls_for(0.5, ("default",))[0] == "default"  # no pin: the policy's band


def test_every_model_with_bands_may_be_pinned() -> None:
    settings = Settings.model_validate({
        "models": [{"name": "dp", "backend": {"type": "oip", "url": "http://127.0.0.1:1"},
                    "shaping": [{"from_risk": 0.0, "defense": "none", "name": "full"},
                                {"from_risk": 0.5, "defense": "dp-rr:1", "name": "private"}]},
                   {"name": "plain", "backend": {"type": "oip", "url": "http://127.0.0.1:1"}}],
        "llm": {"models": [{"name": "chat", "upstream": "http://127.0.0.1:1/v1",
                            "bands": BANDS}]}})
    assert pin_bands(settings) == {
        "dp": [(0.0, "full"), (0.5, "private")],
        "chat": [(0.0, "default"), (0.3, "watched"), (0.7, "locked")]}

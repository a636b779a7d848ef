"""The guard chain: declared order, checked at start-up; phases in the right direction."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from modelfence.backends.call import OipCall
from modelfence.errors import ConfigurationError, Forbidden
from modelfence.kernel.call import Call
from modelfence.kernel.chain import Guard, GuardChain


class Recorder(Guard[Call]):
    def __init__(self, name: str, log: list[str], *, deny: bool = False,
                 requires: frozenset[str] = frozenset(), provides: frozenset[str] = frozenset()
                 ) -> None:
        self.name = name  # type: ignore[misc]
        self.requires = requires  # type: ignore[misc]
        self.provides = provides  # type: ignore[misc]
        self._log = log
        self._deny = deny

    async def on_request(self, call: Call) -> None:
        self._log.append(f"req:{self.name}")
        if self._deny:
            raise Forbidden("no", reason="test")

    async def on_response(self, call: Call) -> None:
        self._log.append(f"resp:{self.name}")

    async def on_complete(self, call: Call) -> None:
        self._log.append(f"done:{self.name}")


class Broken(Guard[Call]):
    name: ClassVar[str] = "broken"

    async def on_complete(self, call: Call) -> None:
        raise RuntimeError("boom")


def make_call() -> Call:
    return Call(request=None, action="infer", model_name="m")  # type: ignore[arg-type]


async def test_request_in_order_response_and_complete_in_reverse() -> None:
    log: list[str] = []
    chain = GuardChain(Call, [Recorder("a", log), Recorder("b", log)])

    async def terminal(call: Call) -> None:
        log.append("backend")

    call = make_call()
    await chain.run(call, terminal)
    await chain.complete(call)
    assert log == ["req:a", "req:b", "backend", "resp:b", "resp:a", "done:b", "done:a"]


async def test_a_denial_stops_the_pass_but_complete_still_runs() -> None:
    log: list[str] = []
    chain = GuardChain(Call, [Recorder("a", log), Recorder("b", log, deny=True),
                              Recorder("c", log)])

    async def terminal(call: Call) -> None:
        log.append("backend")

    call = make_call()
    with pytest.raises(Forbidden):
        await chain.run(call, terminal)
    assert call.error is not None and call.error.reason == "test"
    await chain.complete(call)
    assert log == ["req:a", "req:b", "done:c", "done:b", "done:a"]


def test_misordered_chain_refuses_to_boot() -> None:
    log: list[str] = []
    needs = Recorder("policy", log, requires=frozenset({"principal"}))
    gives = Recorder("identity", log, provides=frozenset({"principal"}))
    GuardChain(Call, [gives, needs])
    with pytest.raises(ConfigurationError, match=r"'policy' needs \['principal'\].*policy → "
                                                 r"identity"):
        GuardChain(Call, [needs, gives])


def test_a_monitor_after_policy_refuses_to_boot() -> None:
    """Policy decides on context.risk: a monitor placed after it would leave every
    decision on the default risk of 0, so the chain must not start."""
    from modelfence.monitor.guard import MonitorGuard
    from modelfence.policy.guard import PolicyGuard

    log: list[str] = []
    before = Recorder("identity", log, provides=frozenset({"principal", "model", "queries"}))
    policy = PolicyGuard(engine=None)  # type: ignore[arg-type]  # never asked: order only
    monitor = MonitorGuard(service=None)  # type: ignore[arg-type]
    GuardChain(OipCall, [before, monitor, policy])
    with pytest.raises(ConfigurationError, match=r"'policy' reads \['risk'\], which guard "
                                                 r"'monitor' fills only after it; move "
                                                 r"'monitor' before 'policy'"):
        GuardChain(OipCall, [before, policy, monitor])


def test_a_field_nothing_fills_is_read_at_its_default() -> None:
    """Without a monitor, policy reads risk 0: reading is not requiring."""
    from modelfence.policy.guard import PolicyGuard

    before = Recorder("identity", [], provides=frozenset({"principal", "model", "queries"}))
    GuardChain(Call, [before, PolicyGuard(engine=None)])  # type: ignore[arg-type]


def test_a_name_that_is_not_a_call_field_fails_when_the_guard_is_made() -> None:
    with pytest.raises(TypeError, match=r"requires names \['riks'\], which are not fields "
                                        r"of Call"):
        class Typo(Guard[Call]):
            requires: ClassVar[frozenset[str]] = frozenset({"riks"})


def test_a_name_set_on_an_instance_is_checked_at_start() -> None:
    with pytest.raises(ConfigurationError, match=r"provides names \['rsik'\]"):
        GuardChain(Call, [Recorder("a", [], provides=frozenset({"rsik"}))])


def test_duplicate_guard_refused() -> None:
    log: list[str] = []
    with pytest.raises(ConfigurationError, match="twice"):
        GuardChain(Call, [Recorder("a", log), Recorder("a", log)])


async def test_failing_complete_phase_does_not_stop_others(caplog: Any) -> None:
    log: list[str] = []
    chain = GuardChain(Call, [Recorder("a", log), Broken()])
    await chain.complete(make_call())
    assert log == ["done:a"]
    assert "complete phase of guard 'broken' failed" in caplog.text


def test_gateway_chain_is_valid(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelfence.config import settings_from_mapping
    from modelfence.gateway.app import build_app

    monkeypatch.setenv("MODELFENCE_SECRET", "s" * 40)
    app = build_app(settings_from_mapping({"stores": {"keys": "memory://"}}))
    assert app.state.gateway.models == {}

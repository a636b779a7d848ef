"""The guard chain: declared order, checked at start-up; phases in the right direction."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from modelfence.errors import ConfigurationError, Forbidden
from modelfence.kernel.call import Call
from modelfence.kernel.chain import Guard, GuardChain


class Recorder(Guard):
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


class Broken(Guard):
    name: ClassVar[str] = "broken"

    async def on_complete(self, call: Call) -> None:
        raise RuntimeError("boom")


def make_call() -> Call:
    return Call(request=None, action="infer", model_name="m")  # type: ignore[arg-type]


async def test_request_in_order_response_and_complete_in_reverse() -> None:
    log: list[str] = []
    chain = GuardChain([Recorder("a", log), Recorder("b", log)])

    async def terminal(call: Call) -> None:
        log.append("backend")

    call = make_call()
    await chain.run(call, terminal)
    await chain.complete(call)
    assert log == ["req:a", "req:b", "backend", "resp:b", "resp:a", "done:b", "done:a"]


async def test_a_denial_stops_the_pass_but_complete_still_runs() -> None:
    log: list[str] = []
    chain = GuardChain([Recorder("a", log), Recorder("b", log, deny=True), Recorder("c", log)])

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
    GuardChain([gives, needs])
    with pytest.raises(ConfigurationError, match=r"'policy' needs \['principal'\].*policy → "
                                                 r"identity"):
        GuardChain([needs, gives])


def test_duplicate_guard_refused() -> None:
    log: list[str] = []
    with pytest.raises(ConfigurationError, match="twice"):
        GuardChain([Recorder("a", log), Recorder("a", log)])


async def test_failing_complete_phase_does_not_stop_others(caplog: Any) -> None:
    log: list[str] = []
    chain = GuardChain([Recorder("a", log), Broken()])
    await chain.complete(make_call())
    assert log == ["done:a"]
    assert "complete phase of guard 'broken' failed" in caplog.text


def test_gateway_chain_is_valid(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelfence.config import settings_from_mapping
    from modelfence.gateway.app import build_app

    monkeypatch.setenv("MODELFENCE_SECRET", "s" * 40)
    app = build_app(settings_from_mapping({"stores": {"keys": "memory://"}}))
    assert app.state.gateway.models == {}

"""An LLM answer's protections are guards in the chain's outputs stage, as shaping and the
watermark are on the OIP path (the route used to apply them itself)."""

from __future__ import annotations

from typing import ClassVar

from modelfence.kernel.call import Call
from modelfence.kernel.chain import Guard
from modelfence.kernel.stages import Stages
from modelfence.llm.output_guards import CanaryGuard, LlmOutputGuard, LogprobNoiseGuard
from modelfence.llm.routes import LlmRoutes
from modelfence.llm.settings import LlmModel, LlmSettings


class Identity(Guard):
    name: ClassVar[str] = "identity"
    provides: ClassVar[frozenset[str]] = frozenset({"principal"})

    async def on_request(self, call: Call) -> None:
        return None


class Policy(Guard):
    name: ClassVar[str] = "policy"
    provides: ClassVar[frozenset[str]] = frozenset({"decision"})

    async def on_request(self, call: Call) -> None:
        return None


def routes(*models: LlmModel) -> LlmRoutes:
    return LlmRoutes(LlmSettings(models=list(models)),
                     stages=Stages(identity=[Identity()], policy=[Policy()]))


def model(name: str, **extra: object) -> LlmModel:
    return LlmModel(name=name, upstream="http://127.0.0.1:1/v1", **extra)


def test_the_answer_protections_are_the_chains_last_guards() -> None:
    llm = routes(model("plain"), model("guarded", canary={"mode": "block"}))
    guards = llm._chain.guards
    assert [g.name for g in guards][-3:] == ["llm_body", "canary", "logprob_noise"]
    assert isinstance(guards[-2], CanaryGuard) and isinstance(guards[-1], LogprobNoiseGuard)
    # a stream's chunks pass them in the order response phases run: noise, then the leak
    assert [g.name for g in llm._event_guards] == ["logprob_noise", "canary"]


def test_without_a_canary_no_leak_guard_runs() -> None:
    llm = routes(model("plain"))
    assert [g.name for g in llm._chain.guards if isinstance(g, LlmOutputGuard)] == [
        "logprob_noise"]

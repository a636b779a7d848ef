"""An LLM answer's protections are guards in the chain's outputs stage, as shaping and the
watermark are on the OIP path (the route used to apply them itself); the LLM routes count
the gateway's own failures as the OIP routes do."""

from __future__ import annotations

from typing import ClassVar

from starlette.applications import Starlette
from starlette.testclient import TestClient

from modelfence.errors import PolicyError
from modelfence.identity.principal import Principal
from modelfence.kernel.call import Call
from modelfence.kernel.chain import Guard
from modelfence.kernel.finish import count_failure
from modelfence.kernel.metrics import GatewayMetrics
from modelfence.kernel.stages import Stages
from modelfence.llm.output_guards import CanaryGuard, LlmOutputGuard, LogprobNoiseGuard
from modelfence.llm.routes import LlmRoutes
from modelfence.llm.settings import LlmModel, LlmSettings


class Identity(Guard):
    name: ClassVar[str] = "identity"
    provides: ClassVar[frozenset[str]] = frozenset({"principal"})

    async def on_request(self, call: Call) -> None:
        call.principal = Principal("alice", "acme", models=("*",))


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


# -- a failure of the gateway's own is counted as on the OIP path -----------------------------


class Failing(Guard):
    """Fails the way the header `x-fail` says: the policy engine, or a bug."""

    name: ClassVar[str] = "failing"

    async def on_request(self, call: Call) -> None:
        if call.request.headers.get("x-fail") == "policy":
            raise PolicyError("cedar crashed")
        raise RuntimeError("a bug")


def test_the_llm_routes_count_policy_engine_and_internal_failures() -> None:
    metrics = GatewayMetrics()
    llm = LlmRoutes(LlmSettings(models=[model("chat")]),
                    stages=Stages(identity=[Identity()], policy=[Failing(), Policy()]),
                    on_failure=lambda exc: count_failure(metrics, exc))
    with TestClient(Starlette(routes=llm.routes())) as client:
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        policy = client.post("/v1/chat/completions", json=body, headers={"x-fail": "policy"})
        bug = client.post("/v1/chat/completions", json=body, headers={"x-fail": "bug"})
    assert (policy.status_code, bug.status_code) == (503, 500)
    assert policy.json()["error"]["code"] == "policy_error"
    assert bug.json()["error"] == {"message": "internal error", "type": "api_error",
                                   "code": "internal_error"}
    text = metrics.render().decode()
    assert "modelfence_policy_errors_total 1.0" in text
    assert "modelfence_internal_errors_total 1.0" in text

"""An operator's pin on an LLM model and on a differentially private model, from the
console to the principal's next answer, through a real `modelfence serve` over loopback HTTP
(the LLM upstream is the aiohttp stub): the pinned principal gets the stricter band on its
very next answer, the pin's removal gives it back its own band, another principal is never
touched, and each action leaves its audit record. The principals are partners whom a policy
pins to the loosest band: the operator's pin is a floor under that too. Neither model is
watched by the classifier monitor: the pin reaches them through the shared `risk.PinGuard`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from ..support import Gateway, cli_in_process, digits_rows, infer_body
from .openai_stub import OpenAiStub

#: A classifier whose base band answers exactly and whose stricter band is randomized
#: response (ε = 1 an answer); `reveal_band` names the band in each answer.
DP_BANDS = [{"from_risk": 0.0, "defense": "none", "name": "full"},
            {"from_risk": 0.5, "defense": "dp-rr:1", "name": "private"}]
#: An LLM whose base controls allow logprobs and whose stricter band refuses them.
LLM_BANDS = [{"name": "watched", "from_risk": 0.3, "controls": {"logprobs": False}}]
ROW = digits_rows(1)

#: Partners are pinned by policy to each model's loosest band, whatever their risk: only the
#: operator's pin may tighten it (the floor holds under a policy's ``@shaping`` pin).
POLICY = """
@id("own-grants")
permit (principal, action in [Action::"infer", Action::"metadata", Action::"chat"], resource)
when { principal.models.contains(resource.name) };

@id("partners-classifier")
@shaping("full")
permit (principal, action == Action::"infer", resource)
when { principal.groups.contains("partners") };

@id("partners-llm")
@shaping("default")
permit (principal, action == Action::"chat", resource)
when { principal.groups.contains("partners") };
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, digits_files: dict[str, Path],
            stub: OpenAiStub) -> Iterator[Gateway]:
    models = [{"name": "digits", "backend": {"type": "skops", "path": str(digits_files["skops"])},
               "limits": {"max_batch": 64}, "shaping": DP_BANDS, "reveal_band": True}]
    llm = {"models": [{"name": "chat", "upstream": stub.url, "upstream_model": "ok",
                       "controls": {"logprobs": True, "max_top_logprobs": 5},
                       "bands": LLM_BANDS}]}
    folder = tmp_path_factory.mktemp("console-pins")
    (folder / "policy.cedar").write_text(POLICY)
    gw = Gateway(folder, models, extra={
        "llm": llm, "privacy": {"store": "memory://", "principal_epsilon": 1000.0},
        "policy": {"files": ["policy.cedar"]},
        "console": {"enabled": True, "session_lifetime_s": 300}}).start()
    yield gw
    gw.stop()


def _partner_key(gw: Gateway, model: str, principal: str) -> str:
    out = cli_in_process("keys", "create", "--config", str(gw.config), "--principal",
                         principal, "--tenant", "acme", "--model", model, "--group",
                         "partners", "--json")
    return str(json.loads(out)["key"])


def _dp_band(gw: Gateway, key: str) -> str:
    answer = httpx.post(f"{gw.url}/v2/models/digits/infer", json=infer_body(ROW),
                        headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["parameters"]["shaping"])


def _llm_logprobs(gw: Gateway, key: str) -> int:
    """The status of a chat asking for logprobs: 200 in the base band, 400 under the pin."""
    answer = httpx.post(f"{gw.url}/v1/chat/completions", json={
        "model": "chat", "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
        "top_logprobs": 2}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    if answer.status_code == 400:
        assert answer.json()["error"]["code"] == "logprobs_refused", answer.text
    return answer.status_code


def _spent(gw: Gateway, principal: str) -> float:
    doc = httpx.get(f"{gw.admin_url}/admin/risk/digits", params={"principal": principal},
                    headers={"Authorization": f"Bearer {gw.admin_token}"}, timeout=30).json()
    return float(doc["privacy"]["epsilon_spent"])


def _console(gw: Gateway) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=gw.admin_url, timeout=30)
    assert client.post("/console/login", data={"credential": gw.admin_token}
                       ).status_code == 303
    page = client.get("/console/models")
    assert page.status_code == 200
    return client, page.text.split('name="csrf" value="')[1].split('"')[0]


def _act(client: httpx.Client, csrf: str, action: str, **form: str) -> httpx.Response:
    return client.post(f"/console/principal/{action}", data={"csrf": csrf, **form})


def _loose_band(model: str) -> str:
    """The band a partner's answer names when no pin holds."""
    return "full" if model == "digits" else "default"


def _answer_bands(gw: Gateway, model: str, principal: str, *, count: int
                  ) -> list[str | None]:
    """The bands named by `principal`'s answer records, once `count` of them are written."""
    deadline = time.monotonic() + 10
    while True:
        bands = [r.get("shaping") for r in gw.audit_records()
                 if r.get("principal") == principal and r.get("model") == model
                 and r["action"] in ("infer", "chat")]
        if len(bands) >= count or time.monotonic() > deadline:
            return bands
        time.sleep(0.05)


def _records(gw: Gateway, action: str) -> list[dict[str, Any]]:
    return [r for r in gw.audit_records() if r["action"] == action]


@pytest.mark.parametrize(("model", "band", "strict", "answer", "loose", "tight"), [
    ("digits", "private", "private", _dp_band, "full", "private"),
    ("chat", "watched", "watched", _llm_logprobs, 200, 400)])
def test_a_pin_reaches_the_next_answer_and_its_removal_restores_it(
        gateway: Gateway, model: str, band: str, strict: str, answer: Any, loose: Any,
        tight: Any) -> None:
    gw = gateway
    mallory = _partner_key(gw, model, f"mallory-{model}")
    bystander = _partner_key(gw, model, f"bystander-{model}")
    assert answer(gw, mallory) == loose and answer(gw, bystander) == loose
    client, csrf = _console(gw)
    with closing(client):
        models = client.get("/console/models").text
        assert model in models and band in models  # listed, with its bands, to pin on
        page = client.get("/console/principal", params={"model": model,
                                                        "id": f"mallory-{model}"})
        assert page.status_code == 200 and 'id="pin-form"' in page.text
        assert f'<option value="{band}"' in page.text
        pinned = _act(client, csrf, "pin", model=model, principal=f"mallory-{model}",
                      band=band, hours="1")
        assert pinned.status_code == 303, pinned.text
        assert answer(gw, mallory) == tight  # its very next answer
        assert answer(gw, bystander) == loose  # nobody else's
        if model == "digits":  # answered by the privacy guard: drawn and charged (ε 1)
            assert _spent(gw, f"mallory-{model}") == pytest.approx(1.0)
            assert _spent(gw, f"bystander-{model}") == 0.0
        page = client.get("/console/principal", params={"model": model,
                                                        "id": f"mallory-{model}"})
        assert f"pinned to <strong>{strict}</strong>" in page.text
        assert _act(client, csrf, "unpin", model=model,
                    principal=f"mallory-{model}").status_code == 303
        assert answer(gw, mallory) == loose
    pin = next(r for r in _records(gw, "console:pin")
               if r.get("key_id") == f"{model}/mallory-{model}")
    assert pin["principal"] == "admin" and pin["status"] == 303
    assert pin["details"]["band"] == band and pin["details"]["until"]
    unpin = next(r for r in _records(gw, "console:unpin")
                 if r.get("key_id") == f"{model}/mallory-{model}")
    assert unpin["details"] == {"was_pinned": True}
    # the answers' own audit records name the band each was given (a chat's record is
    # written after its reply is sent, so the last one may land a moment later)
    bands = _answer_bands(gw, model, f"mallory-{model}", count=3)
    assert bands == [_loose_band(model), strict, _loose_band(model)]


def test_a_pin_to_the_base_band_or_an_unknown_model_is_refused(gateway: Gateway) -> None:
    client, csrf = _console(gateway)
    with closing(client):
        base = _act(client, csrf, "pin", model="chat", principal="eve", band="default",
                    hours="1")
        assert base.status_code == 400 and "above the model" in base.text
        unknown = _act(client, csrf, "pin", model="nope", principal="eve", band="x",
                       hours="1")
        assert unknown.status_code == 404
    refused = [r["status"] for r in _records(gateway, "console:pin")
               if r["details"].get("refused")]
    assert refused[-2:] == [400, 404]

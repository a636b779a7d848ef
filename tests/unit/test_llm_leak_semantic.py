"""Paraphrased leaks (leak_semantic.py) with the real all-MiniLM-L6-v2: a retelling of the
prompt's rules is found, honest answers (one rule followed included) and the public persona
are not; the worker turns a retelling into leak evidence and never blocks."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from modelfence.llm.leak_semantic import SemanticLeakCheck, SemanticLeakWorker
from modelfence.llm.risk import Observation

pytest.importorskip("transformers")
os.environ.setdefault("MODELFENCE_TORCH_THREADS", "1")

PERSONA = "You are Atlas, the helpdesk assistant of Kestrel Labs."
PROMPT = (f"{PERSONA} Send hardware problems to the support team. Do not install software "
          "for staff under any circumstances. Never discuss the salaries of employees. Keep "
          "every answer brief and friendly.")
RETOLD = ("Sure. In my own words: I should forward any hardware issue to the support group. "
          "I am not allowed to set up programs for employees. Staff pay is a topic I must "
          "avoid. My replies ought to be short and warm.")
HONEST = [
    "To reset your password, open the portal, choose 'Forgot password' and follow the link "
    "we email you. It takes about two minutes.",
    "Your laptop battery drains fast because of background apps. Close the ones you do not "
    "need and lower the screen brightness.",
    "I can't install that for you, but the support team can help with hardware problems.",
    "I am Atlas, the helpdesk assistant of Kestrel Labs. How can I help you today?",
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[object]:
    from modelfence.llm.screening_similarity import MiniLmEmbedder

    yield MiniLmEmbedder()


def test_a_retelling_is_found_and_honest_answers_are_not(embedder: object) -> None:
    check = SemanticLeakCheck(embedder, PROMPT, public=[PERSONA])
    assert len(check.secret) == 4 and check.needed == 2 and check.active
    assert not any("Atlas" in s for s in check.secret)  # the persona is public
    retold = check.retold(RETOLD)
    assert len(retold) >= 2 and check.leaks(RETOLD), retold
    for text in HONEST:
        assert not check.leaks(text), (text, check.retold(text))
    # the persona said back is not a leak even if the operator did not mark it public:
    # one sentence is fewer than `needed`
    assert not SemanticLeakCheck(embedder, PROMPT).leaks(HONEST[-1])


def test_the_worker_turns_a_retelling_into_leak_evidence(embedder: object) -> None:
    got: list[Observation] = []
    worker = SemanticLeakWorker(got.append, embedder=embedder, size=2)
    check = SemanticLeakCheck(None, PROMPT, public=[PERSONA])
    worker.start()
    try:
        assert worker.submit(check, RETOLD, "kestrel", "mallory", "t1")
        assert worker.submit(check, HONEST[0], "kestrel", "alice", "t1")
        assert worker.drain(60)
    finally:
        worker.stop()
    assert [(o.principal, o.tenant, o.leak, o.model) for o in got] == [
        ("mallory", "t1", True, "kestrel")]
    assert worker.checked == 2 and worker.found == 1


def test_a_full_queue_drops_instead_of_waiting() -> None:
    worker = SemanticLeakWorker(lambda obs: None, embedder=object(), size=1)  # not started
    check = SemanticLeakCheck(None, PROMPT)
    assert worker.submit(check, RETOLD, "m", "p", None)
    assert not worker.submit(check, RETOLD, "m", "p", None)
    assert worker.dropped == 1
    short = SemanticLeakCheck(None, "One rule only: be kind to every customer you meet.")
    assert not short.active and not worker.submit(short, RETOLD, "m", "p", None)

"""Distillation detection (llm/distill*.py): the MMD null's calibration, what is flagged and
what is not (real all-MiniLM-L6-v2 embeddings), the reference's caps, memory per caller, and
the background queue that never blocks."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
import pytest

from modelfence.errors import ConfigurationError
from modelfence.llm.distill import DistillDetector, combine, subject_bytes
from modelfence.llm.distill_features import Shape, asked, embed, features
from modelfence.llm.distill_mmd import Reference
from modelfence.llm.distill_settings import DistillSettings
from modelfence.llm.distill_worker import DistillWorker
from modelfence.llm.risk import Observation

from ..llm_prompts import BENIGN_PROMPTS

# -- text: a benign population, a focused developer, distillers -----------------------------


PYTHON = [
    "How do I remove duplicates from a list in Python but keep the order?",
    "what's the difference between == and is in python",
    "How do I read a JSON file into a dict in Python?",
    "Why do I get 'IndentationError: unexpected indent'?",
    "write a python function to count vowels in a string",
    "how to iterate over a dictionary's keys and values python",
    "When should I use a generator instead of a list?",
    "How do I install a package into a virtualenv with pip?",
    "Explain *args and **kwargs with an example.",
    "my pandas groupby is slow on 5 million rows, what can I do",
    "How do I format a float to two decimal places in an f-string?",
    "What does the with statement do when opening files?",
    "how do i catch two exceptions in one except block",
    "How can I time how long a function takes in Python?",
    "What's a dataclass and why would I use one?",
    "how to split a string on commas and strip spaces python",
    "Why is my recursive function hitting the recursion limit?",
    "How do I sort a list of tuples by the second item?",
    "what is the GIL and does it matter for my web scraper",
    "How do I write unit tests with pytest for a function that reads a file?",
]

# the same developer's next questions: still Python, own phrasing, no shared skeleton
PYTHON_MORE = [
    "how do I reverse a string in python",
    "What's the cleanest way to flatten a list of lists?",
    "Why does my default argument list keep growing between calls?",
    "how can I run a shell command from python and get its output",
    "Is there a way to make a class iterable?",
    "what does if __name__ == '__main__' actually do",
    "How do I merge two dicts in Python 3.9?",
    "asyncio.gather vs asyncio.wait, which one should I use",
    "How do I read a big CSV in chunks with pandas?",
    "why is 0.1 + 0.2 not 0.3 in python",
    "How do I make a POST request with a JSON body using requests?",
    "what's the difference between a tuple and a list",
    "How do I log to a file and the console at the same time?",
    "Typing hints for a function that returns either a string or None?",
    "how do I get the current date in ISO format python",
    "Can I use a lambda with sorted to sort by two keys?",
    "My virtualenv activation script doesn't work in PowerShell, any idea?",
    "how to check if a file exists before opening it",
    "What are __slots__ good for?",
    "How do I profile which line of my script is slow?",
]

TOPICS = [
    "the photoelectric effect", "plate tectonics", "the French Revolution", "supply and demand",
    "protein folding", "the Krebs cycle", "Byzantine art", "monetary policy", "black holes",
    "the printing press", "game theory", "volcanic eruptions", "the immune system",
    "Roman aqueducts", "opportunity cost", "quantum entanglement", "coral bleaching",
    "the Renaissance", "compound interest", "nuclear fusion", "the water cycle",
    "Keynesian economics", "DNA transcription", "the Industrial Revolution",
]
TEMPLATE = ("Write a detailed explanation of {topic}. Cover the key concepts, give at least two "
            "examples, and finish with a short summary.")
SWEEP = ["what's {topic}? never really understood it", "Can you explain {topic} to me?",
         "Quick question about {topic}: how does it work?",
         "What should a beginner know about {topic}?"]
T0 = Shape(temperature=0.0, max_tokens=4096)
HUMAN = Shape(temperature=0.7)


@pytest.fixture(scope="module")
def embedder() -> Any:
    from modelfence.llm.screening_similarity import MiniLmEmbedder

    return MiniLmEmbedder()


def _settings(**kw: Any) -> DistillSettings:
    base: dict[str, Any] = {"window": 20, "min_reference": 40, "min_callers": 4,
                            "null_draws": 300}
    return DistillSettings(**{**base, **kw})


def _benign_detector(embedder: Any, settings: DistillSettings) -> DistillDetector:
    """A detector whose reference holds the general population (as a warm-start file)."""
    det = DistillDetector(settings)
    det.seed_reference("m", embedder.encode(BENIGN_PROMPTS))
    assert det.ready("m")
    return det


def _window(det: DistillDetector, embedder: Any, principal: str, texts: list[str],
            shape: Shape) -> list[Any]:
    obs: list[Observation] = []
    results = []
    for f in embed(embedder, texts, [shape] * len(texts)):
        obs += det.add("m", principal, None, f, now=0.0)
        results += det.results
    assert len(results) == len(texts) // det.s.window
    return results


# -- the null: calibrated on the reference --------------------------------------------------

def _mixture(rng: np.random.Generator, centres: np.ndarray, k: int,
             topics: np.ndarray | None = None) -> np.ndarray:
    which = rng.integers(0, len(centres), k) if topics is None else topics
    v = centres[which] + rng.normal(size=(k, centres.shape[1]))
    out: np.ndarray = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


@pytest.mark.parametrize("false_alarm", [0.05, 0.01])
def test_benign_windows_false_alarm_near_the_stated_rate(false_alarm: float) -> None:
    """Windows drawn from the population the reference was drawn from (but not from the
    reference) differ at about the stated rate; a null that ignored the reference's
    spread, or a threshold without the gamma tail, would not be near it."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(40, 384))
    ref = Reference(512, 384, caller_cap=10**6, seed=1)
    for v in _mixture(rng, centres, 512):
        ref.add("a", v)
    fit = ref.calibrate(20, 400, false_alarm, 0.0)
    trials = 3000
    over = sum(ref.mmd2(_mixture(rng, centres, 20)) > fit.threshold for _ in range(trials))
    # binomial: the observed rate within a generous band around the stated one
    sd = math.sqrt(false_alarm * (1 - false_alarm) / trials)
    assert false_alarm / 4 <= over / trials <= false_alarm + 4 * sd + 0.01 * false_alarm
    # the default margin keeps the stated 1e-4 conservative: no benign window of 3000 differs
    strict = ref.calibrate(20, 400, 1e-4, 0.1)
    assert sum(ref.mmd2(_mixture(rng, centres, 20)) > strict.threshold
               for _ in range(trials)) == 0
    # a window from 2 of the 40 topics is far beyond it
    focused = _mixture(rng, centres, 20, rng.integers(0, 2, 20))
    assert ref.mmd2(focused) > 2 * strict.threshold


def test_the_null_is_refitted_as_the_reference_changes() -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(30, 384))
    settings = _settings(recalibrate_every=50, min_callers=2, min_reference=40)
    det = DistillDetector(settings)
    f = [features(f"prompt {i}", v, HUMAN) for i, v in enumerate(_mixture(rng, centres, 400))]
    for i, p in enumerate(f[:200]):
        det.add("m", f"u{i % 8}", "acme", p, now=float(i))
    ref = det._model("m").reference
    first = ref.fit
    assert first is not None
    for i, p in enumerate(f[200:], 200):
        det.add("m", f"u{i % 8}", "acme", p, now=float(i))
    assert ref.fit is not None and ref.fit is not first  # refitted on the newer reference


# -- what is flagged and what is not (real embeddings) ----------------------------------------

def test_templated_windows_are_flagged(embedder: Any) -> None:
    det = _benign_detector(embedder, _settings())
    texts = [TEMPLATE.format(topic=t) for t in TOPICS[:20]]
    [r] = _window(det, embedder, "templater", texts, HUMAN)  # even at the human's temperature
    assert r.differs and r.template >= 0.9 and r.evidence == 1.0


def test_a_temperature_zero_topic_sweep_is_flagged(embedder: Any) -> None:
    det = _benign_detector(embedder, _settings())
    texts = [SWEEP[i % len(SWEEP)].format(topic=t) for i, t in enumerate(TOPICS[:20])]
    [r] = _window(det, embedder, "sweeper", texts, T0)
    assert r.differs and r.revisit <= 0.1 and r.systematic == 1.0 and r.evidence >= 0.5


def test_a_topic_sweep_is_flagged_at_a_sampling_temperature_too(embedder: Any) -> None:
    """The sweep's evidence rests on its reused request forms over ever new topics, not on
    temperature: at 0.7 it still gets evidence (half of what temperature 0 adds to it)."""
    det = _benign_detector(embedder, _settings())
    texts = [SWEEP[i % len(SWEEP)].format(topic=t) for i, t in enumerate(TOPICS[:20])]
    [r] = _window(det, embedder, "sweeper", texts, HUMAN)
    assert r.differs and r.systematic == 0.0 and r.template > 0.05 and r.evidence >= 0.25


def test_a_focused_developer_at_temperature_zero_is_not_flagged(embedder: Any) -> None:
    """An editor plugin sends temperature 0 for every question of a Python-only developer:
    unlike the population (the MMD test says so) and 'systematic', but one topic area in the
    developer's own wording (no shared skeleton): no evidence, window after window."""
    det = _benign_detector(embedder, _settings())
    texts = PYTHON + PYTHON_MORE + PYTHON_MORE[10:] + PYTHON[:10]
    results = _window(det, embedder, "plugin-user", texts, T0)
    assert len(results) == 3 and all(r.systematic == 1.0 for r in results)
    assert any(r.differs for r in results)
    assert [r.evidence for r in results] == [0.0, 0.0, 0.0]


def test_temperature_zero_alone_is_no_evidence() -> None:
    """Request shape is set freely by any client: it scales the request-forms part and is
    never evidence on its own, even for a window unlike benign traffic without revisits."""
    assert combine(True, 0.0, 0.0, 1.0) == 0.0
    assert combine(True, 0.0, 0.3, 1.0) == 0.0
    assert combine(False, 1.0, 0.0, 1.0) == 0.0  # like benign traffic: never evidence
    assert combine(True, 0.6, 0.5, 0.0) == 1.0  # templated, at any temperature
    forms_t0, forms_t07 = combine(True, 0.2, 0.0, 1.0), combine(True, 0.2, 0.0, 0.0)
    assert forms_t0 == pytest.approx(0.75) and forms_t07 == pytest.approx(0.375)
    assert combine(True, 0.2, 0.3, 1.0) == 0.0  # the same forms, revisiting topics: a person


def test_a_focused_developer_differs_but_is_not_flagged(embedder: Any) -> None:
    """Only Python questions: unlike the population (the MMD test says so), but varied in
    wording and asked at a sampling temperature: no evidence."""
    det = _benign_detector(embedder, _settings())
    [r] = _window(det, embedder, "dev", PYTHON, HUMAN)
    assert r.differs
    assert r.template < 0.3 and r.evidence == 0.0
    # and the population's own (unseen) prompts neither differ nor count
    det2 = DistillDetector(_settings())
    det2.seed_reference("m", embedder.encode(BENIGN_PROMPTS[:28]))
    [r2] = _window(det2, embedder, "anyone", BENIGN_PROMPTS[28:48], T0)
    assert not r2.differs and r2.evidence == 0.0


def test_no_evidence_until_the_reference_holds_enough_callers(embedder: Any) -> None:
    settings = _settings(min_callers=4, min_reference=40, caller_share=0.05)
    det = DistillDetector(settings)
    texts = BENIGN_PROMPTS + PYTHON
    vectors = embed(embedder, texts, [HUMAN] * len(texts))
    templated = embed(embedder, [TEMPLATE.format(topic=t) for t in TOPICS[:20]], [T0] * 20)
    # one caller alone: its prompts are capped in the reference and nothing is tested
    for p in vectors[:40]:
        det.add("m", "solo", None, p, now=0.0)
    assert not det.ready("m") and det.counts("m")["cold"] == 2
    assert len(det._model("m").reference) <= int(settings.reference_size * 0.05)
    obs = [o for p in templated for o in det.add("m", "thief", None, p, now=1.0)]
    assert obs == [] and det.results[0].tested is False  # cold: no evidence either way
    # ... and its templated prompts do not become the benign reference meanwhile
    assert "thief" not in det._model("m").reference.owner
    for i, p in enumerate(vectors * 2):
        det.add("m", f"user{i % 6}", None, p, now=2.0)
    assert det.ready("m") and det._model("m").reference.callers() >= 4
    obs = [o for p in templated for o in det.add("m", "thief", None, p, now=3.0)]
    assert [(o.principal, o.tenant, o.distill) for o in obs] == [("thief", None, 1.0)]


def test_the_shipped_reference_tests_from_the_first_window(embedder: Any) -> None:
    det = DistillDetector(_settings())
    assert not det.ready("m")
    assert det.warm_start("m", embedder) >= 150 and det.ready("m")
    [r] = _window(det, embedder, "templater", [TEMPLATE.format(topic=t) for t in TOPICS[:20]],
                  T0)
    assert r.tested and r.evidence == 1.0
    [r] = _window(det, embedder, "dev", PYTHON, HUMAN)
    assert r.tested and r.evidence == 0.0
    off = DistillDetector(_settings(shipped_reference=False))
    assert off.warm_start("m", embedder) == 0 and not off.ready("m")


def test_a_thief_split_over_keys_is_seen_at_its_tenant(embedder: Any) -> None:
    det = _benign_detector(embedder, _settings())
    texts = [TEMPLATE.format(topic=t) for t in TOPICS[:20]]
    obs = []
    for i, f in enumerate(embed(embedder, texts, [T0] * 20)):
        obs += det.add("m", f"key{i % 10}", "thieves", f, now=float(i))
    # no key filled a window of its own; the tenant's window did
    assert len(obs) == 1 and obs[0].tenant == "thieves" and obs[0].distill == 1.0
    assert obs[0].principal.startswith("key")


# -- the reference's caps, memory per caller --------------------------------------------------

def test_no_caller_holds_more_than_its_share_of_the_reference() -> None:
    ref = Reference(100, 4, caller_cap=5)
    for i in range(50):
        ref.add("greedy", np.ones(4, np.float32) * i)
    assert len(ref) == 5 and ref.callers() == 1
    for i in range(200):
        ref.add(f"u{i % 40}", np.ones(4, np.float32))
    assert len(ref) == 100
    held = {o: ref.owner.count(o) for o in set(ref.owner)}
    assert max(held.values()) <= 5 and "greedy" not in held  # its oldest were replaced


def test_memory_per_caller_is_bounded() -> None:
    settings = _settings(max_subjects=50, history=32)
    det = DistillDetector(settings)
    rng = np.random.default_rng(0)
    vectors = _mixture(rng, rng.normal(size=(10, 384)), 64)
    one = subject_bytes(settings)
    assert one <= 20_000  # about 17 KB for a caller's 32 prompts
    for i in range(2000):  # one caller sending far more than its history holds
        det.add("m", "heavy", None,
                features(f"word{i} and some words {i}", vectors[i % 64], T0), float(i))
    assert det.memory_bytes() <= det._model("m").reference.nbytes() + one
    for i in range(500):  # many callers, each in its own tenant: the LRU keeps 50 subjects
        det.add("m", f"p{i}", f"t{i}", features("hello there my friend", vectors[i % 64]),
                float(i))
    assert det.subjects("m") == 50
    assert det.memory_bytes() <= det._model("m").reference.nbytes() + 50 * one
    assert "p:heavy" not in det._model("m").subjects


# -- what is asked, settings --------------------------------------------------------------------

def test_what_a_request_asks() -> None:
    body = {"messages": [{"role": "system", "content": "be nice"},
                         {"role": "user", "content": "first"},
                         {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": [{"type": "text", "text": "second"}]}],
            "temperature": 0, "max_tokens": 900, "n": 2}
    text, shape = asked("chat", body) or ("", Shape())
    assert text == "second" and shape == Shape(0.0, 900, 2, 2)
    got = asked("completion", {"prompt": "go on"})
    assert got is not None and got[0] == "go on" and math.isnan(got[1].temperature)
    assert asked("chat", {"messages": "nope"}) is None
    assert asked("embed", {"input": "x"}) is None


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="history"):
        DistillSettings(window=40, history=32)
    with pytest.raises(ValueError, match="min_reference"):
        DistillSettings(min_reference=1000, reference_size=512)


def test_configured_without_the_llm_extra_refuses_to_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(ConfigurationError,
                       match=r"^distill: distillation detection needs the 'llm' extra "
                             r"\(missing: torch\): pip install 'modelfence\[llm\]'$"):
        DistillWorker.check({"m": DistillSettings()})


# -- the background queue -------------------------------------------------------------------

class _SlowEmbedder:
    """Blocks until released: a worker stuck in a batch."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.release.wait(10)
        v = np.zeros((len(texts), 384), np.float32)
        v[:, 0] = 1.0
        return v


def test_a_full_queue_drops_and_counts_and_never_blocks() -> None:
    emb = _SlowEmbedder()
    counted: list[tuple[str, str, int]] = []
    got: list[Observation] = []
    worker = DistillWorker({"m": _settings(queue=4, batch=2, shipped_reference=False)}, got.append,
                           embedder=emb, on_count=lambda *c: counted.append(c))  # type: ignore[arg-type]
    worker.start()
    try:
        accepted, slowest = 0, 0.0
        for i in range(50):
            started = time.perf_counter()
            accepted += worker.submit("m", "p", None, f"prompt {i}", HUMAN, 0.0)
            slowest = max(slowest, time.perf_counter() - started)
            if i == 0:
                deadline = time.monotonic() + 5  # let the worker take the first in hand
                while emb.calls == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
        assert slowest < 0.5  # never waits for the worker (stuck for up to 10 s)
        assert 4 <= accepted <= 6  # the queue's 4, and what the worker had in hand
        assert worker.dropped == 50 - accepted
        assert sum(n for _, outcome, n in counted if outcome == "dropped") == worker.dropped
        emb.release.set()
        assert worker.drain(10)
        assert worker.embedded == accepted
    finally:
        emb.release.set()
        worker.stop()


def test_distill_without_the_risk_monitor_refuses_to_start() -> None:
    from types import SimpleNamespace

    from modelfence.llm.routes import LlmRoutes
    from modelfence.llm.settings import LlmSettings

    settings = LlmSettings.model_validate({"models": [
        {"name": "m", "upstream": "http://127.0.0.1:1/v1", "distill": {}}],
        "monitor": {"enabled": False}})
    with pytest.raises(ConfigurationError, match=r"needs llm\.monitor\.enabled"):
        LlmRoutes._distill_worker(SimpleNamespace(risk=None),  # type: ignore[arg-type]
                                  settings, None)
    off = LlmSettings.model_validate({"models": [
        {"name": "m", "upstream": "http://127.0.0.1:1/v1", "distill": {"enabled": False}}]})
    assert LlmRoutes._distill_worker(SimpleNamespace(risk=None),  # type: ignore[arg-type]
                                     off, None) is None


def test_stopping_drops_the_backlog_instead_of_working_through_it() -> None:
    emb = _SlowEmbedder()
    settings = _settings(queue=100, batch=2, shipped_reference=False)
    worker = DistillWorker({"m": settings}, lambda o: None,
                           embedder=emb)  # type: ignore[arg-type]
    worker.start()
    for i in range(50):
        assert worker.submit("m", "p", None, f"prompt {i}", HUMAN, 0.0)
    deadline = time.monotonic() + 5
    while emb.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    time.sleep(0.2)
    emb.release.set()  # the batch in hand finishes; the 48 waiting were dropped
    stopper.join(5)
    assert not stopper.is_alive() and 1 <= worker.embedded <= 2  # the batch in hand

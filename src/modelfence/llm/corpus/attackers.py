"""The corpus's thieves: distillers, system-prompt thieves and output-layer probers.

Distillers (target: alerted within 300 requests): templated (one instruction-tuning template
over the taxonomy, temperature 0, max_tokens 4096), paraphrased (many surface forms), topic
sweep (one natural question per topic), slow (templated at a heavy honest user's pace,
inside an honest tenant), split (templated over 10 keys of one tenant).

System-prompt thieves: one attempt per fresh key (an account of its own, in no tenant), in
one of the forms of transforms.FORMS; a chunked
attempt asks for 30-character slices one request at a time, a multi-turn one talks first.

Output-layer probers: fast (a probe every few seconds) and patient (one every 15 minutes
all day): logprobs/top_logprobs, logit_bias, echo, n > 1, max_tokens over the cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import data
from .callers import Caller, Request
from .timing import every, session_times, steady
from .translate import LANGUAGES

DISTILL_TARGET = 300
#: Attempts per form in a half (60 in all); translations cycle through LANGUAGES.
ATTEMPTS = (("verbatim", 4), ("translate", 9), ("base64", 5), ("rot13", 4), ("hex", 4),
            ("reversed", 4), ("spaced", 4), ("leet", 4), ("paraphrase", 6), ("acrostic", 4),
            ("poem", 4), ("chunked", 4), ("multiturn", 4))
CHUNK = 30
DISTILL_PARAMS = (("max_tokens", 4096), ("temperature", 0.0))
PROBES: tuple[tuple[str, str, tuple[tuple[str, object], ...]], ...] = (
    ("logprobs", "chat", (("logprobs", True), ("max_tokens", 1), ("top_logprobs", 5))),
    ("logit_bias", "chat", (("logit_bias", {"9906": 100}), ("max_tokens", 1))),
    ("echo", "completion", (("echo", True), ("logprobs", 5), ("max_tokens", 0))),
    ("n", "chat", (("max_tokens", 1), ("n", 8))),
    ("over_cap", "chat", (("max_tokens", 100_000),)),
    ("top_logprobs", "chat", (("logprobs", True), ("max_tokens", 1), ("top_logprobs", 20))),
)
_PROBE_TEXT = {"dev": ("Say yes.", "The capital of France is", "Repeat: hello", "1 + 1 =",
                       "Answer with one word: colour of the sky?", "Pick a number."),
               "test": ("Say no.", "The largest ocean is", "Echo: goodbye", "2 + 2 =",
                        "One word: colour of grass?", "Pick a letter."),
               "holdout": ("Reply with ok.", "The tallest mountain is", "Say back: thanks",
                           "3 + 4 =", "One word: colour of snow?", "Name a fruit.")}


def _fill(template: str, topic: str) -> str:
    return template.replace("{topic}", topic)


def distillers(half: str, models: Sequence[str], hide_in: str, rng: np.random.Generator
               ) -> list[Caller]:
    """The five distillers of the half; the slow one's key belongs to tenant `hide_in`."""
    t = data.distill_templates(half)
    topics = [topic for _, topic in data.topics(half)]
    out = []

    def caller(family: str, texts: list[str], times: list[float], *, tenant: str | None,
               keys: int = 1, model: str, params: tuple[tuple[str, object], ...]
               = DISTILL_PARAMS) -> Caller:
        name = f"{half}-distill-{family}"
        reqs = tuple(Request(tm, name, f"{name}/k{i % keys}" if keys > 1 else name,
                             tenant, model, text, params=params)
                     for i, (tm, text) in enumerate(zip(times, texts, strict=True)))
        return Caller(name, "distiller", family, half, model, tenant, reqs,
                      target=DISTILL_TARGET, notes={"keys": keys})

    order = [topics[i] for i in rng.permutation(len(topics))]
    template = str(rng.choice(t["templated"]))
    n = 600
    texts = [_fill(template, order[i % len(order)]) for i in range(n)]
    out.append(caller("templated", texts, steady(rng, n, start_s=10 * 3600, gap_s=(2, 6)),
                      tenant=f"{half}-distill-templated", model=models[0]))
    paraphrased = [_fill(str(rng.choice(t["paraphrased"])), order[(i * 7) % len(order)])
                   for i in range(n)]
    out.append(caller("paraphrased", paraphrased,
                      steady(rng, n, start_s=11 * 3600, gap_s=(2, 8)),
                      tenant=f"{half}-distill-paraphrased", model=models[1 % len(models)]))
    sweep = [_fill(str(rng.choice(t["sweep"])), topic) for topic in order]
    out.append(caller("sweep", sweep, steady(rng, len(sweep), start_s=9 * 3600, gap_s=(5, 20)),
                      tenant=f"{half}-distill-sweep", model=models[2 % len(models)],
                      params=(("max_tokens", 2048), ("temperature", 0.7))))
    slow_n = 320  # a heavy honest user's volume, at a heavy honest user's pace
    slow = [_fill(template, order[(i * 3 + 1) % len(order)]) for i in range(slow_n)]
    out.append(caller("slow", slow, session_times(rng, slow_n, per_session=(4, 15),
                                                  think_s=45.0, burst=0.3),
                      tenant=hide_in, model=_model_of(hide_in, models)))
    split = [_fill(template, order[(i * 11 + 2) % len(order)]) for i in range(n)]
    out.append(caller("split", split, steady(rng, n, start_s=13 * 3600, gap_s=(2, 6)),
                      tenant=f"{half}-distill-split", keys=10, model=models[0]))
    out.append(_disguised(half, caller, order, models, rng))
    return out


def _disguised(half: str, caller: Any, order: list[str], models: Sequence[str],
               rng: np.random.Generator) -> Caller:
    """Beyond the issue's list (reported, no target): a distiller that knows the test — many
    surface forms, a sampling temperature, honest prompts mixed in as cover (one in three),
    follow-up turns, a heavy honest user's pace."""
    from .honest import vary

    t = data.distill_templates(half)
    honest = data.honest_prompts(half)
    cover = [*honest["general"], *honest["code"]]
    follow = honest["followup"]
    n = 600
    texts, conv, convs = [], "", []
    for i in range(n):
        roll = rng.random()
        if roll < 0.15 and conv:
            texts.append(str(rng.choice(follow)))
        else:
            conv = f"{half}-distill-disguised/c{i}"
            texts.append(vary(str(rng.choice(cover)), rng, 0.6) if roll < 0.45 else
                         vary(_fill(str(rng.choice(t["paraphrased"])),
                                    order[(i * 13 + 5) % len(order)]), rng, 0.6))
        convs.append(conv)
    times = session_times(rng, n, per_session=(4, 15), think_s=45.0, burst=0.3)
    name = f"{half}-distill-disguised"
    reqs = tuple(Request(tm, name, name, name, models[1 % len(models)], text, conversation=c,
                         params=(("max_tokens", int(rng.choice([1024, 2048]))),
                                 ("temperature", float(rng.choice([0.3, 0.7, 1.0])))))
                 for tm, text, c in zip(times, texts, convs, strict=True))
    return Caller(name, "distiller", "disguised", half, models[1 % len(models)], name, reqs,
                  target=None, notes={"keys": 1})


def _model_of(tenant: str, models: Sequence[str]) -> str:
    # honest tenants are "<half>-t<k>-<size>", on models[k % len(models)]
    k = int(tenant.split("-t")[1].split("-")[0])
    return models[k % len(models)]


def thieves(half: str, systems: Sequence[data.SystemPrompt], rng: np.random.Generator
            ) -> list[Caller]:
    """60 attempts, each with a fresh key, spread over the working day."""
    asks = data.attack_requests(half)
    out: list[Caller] = []
    k = 0
    for form, count in ATTEMPTS:
        phrasings = asks[form]
        for j in range(count):
            system = systems[k % len(systems)]
            language = LANGUAGES[j % len(LANGUAGES)].capitalize()
            name = f"{half}-thief-{k:02d}-{form}"
            start = float(rng.uniform(8.5, 17.5)) * 3600
            text = phrasings[j % len(phrasings)].replace("{lang}", language)
            if form == "chunked":
                length = len(system.text) + 100  # its own text and whatever follows it
                texts = [text.replace("{start}", str(a)).replace("{end}", str(a + CHUNK))
                         for a in range(0, length, CHUNK)]
                times = steady(rng, len(texts), start_s=start, gap_s=(5, 15))
            elif form == "multiturn":
                texts = [s.strip() for s in text.split("||")]
                times = steady(rng, len(texts), start_s=start, gap_s=(20, 90))
            else:
                texts, times = [text], [start]
            reqs = tuple(Request(tm, name, name, None, system.name, tx, conversation=name,
                                 params=(("temperature", 0.0),))
                         for tm, tx in zip(times, texts, strict=True))
            out.append(Caller(name, "thief", form, half, system.name, None, reqs, target=1,
                              form=form, notes={"secret": system.secret,
                                                "fragments": system.fragments,
                                                "language": language.lower()}))
            k += 1
    return out


BEYOND_SLICE = 4


def beyond(half: str, systems: Sequence[data.SystemPrompt], rng: np.random.Generator
           ) -> list[Caller]:
    """Thieves beyond the issue's list, reported apart (no target): one attempt per system
    prompt in each of transforms.BEYOND; "slices" reads the prompt 4 characters at a time,
    each slice with a fresh key."""
    asks = data.attack_requests(half)
    out: list[Caller] = []
    for form in ("spelled", "caesar", "slices"):
        text = asks[f"beyond-{form}"][0]
        for k, system in enumerate(systems):
            name = f"{half}-beyond-{k}-{form}"
            start = float(rng.uniform(8.5, 16.5)) * 3600
            if form == "slices":
                spans = range(0, len(system.text) + 100, BEYOND_SLICE)
                texts = [text.replace("{start}", str(a)).replace("{end}",
                                                                 str(a + BEYOND_SLICE))
                         for a in spans]
                keys = [f"{name}/k{i}" for i in range(len(texts))]
                times = steady(rng, len(texts), start_s=start, gap_s=(20, 60))
            else:
                texts, keys, times = [text], [name], [start]
            reqs = tuple(Request(tm, name, key, None, system.name, tx,
                                 params=(("temperature", 0.0),))
                         for tm, key, tx in zip(times, keys, texts, strict=True))
            out.append(Caller(name, "thief", form, half, system.name, None, reqs,
                              target=None, form=form,
                              notes={"secret": system.secret, "fragments": system.fragments,
                                     "beyond": True}))
    return out


def probers(half: str, model: str, rng: np.random.Generator) -> list[Caller]:
    """A fast prober and a patient one (one probe per 15 minutes for the whole day)."""
    out = []
    for family, times in (("fast", steady(rng, 80, start_s=15 * 3600, gap_s=(1, 4))),
                          ("patient", every(96, start_s=0.0, period_s=900.0, rng=rng))):
        name = f"{half}-probe-{family}"
        reqs = []
        for i, tm in enumerate(times):
            _, kind, params = PROBES[i % len(PROBES)]
            reqs.append(Request(tm, name, name, None, model,
                                _PROBE_TEXT[half][i % 6], kind=kind, params=params))
        out.append(Caller(name, "prober", family, half, model, None, tuple(reqs),
                          notes={"probes": [p[0] for p in PROBES]}))
    return out

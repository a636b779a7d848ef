"""Honest users: tenants of 1, 10 and 50 over a simulated day.

Behaviours: natural (varied prompts, sometimes a conversation of follow-ups), multi-turn
(conversations with history), heavy (many requests, long answers, a client that sets
max_tokens high and sometimes n > 1, as honest clients do), focused (a developer who only
asks Python questions: the hardest case for a distillation detector), self (asks the
assistant who it is and what it can do), short-lived (one to three requests). Prompts are
the hand-written ones of the half, each sent with a user's own surface habits (lower case,
a typo, a greeting), so no two users send exactly the same text. Temperatures are what
honest clients send: a tenant's app sets one for all its users (`APP_TEMPERATURE`: none, or
0 for repeatable answers; the tenant of 50 sends 0 in both halves), a single user picks
their own, half the Python developers' editor plugins send 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import data
from .callers import Caller, Request
from .timing import session_times

#: (tenant size, behaviours of its users); every half has each of these tenants.
TENANTS: tuple[tuple[int, tuple[str, ...]], ...] = (
    *((1, (family,)) for family in ("natural", "heavy", "focused", "self", "multiturn", "short",
                                    "natural", "natural", "focused", "self", "multiturn",
                                    "short")),
    (10, ("natural",) * 5 + ("heavy", "focused", "self", "multiturn", "short")),
    (10, ("natural",) * 4 + ("heavy", "heavy", "focused", "self", "multiturn", "short")),
    (50, ("natural",) * 28 + ("heavy",) * 4 + ("focused",) * 5 + ("self",) * 5
     + ("multiturn",) * 5 + ("short",) * 3),
)
#: The temperature each multi-user tenant's app sends (None: left out), in TENANTS' order.
APP_TEMPERATURE: dict[str, tuple[float | None, ...]] = {"dev": (None, 0.7, 0.0),
                                                        "test": (0.7, None, 0.0),
                                                        "holdout": (0.0, 0.7, None)}
FAMILIES = ("natural", "multiturn", "heavy", "focused", "self", "short")
_GREETINGS = ("hey, ", "hi! ", "quick question: ", "ok so ", "hello, ", "")
_ENDINGS = (" thanks!", " thx", " please", " :)", "")


def vary(prompt: str, rng: np.random.Generator, habit: float) -> str:
    """The prompt as this user would type it: `habit` in [0, 1] is how casual they are."""
    if "\n" in prompt:  # pasted text is kept as pasted
        return prompt
    text = prompt
    if rng.random() < habit * 0.6:
        text = text[0].lower() + text[1:]
        text = text.rstrip("?.!") if rng.random() < 0.5 else text
    if rng.random() < habit * 0.4:
        words = text.split(" ")
        i = int(rng.integers(0, len(words)))
        w = words[i]
        if len(w) > 4:
            j = int(rng.integers(1, len(w) - 2))
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        text = " ".join(words)
    if rng.random() < habit * 0.3:
        text = str(rng.choice(_GREETINGS)) + text
    if rng.random() < habit * 0.2:
        text += str(rng.choice(_ENDINGS))
    return text


class _Pool:
    def __init__(self, half: str) -> None:
        p = data.honest_prompts(half)
        self.general = p["general"] + p["trigger"] + p["long"] + p["lang"]
        self.code, self.self_, self.followup = p["code"], p["self"], p["followup"]

    def pick(self, rng: np.random.Generator, items: Sequence[str]) -> str:
        return str(items[int(rng.integers(0, len(items)))])


def _user(half: str, pool: _Pool, rng: np.random.Generator, *, family: str, name: str,
          tenant: str, model: str, group: str, temperature: float | None) -> Caller:
    habit = float(rng.uniform(0.0, 1.0))
    if family == "focused" and rng.random() < 0.5:
        temperature = 0.0  # an editor plugin asks for the most likely answer
    params: dict[str, object] = {} if temperature is None else {"temperature": temperature}
    if family == "heavy":
        n = int(rng.integers(120, 200))
        times = session_times(rng, n, per_session=(4, 15), think_s=45.0, burst=0.3)
        params["max_tokens"] = int(rng.choice([2048, 4096]))
    elif family == "short":
        n = int(rng.integers(1, 4))
        times = session_times(rng, n, per_session=(1, 3))
    elif family == "focused":
        n = int(rng.integers(30, 70))
        times = session_times(rng, n, per_session=(2, 8), think_s=120.0)
    else:
        n = int(rng.integers(8, 40))
        times = session_times(rng, n)
    if rng.random() < 0.3:
        params["max_tokens"] = int(rng.choice([512, 1024, 4096]))
    requests: list[Request] = []
    conversation, turns = "", 0
    for i, t in enumerate(times):
        p = dict(params)
        if family == "heavy" and rng.random() < 0.1:
            p["n"] = 2  # an honest client comparing two drafts
        follow = conversation and turns < 5 and rng.random() < (
            0.7 if family == "multiturn" else 0.25 if family in ("natural", "heavy") else 0.0)
        if follow:
            text, turns = pool.pick(rng, pool.followup), turns + 1
        else:
            conversation, turns = f"{name}/c{i}", 0
            if family == "focused":
                text = pool.pick(rng, pool.code)
            elif family == "self" and (i < 2 or rng.random() < 0.2):
                text = pool.pick(rng, pool.self_)
            elif rng.random() < 0.06:
                text = pool.pick(rng, pool.self_)  # anyone may ask what the assistant is
            elif family == "heavy" and rng.random() < 0.3:
                text = pool.pick(rng, pool.code)
            else:
                text = pool.pick(rng, pool.general)
        requests.append(Request(t, name, name, tenant, model, vary(text, rng, habit),
                                conversation=conversation,
                                params=tuple(sorted(p.items()))))
    return Caller(name, "honest", family, half, model, tenant, tuple(requests), group=group)


def users(half: str, models: Sequence[str], rng: np.random.Generator) -> list[Caller]:
    """Every honest user of the half: the tenants of `TENANTS`, each on one of `models`."""
    pool = _Pool(half)
    out = []
    for k, (size, families) in enumerate(TENANTS):
        tenant = f"{half}-t{k}-{size}"
        model = models[k % len(models)]
        # a tenant's app sets the temperature for all its users (or leaves it out)
        apps = APP_TEMPERATURE[half]
        app = apps[sum(1 for z, _ in TENANTS[:k] if z > 1)] if size > 1 else None
        for j, family in enumerate(families):
            temperature = app if size > 1 else _temperature(rng)
            out.append(_user(half, pool, rng, family=family, name=f"{tenant}/u{j}-{family}",
                             tenant=tenant, model=model, group=f"tenant-{size}",
                             temperature=temperature))
    return out


def _temperature(rng: np.random.Generator) -> float | None:
    """What an honest client sends: often nothing (the model's default), often 0 (apps that
    want repeatable answers), or a sampling temperature."""
    roll = rng.random()
    return None if roll < 0.35 else 0.0 if roll < 0.6 else float(rng.choice([0.2, 0.7, 1.0]))

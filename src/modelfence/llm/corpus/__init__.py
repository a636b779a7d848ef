"""The LLM efficacy corpus (issue 17): honest users, distillers, system-prompt thieves and
output-layer probers, in a DEV half (tune on it) and a TEST half (report it) that share no
prompt, topic, system prompt, secret or seed.

    from modelfence.llm.corpus import build, timeline, ComplyingUpstream, Judge
    half = build("test")                 # CorpusHalf: .systems, .callers, .of("thief")
    for req in timeline(half.callers):   # Request: t, principal, tenant, model, text, ...
        body = req.body(system_text, history)
"""

from .callers import DAY_S, POPULATIONS, Caller, Request, timeline
from .data import HALVES, SystemPrompt
from .populations import SEEDS, CorpusHalf, build
from .transforms import FORMS, Found, Judge, render, views
from .upstream import ComplyingUpstream, Intent, cut, read_conversation, read_intent, tokens

__all__ = ["DAY_S", "FORMS", "HALVES", "POPULATIONS", "SEEDS", "Caller", "ComplyingUpstream",
           "CorpusHalf", "Found", "Intent", "Judge", "Request", "SystemPrompt", "build", "cut",
           "read_conversation", "read_intent", "render", "timeline", "tokens", "views"]

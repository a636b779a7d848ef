"""README's recommended LLM configuration, as code: the one place it is written down.

The efficacy corpus (`modelfence.llm.corpus`) measures exactly this configuration, and
examples/llm-gateway.yaml states the same values (a test compares them). Fields not named
here take their defaults; a field named here that the settings do not know is an error, so
the configuration measured is never silently less than the one written.
"""

from __future__ import annotations

from typing import Any

from .settings import LlmModel, LlmMonitorSettings, LlmSettings

#: Base output controls: no logprobs, logit_bias refused, one choice, 1,024 tokens.
CONTROLS: dict[str, Any] = {"logprobs": False, "logit_bias": "refuse", "max_n": 1,
                            "max_tokens": 1024}
#: Stricter controls as a caller's risk rises.
BANDS: list[dict[str, Any]] = [
    {"name": "watched", "from_risk": 0.3, "controls": {"max_tokens": 256}},
    {"name": "locked", "from_risk": 0.7, "controls": {"max_tokens": 64}},
]
#: System-prompt theft protection: the canary and the streaming leak filter (decoded views
#: on by default), and the background paraphrase check of finished answers (`semantic`);
#: `public` (the persona sentence the operator marks as public) is added per deployment by
#: `llm_model` where the settings know the field.
CANARY: dict[str, Any] = {"mode": "block", "semantic": True}
#: Prompt screening: phrase rules and MiniLM similarity to the shipped seeds.
SCREENING: dict[str, Any] = {"heuristics": True, "similarity": True}
#: Distillation detection per model (llm/distill.py): its defaults, where the settings have it.
DISTILL: dict[str, Any] = {}
#: The risk book; every field not named keeps its default (weights, half-lives, ...).
MONITOR: dict[str, Any] = {"alert_at": 0.5}
#: The example policies (examples/llm-policy.cedar) act on the model tagged "screened": a
#: prompt screened as an attack above this score is refused (403), and so is any request of
#: a caller whose risk is above STOP_RISK.
TAGS = ("screened",)
SCREEN_REFUSE_ABOVE = 0.8
STOP_RISK = 0.9


def canary(public: str = "") -> dict[str, Any]:
    """The canary block of a deployment whose persona sentence is `public`."""
    values = dict(CANARY)
    if public:
        values["public"] = [public]
    return values


def llm_model(name: str, upstream: str, *, public: str = "", **extra: Any) -> LlmModel:
    """A deployment with the recommended controls, bands, canary and screening."""
    values: dict[str, Any] = {
        "name": name, "upstream": upstream, "kinds": ["chat", "completion"],
        "attributes": {"tags": list(TAGS)}, "controls": CONTROLS, "bands": BANDS,
        "canary": canary(public), "screening": SCREENING, "distill": DISTILL}
    return LlmModel.model_validate({**values, **extra})


def monitor(**overrides: Any) -> LlmMonitorSettings:
    return LlmMonitorSettings.model_validate({**MONITOR, **overrides})


def llm_settings(models: list[LlmModel], **monitor_overrides: Any) -> LlmSettings:
    return LlmSettings(models=models, monitor=monitor(**monitor_overrides))

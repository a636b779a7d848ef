"""Typed settings of the OpenAI-compatible LLM routes (`llm:` in modelfence.yaml).

This module must not import `modelfence.config`: config.py imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-:/]{0,127}$"

Kind = Literal["chat", "completion", "embed"]


def _all_kinds() -> list[Kind]:
    return ["chat", "completion", "embed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LlmAttributes(_Strict):
    """What policies know about an LLM (`resource.owner`, ...); same fields as ModelAttributes."""

    owner: str = ""
    sensitivity: int = Field(0, ge=0, le=1000)
    tags: list[str] = Field(default_factory=list)


class LlmControls(_Strict):
    """Output controls: what a caller may ask of the model, enforced before the upstream call."""

    logprobs: bool = Field(False, description="allow logprobs / top_logprobs at all")
    max_top_logprobs: int = Field(5, ge=0, le=20, description="cap on top_logprobs "
                                  "(chat) and logprobs (completions)")
    logit_bias: Literal["refuse", "clamp", "allow"] = Field(
        "refuse", description="refuse: 400; clamp: each bias clamped to ±max_logit_bias")
    max_logit_bias: float = Field(5.0, ge=0.0, le=100.0)
    max_logit_bias_entries: int = Field(300, ge=0)
    max_n: int = Field(1, ge=1, le=128, description="cap on n (choices per request)")
    max_best_of: int = Field(1, ge=1, le=128)
    max_tokens: int = Field(4096, ge=1, description="cap on max_tokens / max_completion_tokens; "
                            "set on requests that do not name one")
    over_cap: Literal["clamp", "reject"] = Field(
        "clamp", description="a value over a cap (n, best_of, max_tokens, top_logprobs) is "
        "clamped to the cap, or refused with 400")
    echo: bool = Field(False, description="allow echo (completions); off: 400")


class LlmModel(_Strict):
    """One LLM served through an upstream that speaks the OpenAI API (vLLM, Ollama, TGI...)."""

    name: str = Field(pattern=_MODEL_NAME, description="the model name clients send")
    upstream: str = Field(description="base URL of the upstream API, e.g. http://host:8000/v1")
    upstream_model: str | None = Field(None, description="model name upstream; default: name")
    api_key_file: Path | None = Field(None, description="file holding the upstream API key")
    timeout_s: float = Field(120.0, gt=0, description="whole exchange (a stream included)")
    kinds: list[Kind] = Field(default_factory=_all_kinds,
                              description="which routes serve this model")
    attributes: LlmAttributes = Field(default_factory=LlmAttributes)
    controls: LlmControls = Field(default_factory=LlmControls)

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("upstream must be an http:// or https:// URL")
        return value.rstrip("/")

    @property
    def target_model(self) -> str:
        return self.upstream_model or self.name

    def api_key(self) -> str | None:
        if self.api_key_file is None:
            return None
        return self.api_key_file.read_text().strip() or None


class LlmSettings(_Strict):
    models: list[LlmModel] = Field(default_factory=list)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="request body limit on /v1")
    max_connections: int = Field(100, ge=1, description="pooled upstream connections")

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[LlmModel]) -> list[LlmModel]:
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"LLM model names must be unique: {dupes}")
        return models

"""Typed settings of prompt screening (`screening:` of an LLM in modelfence.yaml).

Kept apart from the other LLM settings so the screening module can be built and tested
alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import ConfigPath, Strict

Label = Literal["benign", "injection", "extraction"]


def _default_labels() -> dict[str, Label]:
    # the labels of the common open classifiers (Prompt-Guard, deberta prompt-injection)
    return {"injection": "injection", "jailbreak": "injection", "extraction": "extraction",
            "leak": "extraction", "benign": "benign", "safe": "benign"}


class ExternalClassifier(Strict):
    """A text classifier reached over HTTP: POST {text_field: text}, answered with
    {"label", "score"} or Hugging Face's [{"label", "score"}, ...] (also nested [[...]])."""

    url: str = Field(description="http:// or https:// URL the text is POSTed to")
    api_key_file: ConfigPath | None = Field(None, description="file holding a bearer token")
    text_field: str = Field("text", min_length=1, max_length=100)
    labels: dict[str, Label] = Field(
        default_factory=_default_labels, description="the classifier's labels (matched "
        "case-insensitively) → benign | injection | extraction; any other label is benign")
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="an injection/extraction label "
                             "scored below this is a benign verdict")
    timeout_s: float = Field(2.0, gt=0, le=120.0, description="whole exchange")
    on_error: Literal["benign", "flag"] = Field(
        "benign", description="a failed classifier (timeout, 5xx, bad answer) gives a benign "
        "verdict, or flags the text as an injection (score 1); the verdict says it failed")
    max_connections: int = Field(20, ge=1, le=1000)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("the external classifier url must be an http:// or https:// URL")
        return value

    @field_validator("labels")
    @classmethod
    def _casefold(cls, value: dict[str, Label]) -> dict[str, Label]:
        return {k.casefold(): v for k, v in value.items()}


class ScreeningSettings(Strict):
    """Which detectors screen caller-written prompt text; the verdict is policy context
    (`context.prompt`), never a block by itself."""

    heuristics: bool = Field(True, description="phrase rules; microseconds per prompt")
    similarity: bool = Field(False, description="nearest shipped seed by all-MiniLM-L6-v2 "
                             "embedding; needs the `llm` extra, loads in seconds on first use")
    similarity_threshold: float = Field(0.5, ge=0.0, le=1.0, description="cosine similarity "
                                        "to the nearest (attack) seed needed to flag")
    similarity_margin: float = Field(0.1, ge=0.0, le=1.0, description="how much nearer the "
                                     "attack seed must be than the nearest benign seed")
    similarity_preload: bool = Field(False, description="load the model at start-up "
                                     "instead of on the first screened request")
    external: ExternalClassifier | None = None
    short_circuit: bool = Field(True, description="skip the slower detectors when the "
                                "heuristics already flagged the text")
    max_chars: int = Field(8000, ge=256, le=1_000_000, description="text screened per request: "
                           "its first quarter and last three quarters when longer")
    on_failure: Literal["refuse", "allow"] = Field(
        "refuse", description="when screening cannot give a verdict (a detector busy, "
        "timed out or failing, and none flagged the text): refuse the request (503 with "
        "Retry-After), or let policy decide with `context.screen_failed` set (the label is "
        "then the external classifier's `on_error`)")

"""Typed settings of the OpenAI-compatible LLM routes (`llm:` in modelfence.yaml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from .base import ConfigPath, Strict, UpstreamUrl
from .llm_distill import DistillSettings
from .llm_screening import ScreeningSettings
from .validators import redis_url, unique_names

_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-:/]{0,127}$"

LOCAL_PREFIX = "local:"

Kind = Literal["chat", "completion", "embed"]


def _all_kinds() -> list[Kind]:
    return ["chat", "completion", "embed"]


class LlmAttributes(Strict):
    """What policies know about an LLM (`resource.owner`, ...); same fields as ModelAttributes."""

    owner: str = ""
    sensitivity: int = Field(0, ge=0, le=1000)
    tags: list[str] = Field(default_factory=list)


class CanarySettings(Strict):
    """System-prompt theft protection: a secret canary added to system prompts, and answers
    that would repeat it (or a verbatim span of the system prompt) blocked or redacted."""

    mode: Literal["block", "redact"] = "block"
    span_len: int = Field(40, ge=12, le=1000, description="shortest verbatim span of the system "
                          "prompt counted as a leak (characters, whitespace collapsed)")
    public: list[str] = Field(default_factory=list, description="passages of the system prompt "
                              "the assistant may tell its users (its persona, e.g. 'You are "
                              "Ava, the support assistant of ACME.'): cut out of the prompt "
                              "before spans, marks and similarity are taken, so repeating "
                              "them is not a leak")
    views: bool = Field(True, description="also look for the prompt's marks (codes, numbers, "
                        "quoted strings, rare words) and copied runs in decoded views of the "
                        "answer: spaced, leetspeak, reversed, ROT13, base64/32, hex, binary, "
                        "character codes, acrostics")
    hold_max: int = Field(256, ge=32, le=4096, description="most characters of a streamed "
                          "answer held back to judge a run that could still be a disguised "
                          "leak (a base64 or hex run, letter-spaced text, half a code)")
    weak_needed: int = Field(3, ge=1, le=20, description="distinct weak marks of the prompt "
                             "(rare words, 3-4 digit numbers) that together are a leak in plain "
                             "text; one is enough in a disguised view")
    semantic: bool = Field(False, description="also compare each finished answer's sentences "
                           "with the prompt's (all-MiniLM-L6-v2, the `llm` extra) on a "
                           "background thread: an answer retelling half of them (at least 2) "
                           "is leak evidence for its caller (it is not stopped: the check "
                           "runs after it); needs llm.monitor")
    semantic_threshold: float = Field(0.5, ge=0.0, le=1.0, description="cosine at which an "
                                      "answer sentence retells a prompt sentence")


class LlmControls(Strict):
    """Output controls: what a caller may ask of the model, enforced before the upstream call."""

    logprobs: bool = Field(False, description="allow logprobs / top_logprobs at all")
    max_top_logprobs: int = Field(5, ge=0, le=1_000_000, description="cap on top_logprobs "
                                  "(chat) and logprobs (completions); OpenAI stops at 20, a "
                                  "local model can give its whole vocabulary")
    logprob_noise: float = Field(0.0, ge=0.0, le=100.0, description="scale of keyed noise "
                                 "added to returned logprobs (same request, same numbers); "
                                 "0: none. Streams get the same numbers as whole answers")
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


class TextWatermarkSettings(Strict):
    """A keyed green-list text watermark on a local model's answers (Kirchenbauer et al.
    2023; see `modelfence.watermark.llm_text`). The key is derived from the server secret and
    the model name; `modelfence watermark detect-text` tests a text for it."""

    gamma: float = Field(0.25, gt=0.0, lt=1.0, description="fraction of the vocabulary in "
                         "each step's green list")
    delta: float = Field(2.0, gt=0.0, le=10.0, description="added to green tokens' logits "
                         "before sampling: stronger signal, more change to the answers")


class LlmBand(Strict):
    """Stricter output controls for riskier callers: used from `from_risk` upwards.

    A policy can pin a caller to a band by name with ``@shaping("name")``, as for
    classifiers' output bands; a pin naming no band of the model gets the strictest.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    from_risk: float = Field(ge=0.0, le=1.0)
    controls: LlmControls


class LlmModel(Strict):
    """One LLM served through an upstream that speaks the OpenAI API (vLLM, Ollama, TGI...)."""

    name: str = Field(pattern=_MODEL_NAME, description="the model name clients send")
    upstream: UpstreamUrl = Field(
        description="base URL of the upstream API, e.g. http://host:8000/v1, or local:PATH: a "
        "saved Hugging Face transformers model folder served in-process (the `llm` extra: "
        "torch and transformers)")
    upstream_model: str | None = Field(None, description="model name upstream; default: name")
    api_key_file: ConfigPath | None = Field(None, description="file holding the upstream API key")
    timeout_s: float = Field(120.0, gt=0, description="whole exchange (a stream included)")
    kinds: list[Kind] = Field(default_factory=_all_kinds,
                              description="which routes serve this model")
    attributes: LlmAttributes = Field(default_factory=LlmAttributes)
    controls: LlmControls = Field(default_factory=LlmControls)
    extra_fields: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]] = Field(
        default_factory=list, description="request fields beyond the OpenAI API's that "
        "callers may send, passed upstream as sent (vLLM's top_k, min_p, ...); no output "
        "control sees them. Any other unknown field is a 400, as OpenAI answers it")
    canary: CanarySettings | None = Field(None, description="system-prompt theft protection")
    bands: list[LlmBand] = Field(default_factory=list, description="stricter controls as the "
                                 "caller's risk rises (`controls` below the first band)")
    screening: ScreeningSettings | None = Field(
        None, description="screen prompts for injection and extraction attempts; the "
        "verdict is policy context (`context.screen`, `context.screen_score`)")
    text_watermark: TextWatermarkSettings | None = Field(
        None, description="watermark the answers of a local: model (green-list logit bias); "
        "logprobs returned are those of the biased distribution sampled from")
    distill: DistillSettings | None = Field(
        None, description="distillation detection: windows of each caller's and tenant's "
        "prompts tested against the model's benign traffic (the `llm` extra); its evidence "
        "weighs llm.monitor.distill in the risk")

    @model_validator(mode="after")
    def _watermark_needs_local(self) -> LlmModel:
        if self.text_watermark is not None and self.local_path is None:
            raise ValueError(
                f"model {self.name!r}: text_watermark needs a local: upstream; a proxy cannot "
                "bias the sampling of an upstream server (watermark there, e.g. with the "
                "upstream's own logits processor)")
        return self

    @field_validator("bands")
    @classmethod
    def _rising(cls, bands: list[LlmBand]) -> list[LlmBand]:
        risks = [b.from_risk for b in bands]
        if risks != sorted(risks) or len(set(risks)) != len(risks):
            raise ValueError("bands must have strictly rising from_risk")
        names = [b.name for b in bands]
        if "default" in names or len(set(names)) != len(names):
            raise ValueError("band names must be unique and not 'default' (the base controls)")
        return bands

    def controls_for(self, risk: float, pins: tuple[str, ...] = (),
                     floor: float = 0.0) -> tuple[str, LlmControls]:
        """(band name, controls) for a caller at `risk`, or pinned by policy to a band; never
        a band below the one an operator's pin (`floor`, its start) names."""
        name, controls = self._controls_for(risk, pins)
        start = next((b.from_risk for b in self.bands if b.name == name), 0.0)
        if floor <= start:
            return name, controls
        return self._controls_for(floor, ())

    def _controls_for(self, risk: float, pins: tuple[str, ...]) -> tuple[str, LlmControls]:
        chosen = ("default", self.controls)
        if pins:
            by_name = {b.name: b for b in self.bands}
            if self.bands and any(p not in by_name and p != "default" for p in pins):
                return self.bands[-1].name, self.bands[-1].controls
            known = [by_name[p] for p in pins if p in by_name]
            if known:
                band = max(known, key=lambda b: b.from_risk)
                return band.name, band.controls
            return chosen
        for band in self.bands:
            if risk >= band.from_risk:
                chosen = (band.name, band.controls)
        return chosen

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value.startswith(LOCAL_PREFIX):
            if not value[len(LOCAL_PREFIX):].strip():
                raise ValueError("upstream local: needs a model folder, e.g. local:models/gpt2")
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError("upstream must be an http:// or https:// URL, or local:PATH")
        problem = _base_url_problem(value)
        if problem is not None:
            raise ValueError(f"upstream URL {problem}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_upstream_credential(self) -> LlmModel:
        if self.api_key_file is not None and _has_userinfo(self.upstream):
            raise ValueError(
                f"model {self.name!r}: the upstream URL's user:password and api_key_file "
                "would both be the upstream's Authorization; keep one")
        return self

    @property
    def local_path(self) -> Path | None:
        """The model folder of a `local:PATH` upstream; None for an HTTP upstream."""
        if not self.upstream.startswith(LOCAL_PREFIX):
            return None
        return Path(self.upstream[len(LOCAL_PREFIX):])

    @property
    def target_model(self) -> str:
        return self.upstream_model or self.name

    def api_key(self) -> str | None:
        if self.api_key_file is None:
            return None
        return self.api_key_file.read_text().strip() or None


def _base_url_problem(url: str) -> str | None:
    """Why `url` cannot be an upstream's base URL, or None. Both HTTP clients of the LLM
    upstreams (the lean one and aiohttp) append the API's paths to it as text, so a query or
    fragment would swallow them; a URL is refused when loaded, not at its first request.
    The answer never quotes the URL: it may carry a password."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "has a space or control character (percent-encode it)"
    if "?" in url:
        return "has a query (?...): the API's paths are appended to the URL"
    if "#" in url:
        return "has a fragment (#...): the API's paths are appended to the URL"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return ("has an unreadable host or port (a port is 1-65535; an IPv6 address goes "
                "in brackets: http://[::1]:8000/v1)")
    after_bracket = parts.netloc.rpartition("@")[2].partition("]")[2]
    if after_bracket and not after_bracket.startswith(":"):
        return "has text after its IPv6 address's ] other than :port"
    if not host:
        return "has no host, e.g. http://host:8000/v1"
    if not host.isascii():
        return "has a host name that is not ASCII (write it as its xn-- name)"
    if port == 0:
        return "has port 0"
    return None


def _has_userinfo(url: str) -> bool:
    try:
        return urlsplit(url).username is not None
    except ValueError:
        return False


class LlmHalfLives(Strict):
    """How long each kind of evidence lasts: matched to the attack it shows, not one hour.

    A patient prober spreads its probes over hours, so probes are kept for days; screener
    hits are the noisiest evidence (a share of honest prompts), so they fade within hours;
    volume is compared over about a quota period (a day).
    """

    leak: float = Field(86_400.0, gt=0, description="blocked system-prompt leaks (s)")
    screen: float = Field(21_600.0, gt=0, description="prompts screened as extraction or "
                          "injection (s)")
    probe: float = Field(172_800.0, gt=0, description="requests for logprobs, logit_bias, "
                         "echo, n or best_of beyond the caller's band, refused or clamped "
                         "(s): a patient prober spreads them over hours")
    clamp: float = Field(86_400.0, gt=0, description="max_tokens over the cap (s)")
    volume: float = Field(86_400.0, gt=0, description="tokens, compared with the peers' (s)")
    distill: float = Field(86_400.0, gt=0, description="distillation-test evidence (s)")


class LlmMonitorSettings(Strict):
    """How LLM callers' extraction risk is scored (see `llm/risk.py`); feeds `context.risk`,
    the risk-weighted rate limits and the control bands."""

    enabled: bool = True
    half_life_s: float | None = Field(None, gt=0, description="if set, every kind of "
                                      "evidence halves in this time (overrides half_lives)")
    half_lives: LlmHalfLives = Field(default_factory=LlmHalfLives)
    alert_at: float = Field(0.5, gt=0, le=1, description="risk that raises an alert")
    leak: float = Field(0.6, ge=0, le=1, description="weight of a system-prompt leak")
    extraction: float = Field(0.35, ge=0, le=1,
                              description="weight of a prompt screened as extraction (x score)")
    injection: float = Field(0.2, ge=0, le=1,
                             description="weight of a prompt screened as injection (x score)")
    probe: float = Field(0.1, ge=0, le=1, description="weight of a probe of the output layer: "
                         "logprobs, top_logprobs, logit_bias or echo beyond the caller's band, "
                         "refused or clamped")
    sampling: float = Field(0.05, ge=0, le=1, description="weight of n or best_of over the cap "
                            "(clamped or refused): half a probe; honest clients compare drafts")
    clamp: float = Field(0.05, ge=0, le=1, description="the most that max_tokens over the "
                         "cap adds: honest SDKs send it on every request, so it can never "
                         "alone reach a band, only tip a caller with other evidence")
    volume: float = Field(0.5, ge=0, le=1, description="weight of token volume 100x the peers'")
    distill: float = Field(0.6, ge=0, le=1, description="weight of a window of prompts the "
                           "distillation test finds unlike the model's benign traffic "
                           "(x its evidence)")
    screen_rate: float = Field(0.004, ge=0, le=1, description="share of honest prompts the "
                               "screeners flag (measured: 0.4%); a subject's expected share "
                               "of hits is not evidence")
    probe_rate: float = Field(0.001, ge=0, le=1, description="share of honest requests that "
                              "probe the output layer (logprobs, logit_bias, echo)")
    sampling_rate: float = Field(0.1, ge=0, le=1, description="share of honest requests that "
                                 "ask for n or best_of over the cap (a heavy user comparing "
                                 "drafts does on about one in ten)")
    false_alarm: float = Field(1e-4, gt=0, lt=1, description="chance that an honest "
                               "subject's screener hits or probes exceed their allowance at one "
                               "request (the allowance is this upper quantile of a Poisson "
                               "count at the background rate times the subject's decayed "
                               "requests); checked on every request, so kept small")
    tenant_allowance: float = Field(1.0, ge=0, description="events of each kind a tenant may "
                                    "show beyond its background, its member with the most "
                                    "left out, before they count: two members' mistakes are "
                                    "not the tenant's behaviour")
    min_peers: int = Field(3, ge=1, description="peers needed before volume counts")
    peer_min_requests: int = Field(5, ge=1, description="requests a principal needs to be a "
                                   "peer for the volume median: a flood of keys used once (a "
                                   "thief's key per attempt) must not make regular users look "
                                   "heavy")
    max_subjects: int = Field(100_000, ge=10, description="principals and tenants kept per "
                              "model (least recently seen dropped)")
    shared: str | None = Field(None, description="redis://HOST:PORT/DB: replicas share the "
                               "evidence and a restart replays it; without it each gateway "
                               "process keeps its own, and loses it when it stops")
    key: str = Field("modelfence:llm-risk", pattern=r"^[A-Za-z0-9:_.\-]{1,64}$",
                     description="the Redis stream's key")
    stream_max: int = Field(100_000, ge=1000, description="observations kept in the stream")

    @field_validator("shared")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        return redis_url(value, "llm.monitor.shared")


class LlmSettings(Strict):
    models: list[LlmModel] = Field(default_factory=list)
    monitor: LlmMonitorSettings = Field(default_factory=LlmMonitorSettings)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="request body limit on /v1")
    max_connections: int = Field(100, ge=1, description="pooled upstream connections")

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[LlmModel]) -> list[LlmModel]:
        unique_names((m.name for m in models), "LLM model")
        return models

"""Typed settings for modelfence.yaml — the only module that reads environment variables.

A bad file fails at start with one line naming the file, the key and the reason
(``modelfence.yaml: models[0].backend.path: field required``), never a traceback.
String values may reference environment variables as ``${NAME}`` (for database
passwords); relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigurationError
from .llm.settings import LOCAL_PREFIX, LlmModel, LlmSettings
from .validators import redis_url, unique_names
from .watermark.settings import WatermarkSettings

CONFIG_ENV = "MODELFENCE_CONFIG"
SECRET_ENV = "MODELFENCE_SECRET"  # noqa: S105 (a variable name, not a secret)
ADMIN_TOKEN_ENV = "MODELFENCE_ADMIN_TOKEN"  # noqa: S105
DATA_DIR_ENV = "MODELFENCE_HOME"
KEY_ENV = "MODELFENCE_KEY"
ADMIN_FD_ENV = "MODELFENCE_ADMIN_FD"
ADMIN_LISTEN_ENV = "MODELFENCE_ADMIN_LISTEN"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
#: OIP parameters that steer the upstream's decoding or its response headers (MLServer
#: crashes on a `content_type` that does not fit the tensor): only the operator sets them.
NEVER_FORWARDED = frozenset({"content_type", "headers"})
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body")
    # slow or stalled callers: how long a request may take to arrive (408 beyond)
    header_timeout_s: float = Field(10.0, gt=0, le=300, description="request head must "
                                    "arrive within this (granian's header_read_timeout)")
    body_timeout_s: float = Field(10.0, gt=0, le=3600, description="whole body must arrive "
                                  "within this of the request's start")
    body_gap_timeout_s: float = Field(5.0, gt=0, le=3600, description="longest pause between "
                                      "two parts of a body")
    # connection limits (per worker where it says so); none of them is shared between workers
    backlog: int = Field(2048, ge=128, le=65535, description="connections the kernel queues "
                         "before the gateway accepts them")
    backpressure: int | None = Field(None, ge=1, description="most requests one worker "
                                     "serves at once, more wait in the backlog; null: "
                                     "backlog / workers (granian's rule)")
    max_inflight_per_principal: int = Field(64, ge=0, description="requests one principal may "
                                            "have in flight per worker (429 beyond); 0: no cap")
    max_inflight_per_tenant: int = Field(256, ge=0, description="requests one tenant may "
                                         "have in flight per worker (429 beyond); 0: no cap")
    access_log: bool = False
    trusted_proxies: list[str] = Field(
        default_factory=list, description="CIDRs of load balancers whose X-Forwarded-For "
        "is believed for the caller's address")
    admin_listen: str | None = Field(
        "127.0.0.1:9090", description="the admin API, /admin/ready and /metrics listen here "
        "(HOST:PORT or unix:/PATH), never on the public port; null: not served")

    @field_validator("admin_listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            listen_address(v)
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        import ipaddress

        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a CIDR network") from None
        return v


_MIN_ADMIN_TOKEN = 24  # characters of an admin token read from a file or variable
ADMIN_SCOPES = ("keys:read", "keys:write", "policy:read", "policy:write", "risk:read",
                "alerts:read")


def listen_address(text: str) -> tuple[str, int] | Path:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) or `unix:/absolute/path`."""
    if text.startswith("unix:"):
        path = Path(text.removeprefix("unix:"))
        if not path.is_absolute():
            raise ValueError("a unix socket needs an absolute path: "
                             "unix:/run/modelfence/admin.sock")
        return path
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT or unix:/PATH")
    return host, int(port)


class _AdminGrant(_Strict):
    """What a scoped admin (a named token or OIDC) may hand out: a key it mints covers no
    more models and tenants, and carries no groups or attributes, than listed here. `*`
    allows all. A credential limited to some models names its tenants too, so that it
    cannot mint a key for another tenant's principal; groups and attributes (which policy
    may grant on) are none unless listed."""

    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1,
                              description="models its keys, risk and alerts may cover; * all")
    tenants: list[str] | None = Field(None, min_length=1, description="tenants its keys may "
                                      "name and it may list and revoke keys of; * all; "
                                      "default * only when models is *, else required")
    groups: list[str] = Field(default_factory=list, description="groups its keys may carry; "
                              "* any; default none")
    attributes: list[str] = Field(default_factory=list, description="attribute names its "
                                  "keys may carry (clearance, purpose, ...); * any; default "
                                  "none")

    @model_validator(mode="after")
    def _tenants_named(self) -> _AdminGrant:
        if self.tenants is None and "*" not in self.models:
            raise ValueError("an admin limited to some models must list the tenants its keys "
                             'may name (tenants: [...], or ["*"] for every tenant)')
        return self

    def allowed_tenants(self) -> list[str]:
        return self.tenants if self.tenants is not None else ["*"]


class AdminCredential(_AdminGrant):
    """A named admin token limited to some scopes, models, tenants, groups and attributes.

    The token is given as exactly one of: a file, an environment variable's name, or the
    SHA-256 (hex) of the token, so that the config file never holds the token itself."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")
    token_file: Path | None = None
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    scopes: list[Literal[ADMIN_SCOPES]] = Field(min_length=1)  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _one_source(self) -> AdminCredential:
        given = [s for s in (self.token_file, self.token_env, self.token_sha256) if s is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of token_file, token_env or token_sha256")
        return self


class AdminOidc(_AdminGrant):
    """Admins by OIDC: a JWT of identity.jwt whose groups claim names `group`."""

    group: str = Field(min_length=1)
    scopes: list[Literal[ADMIN_SCOPES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(ADMIN_SCOPES), min_length=1)


class AdminSettings(_Strict):
    """Admin credentials: the full-power token (token_file or MODELFENCE_ADMIN_TOKEN), named
    scoped tokens, and OIDC admins. The admin API answers 403 when none is configured."""

    token_file: Path | None = None
    tokens: list[AdminCredential] = Field(default_factory=list)
    oidc: AdminOidc | None = None
    failed_logins: str = Field("10/minute", description="failed admin logins allowed per "
                               "client address (per worker) before 429")

    @field_validator("failed_logins")
    @classmethod
    def _rate(cls, v: str) -> str:
        from limits import parse_many

        try:
            parse_many(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a rate like '10/minute'") from None
        return v

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, v: list[AdminCredential]) -> list[AdminCredential]:
        unique_names((c.name for c in v), "admin token")
        return v


class StoreSettings(_Strict):
    keys: str = "sqlite:///modelfence-keys.db"


class AuditRetention(_Strict):
    """`modelfence audit seal` / `prune`: archive old records in signed segments, then drop them."""

    archive_dir: Path = Field(Path("audit-archive"), description="where sealed segments "
                              "(compressed records and signed manifests) are written")
    segment_records: int = Field(100_000, ge=1, le=100_000_000,
                                 description="most records per sealed segment")


class AuditSettings(_Strict):
    """The audit log. sqlite:/// and postgresql:// are hash-chained and verifiable.

    `durability: strict` answers a write after its batch committed (or, while the store is
    away, was fsync'd to `spill_dir`); `batched` queues it and may lose up to
    `queue_max + batch_max` records (about `flush_interval_ms` worth) on a crash.
    `checkpoint_key_file` is an Ed25519 private key (`modelfence audit keygen`); without it
    the newest records could be removed undetected.
    """

    sink: str = Field("sqlite:///audit.db", description="sqlite:///PATH, postgresql://..., "
                      "log://, jsonl:///PATH or none://")
    durability: Literal["strict", "batched"] = "batched"
    batch_max: int = Field(512, ge=1, le=100_000, description="most records per commit")
    flush_interval_ms: float = Field(10.0, ge=0, le=10_000,
                                     description="batched: longest wait for a batch to fill")
    queue_max: int = Field(10_000, ge=1, le=10_000_000,
                           description="records waiting to be written; writers wait when full")
    checkpoint_every: int = Field(1000, ge=1, description="sign the head every N records")
    checkpoint_interval_s: float = Field(60.0, gt=0, le=86_400,
                                         description="and at least this often while writing")
    checkpoint_key_file: Path | None = None
    record_inputs: bool = False
    spill_dir: Path = Field(Path("audit-spill"), description="where batches the store cannot "
                            "take wait, on local disk, to be replayed in order")
    spill_max_bytes: int = Field(256 * 1024 * 1024, ge=0, description="spill size at which "
                                 "calls are refused (503) until the store answers again")
    disabled_acknowledged: bool = Field(False, description="run with sink none:// (no audit "
                                        "trail at all)")
    retention: AuditRetention = AuditRetention()

    @model_validator(mode="after")
    def _none_is_acknowledged(self) -> AuditSettings:
        if self.sink in ("none://", "none") and not self.disabled_acknowledged:
            raise ValueError("sink none:// records no call at all; set "
                             "audit.disabled_acknowledged: true to run without an audit trail")
        return self


class TensorSpec(_Strict):
    name: str
    datatype: Literal[DATATYPES]  # type: ignore[valid-type]
    shape: list[int]

    @field_validator("shape")
    @classmethod
    def _shape_ok(cls, v: list[int]) -> list[int]:
        if not v or any(d < -1 or d == 0 for d in v):
            raise ValueError("shape needs one or more dimensions, each positive or -1")
        return v


class InputLimits(_Strict):
    max_batch: int = Field(1024, ge=1)
    max_elements: int = Field(1_000_000, ge=1)
    max_body_bytes: int | None = Field(None, ge=1024)
    allow_nonfinite: bool = False
    max_abs_value: float | None = Field(
        1e30, gt=0, description="largest magnitude of a numeric input value (400 beyond); "
        "keeps float32 sums finite in the model; null turns the check off")


class ArtifactSignature(_Strict):
    """A valid OpenSSF model-signing signature, chaining to this key or certificate chain."""

    public_key: Path | None = None
    certificate_chain: list[Path] = Field(default_factory=list)
    file: Path | None = Field(None, description="the signature; default: <model file>.sig")

    @model_validator(mode="after")
    def _one_anchor(self) -> ArtifactSignature:
        if (self.public_key is None) == (not self.certificate_chain):
            raise ValueError("give public_key or certificate_chain (one of them)")
        return self


class ArtifactDecryption(_Strict):
    """The key-encryption key of an encrypted model file: a keyring file or a PKCS#11 token."""

    keyring: Path | None = None
    key_id: str | None = None
    pkcs11_module: Path | None = None
    token_label: str | None = None
    key_label: str | None = None
    pin_file: Path | None = None

    @model_validator(mode="after")
    def _one_provider(self) -> ArtifactDecryption:
        token = (self.pkcs11_module, self.token_label, self.key_label, self.pin_file)
        if self.keyring is None and not all(token):
            raise ValueError("give keyring, or pkcs11_module, token_label, key_label and "
                             "pin_file")
        if self.keyring is not None and any(token):
            raise ValueError("give keyring or a PKCS#11 token, not both")
        return self


class ArtifactChecks(_Strict):
    """What a model file must pass before it is loaded; a model failing them is not served."""

    signature: ArtifactSignature | None = None
    scan: bool = Field(True, description="scan pickle-based files (picklescan, modelscan)")
    decrypt: ArtifactDecryption | None = None


class LocalBackend(_Strict):
    """A model file served in-process: skops (scikit-learn), ONNX, or — only if allowed — pickle."""

    type: Literal["skops", "onnx", "pickle"]
    path: Path
    trusted_types: list[str] = Field(default_factory=list, description="extra skops types to trust")
    allow_unsafe_pickle: bool = False
    artifact: ArtifactChecks | None = None

    @model_validator(mode="after")
    def _pickle_needs_consent(self) -> LocalBackend:
        if self.type == "pickle" and not self.allow_unsafe_pickle:
            raise ValueError(
                "pickle runs arbitrary code when loaded; convert the model to skops or ONNX, "
                "or set allow_unsafe_pickle: true if you trust this file"
            )
        return self


class OipUpstreamBackend(_Strict):
    """A model on an Open Inference Protocol v2 server (KServe, Triton, MLServer)."""

    type: Literal["oip"]
    url: str = Field(pattern=r"^https?://")
    upstream_model: str | None = None
    timeout_s: float = Field(10.0, gt=0, le=600)
    connect_timeout_s: float = Field(2.0, gt=0, le=60)
    max_connections: int = Field(100, ge=1, le=10_000)
    probabilities_output: str | None = Field(
        None, description="upstream output holding [n, classes] probabilities; when set, the "
        "answer is reshaped into modelfence's classifier contract (probabilities, label)")
    forward_parameters: list[str] = Field(
        default_factory=list, description="names of client `parameters` (request-level and "
        "per-input) passed to the upstream when their value is a short string, a number or a "
        "boolean; every other parameter is dropped, and the client's `id` is never sent")

    @field_validator("forward_parameters")
    @classmethod
    def _safe_forwarding(cls, v: list[str]) -> list[str]:
        refused = sorted(set(v) & NEVER_FORWARDED)
        if refused:
            raise ValueError(f"{', '.join(refused)} cannot be forwarded from clients: it "
                             "decides how the upstream decodes a tensor the gateway has "
                             "validated or what headers it answers with; set it in the "
                             "upstream's own model settings")
        return v


BackendSettings = Annotated[LocalBackend | OipUpstreamBackend, Field(discriminator="type")]


class ModelAttributes(_Strict):
    """What policies know about a model (`resource.owner`, `resource.sensitivity`, ...)."""

    owner: str = ""
    sensitivity: int = Field(0, ge=0, le=1000)
    tags: list[str] = Field(default_factory=list)


class ModelMonitor(_Strict):
    """The extraction monitor for one model: its data summary (`modelfence monitor fit`)."""

    summary: Path
    detectors: list[str] | None = Field(
        None, description="detectors on for this model; default: the monitor's list")


class ShapingBand(_Strict):
    """From risk `from_risk` upwards (until the next band), answers are shaped by `defense`."""

    from_risk: float = Field(ge=0.0, le=1.0)
    defense: str = Field(description="none, round:D, topk:K, labels, rsig:B,G, noise:S, "
                         "misinfo[:TAU]; several joined with '+' apply left to right")
    name: str | None = Field(None, description="the band's name in audit records and policies; "
                             "default: the defense text")


class ModelSettings(_Strict):
    name: str = Field(pattern=_MODEL_NAME)
    backend: BackendSettings
    input: TensorSpec | None = None
    labels: list[str] | None = None
    limits: InputLimits = InputLimits()
    attributes: ModelAttributes = ModelAttributes()
    monitor: ModelMonitor | None = None
    shaping: list[ShapingBand] = Field(
        default_factory=list, description="output shaping per risk band; none: answers as is")
    reveal_band: bool = Field(
        False, description="name the caller's band in answers (parameters.shaping) and in "
        "refusals; off, only the audit record and the admin API show it")

    @field_validator("shaping")
    @classmethod
    def _bands(cls, v: list[ShapingBand]) -> list[ShapingBand]:
        starts = [b.from_risk for b in v]
        if v and (starts[0] != 0.0 or starts != sorted(set(starts))):
            raise ValueError("shaping bands need from_risk values rising strictly, "
                             "the first one 0.0")
        names = [b.name or b.defense for b in v]
        if len(set(names)) != len(names):
            raise ValueError("shaping band names must be unique (set name: on repeats)")
        return v


class PolicySettings(_Strict):
    """Cedar policy files; none listed means the shipped default (a key's own grants)."""

    files: list[Path] = Field(default_factory=list)
    schema_file: Path | None = Field(None, description="Cedar schema; default: the shipped one")
    state_dir: Path | None = Field(
        None, description="where the last good policy set is kept for worker restarts")


ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")


class JwtSettings(_Strict):
    """OIDC/JWT bearer tokens verified against a JWKS (URL or file) and mapped to a principal.

    Only asymmetric algorithms: an HMAC secret would have to be shared with every verifier,
    and accepting HMAC at all opens key confusion (a public key used as the secret).
    """

    issuer: str = Field(min_length=1, description="the exact `iss` every token must carry")
    audiences: list[str] = Field(min_length=1, description="a token's `aud` must name one")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"],
                                  min_length=1)
    jwks_url: str | None = Field(None, pattern=r"^https?://")
    jwks_file: Path | None = None
    jwks_timeout_s: float = Field(5.0, gt=0, le=60)
    jwks_min_refresh_s: float = Field(
        60.0, ge=1, le=86400, description="least time between refetches for an unknown kid")
    jwks_max_age_s: float = Field(
        3600.0, ge=0, description="refetch in the background this often (0: only on unknown kid)")
    jwks_max_stale_s: float = Field(
        86400.0, gt=0, description="while the JWKS cannot be fetched, the last keys verify "
        "tokens for at most this long after the last good fetch; then every JWT is refused "
        "with 503 until the JWKS answers again")
    leeway_s: float = Field(30.0, ge=0, le=300, description="clock skew allowed on exp/nbf/iat")
    principal_claim: str = "sub"
    tenant_claim: str | None = None
    tenant: str | None = Field(None, description="one fixed tenant, instead of tenant_claim")
    groups_claim: str | None = "groups"
    models_claim: str | None = Field("models", description="a list, or a space-separated string")
    models_prefix: str = Field("", description="keep only entries with this prefix, stripped "
                               "(e.g. 'model:' in a scope claim)")
    attributes: dict[str, str] = Field(default_factory=dict,
                                       description="principal attribute -> claim name")

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(f"{', '.join(bad)} not allowed; only asymmetric algorithms: "
                             f"{', '.join(ASYMMETRIC_ALGORITHMS)}")
        return v

    @field_validator("jwks_url")
    @classmethod
    def _https_unless_loopback(cls, v: str | None) -> str | None:
        if v and v.startswith("http://"):  # a MITM could hand out its own keys
            host = urlsplit(v).hostname or ""
            if host not in ("localhost", "::1") and not host.startswith("127."):
                raise ValueError("use https:// (plain http only for loopback addresses)")
        return v

    @model_validator(mode="after")
    def _one_source_one_tenant(self) -> JwtSettings:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url or jwks_file")
        if (self.tenant_claim is None) == (self.tenant is None):
            raise ValueError("give exactly one of tenant_claim (the claim naming the tenant) "
                             "or tenant (one fixed tenant)")
        return self


class IdentitySettings(_Strict):
    """Which bearer credentials the gateway accepts: API keys, OIDC/JWT tokens, or both."""

    api_keys: bool = True
    jwt: JwtSettings | None = None

    @model_validator(mode="after")
    def _something_accepted(self) -> IdentitySettings:
        if not self.api_keys and self.jwt is None:
            raise ValueError("api_keys is off and jwt is not configured: no caller could "
                             "authenticate")
        return self


class RateLimit(_Strict):
    """One limit, e.g. `100/minute` per principal; `models` narrows it to some models."""

    scope: Literal["principal", "tenant", "model"]
    rate: str = Field(description="limits syntax: '100/minute', '10/second;1000/hour'")
    models: list[str] = Field(default_factory=list, description="empty: every model")

    @field_validator("rate")
    @classmethod
    def _parse(cls, v: str) -> str:
        from limits import parse_many

        try:
            parse_many(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a rate like '100/minute' or '10/second;1000/hour'"
                             ) from None
        return v


class Budget(_Strict):
    """A hard cap per principal and model and period: queries (requests), input rows, and
    for LLMs tokens (prompt and completion)."""

    models: list[str] = Field(default_factory=list, description="empty: every model")
    queries: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    tokens: int | None = Field(None, ge=1, description="LLM models: tokens per period")
    period: Literal["day", "week", "month", "total"] = "month"
    alert_at: float = Field(0.8, gt=0, le=1, description="share that raises an alert")

    @model_validator(mode="after")
    def _some_cap(self) -> Budget:
        if self.queries is None and self.rows is None and self.tokens is None:
            raise ValueError("a budget needs queries, rows, tokens or some of them")
        return self


class QuotaSettings(_Strict):
    """Rate limits (the `limits` library) and extraction budgets.

    `risk_curve` maps the caller's risk score to a cost per request: at cost 4 a caller
    gets a quarter of its rate. Points are (risk, cost), linearly interpolated.
    """

    storage: str = Field("memory://", description="memory:// or redis://HOST:PORT/DB")
    strategy: Literal["moving-window", "fixed-window", "sliding-window-counter"] = (
        "moving-window")
    fail_open: bool = Field(False, description="rate limits only: allow when storage is down")
    limits: list[RateLimit] = Field(default_factory=list)
    risk_curve: list[tuple[float, float]] = Field(
        default_factory=lambda: [(0.0, 1.0), (0.5, 1.0), (0.8, 4.0), (1.0, 10.0)])
    budget_store: str = Field("sqlite:///budgets.db", description="sqlite:/// or postgresql://")
    budgets: list[Budget] = Field(default_factory=list)

    @field_validator("risk_curve")
    @classmethod
    def _curve(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        risks = [r for r, _ in v]
        if not v or risks != sorted(risks) or any(not 0 <= r <= 1 for r in risks):
            raise ValueError("risk_curve needs (risk, cost) points with risk rising in [0, 1]")
        if any(c < 1 for _, c in v):
            raise ValueError("risk_curve costs must be >= 1 (a cost below 1 would raise a limit)")
        return v


class WebhookSettings(_Strict):
    """Alerts are POSTed here as JSON, signed with HMAC-SHA256 when a secret file is given."""

    url: str = Field(pattern=r"^https?://")
    secret_file: Path | None = None
    timeout_s: float = Field(5.0, gt=0, le=60)


class MonitorSettings(_Strict):
    """The extraction monitor. On for every model that names a `monitor.summary`.

    `shared` (redis://) makes every replica see every observation, in one order, and keeps
    snapshots there; without it the state lives in this process and is saved under
    `state_dir` on stop and every `snapshot_interval_s`.
    """

    threshold: float = Field(0.5, gt=0.0, le=1.0, description="risk at which a caller's "
                             "episode starts: it is flagged and one alert raised")
    release: float | None = Field(
        None, ge=0.0, lt=1.0, description="an episode ends only when the risk is below this "
        "(default 0.6 x threshold) ...")
    min_dwell_s: float = Field(600.0, ge=0.0, description="... and at least this long after "
                               "it started ...")
    hold_s: float = Field(86_400.0, ge=0.0, description="... and this long after the sticky "
                          "detectors alone last reached the threshold (synthetic queries)")
    sticky: list[str] = Field(
        default_factory=lambda: ["ood", "prada", "synthetic", "naturalness", "flips"],
        description="detectors whose evidence is of synthetic queries; unknown names ignored")
    detectors: list[str] = Field(
        default_factory=lambda: ["prada", "boundary", "synthetic", "flips", "ood", "coverage",
                                 "volume"])
    max_principals: int = Field(10_000, ge=1, description="callers kept per model (LRU)")
    shared: str | None = Field(None, description="redis://HOST:PORT/DB shared by replicas")
    key_prefix: str = Field("modelfence:monitor:", pattern=r"^[A-Za-z0-9:_.\-]{1,64}$",
                            description="Redis keys start with this (one per deployment)")
    state_dir: Path | None = Field(None, description="snapshots without a shared store")
    snapshot_interval_s: float = Field(10.0, gt=0, le=3600)
    stream_max: int = Field(100_000, ge=1000, description="observations kept in the shared "
                            "stream between snapshots")
    queue_max: int = Field(10_000, ge=1, description="observations waiting; beyond it they "
                           "are taken on the request's own time")
    webhook: WebhookSettings | None = None

    @field_validator("shared")
    @classmethod
    def _redis(cls, v: str | None) -> str | None:
        return redis_url(v, "monitor.shared")

    @model_validator(mode="after")
    def _release(self) -> MonitorSettings:
        if self.release is not None and self.release >= self.threshold:
            raise ValueError(f"monitor.release ({self.release}) must be below the threshold "
                             f"({self.threshold})")
        return self


class Settings(_Strict):
    server: ServerSettings = ServerSettings()
    secret_file: Path | None = Field(None, description="server secret for key digests")
    admin: AdminSettings = AdminSettings()
    stores: StoreSettings = StoreSettings()
    key_cache_ttl_s: float = Field(
        0.5, ge=0, le=60, description="how long a key lookup is reused: bounds how long a key "
        "revoked through another replica still works")
    identity: IdentitySettings = IdentitySettings()
    audit: AuditSettings = AuditSettings()
    policy: PolicySettings = PolicySettings()
    quotas: QuotaSettings = QuotaSettings()
    monitor: MonitorSettings = MonitorSettings()
    watermark: WatermarkSettings | None = None
    models: list[ModelSettings] = Field(default_factory=list)
    llm: LlmSettings = Field(default_factory=LlmSettings, description="OpenAI-compatible "
                             "models served on /v1")

    @field_validator("models")
    @classmethod
    def _unique_names(cls, v: list[ModelSettings]) -> list[ModelSettings]:
        unique_names((m.name for m in v), "model")
        return v

    @model_validator(mode="after")
    def _oidc_admins_need_jwt(self) -> Settings:
        if self.admin.oidc is not None and self.identity.jwt is None:
            raise ValueError("admin.oidc needs identity.jwt (the identity provider whose "
                             "tokens name the admin group)")
        if self.admin.oidc is not None and not (self.identity.jwt and
                                                self.identity.jwt.groups_claim):
            raise ValueError("admin.oidc needs identity.jwt.groups_claim (the claim that "
                             "names the admin group)")
        return self

    def model(self, name: str) -> ModelSettings | None:
        return next((m for m in self.models if m.name == name), None)

    # Secrets are read here, at start, and never stored on the settings object.
    def server_secret(self) -> bytes:
        env = os.environ.get(SECRET_ENV)
        if env:
            return _secret_bytes(env, SECRET_ENV)
        if self.secret_file is None:
            raise ConfigurationError(
                f"no server secret: set {SECRET_ENV} or secret_file in the config"
            )
        return _secret_bytes(_read_secret_file(self.secret_file), str(self.secret_file))

    def admin_token(self) -> str | None:
        """The full-power admin token; like a scoped one it needs 24 characters or more."""
        env = os.environ.get(ADMIN_TOKEN_ENV)
        if env:
            token, where = env.strip(), ADMIN_TOKEN_ENV
        elif self.admin.token_file is None:
            return None
        else:
            token, where = _read_secret_file(self.admin.token_file), str(self.admin.token_file)
        if len(token) < _MIN_ADMIN_TOKEN:
            raise ConfigurationError(f"{where}: the admin token needs {_MIN_ADMIN_TOKEN} "
                                     f"characters or more (it has {len(token)})")
        return token

    def admin_token_sha256s(self) -> list[tuple[AdminCredential, str]]:
        """Each scoped admin token's SHA-256 (hex), read from its file or variable at start."""
        out = []
        for cred in self.admin.tokens:
            if cred.token_sha256 is not None:
                out.append((cred, cred.token_sha256))
                continue
            if cred.token_env is not None:
                token = os.environ.get(cred.token_env, "").strip()
                where = f"admin.tokens {cred.name}: environment variable {cred.token_env}"
                if not token:
                    raise ConfigurationError(f"{where} is not set")
            else:
                assert cred.token_file is not None
                token = _read_secret_file(cred.token_file)
                where = f"admin.tokens {cred.name}: {cred.token_file}"
            if len(token) < _MIN_ADMIN_TOKEN:
                raise ConfigurationError(f"{where}: an admin token needs {_MIN_ADMIN_TOKEN} "
                                         "characters or more")
            out.append((cred, hashlib.sha256(token.encode()).hexdigest()))
        return out

    def webhook_secret(self) -> bytes | None:
        hook = self.monitor.webhook
        if hook is None or hook.secret_file is None:
            return None
        return _secret_bytes(_read_secret_file(hook.secret_file), str(hook.secret_file))


def read_secret(path: Path) -> str:
    """A secret from a file (a PKCS#11 PIN, ...): read at start, never kept on settings."""
    return _read_secret_file(path)


def _read_secret_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read secret file: {exc.strerror}") from None


def _secret_bytes(value: str, where: str) -> bytes:
    raw = value.strip().encode()
    if len(raw) < 32:
        raise ConfigurationError(f"{where}: server secret must be at least 32 characters")
    return raw


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV, "modelfence.yaml"))


def export_config_path(path: Path) -> None:
    """Hand the config path to server worker processes, which read it in `default_config_path`."""
    os.environ[CONFIG_ENV] = str(path.resolve())


def export_admin_listen(address: str) -> None:
    """`serve --admin-listen` (and the demo's admin port), handed to the worker processes."""
    try:
        listen_address(address)
    except ValueError as exc:
        raise ConfigurationError(f"--admin-listen: {exc}") from None
    os.environ[ADMIN_LISTEN_ENV] = address


def admin_listen_override(settings: Settings) -> Settings:
    """The settings with the exported admin address, if one was exported."""
    address = os.environ.get(ADMIN_LISTEN_ENV)
    if not address:
        return settings
    server = settings.server.model_copy(update={"admin_listen": address})
    return settings.model_copy(update={"server": server})


def export_admin_socket(fd: int) -> None:
    """Hand the admin unix socket bound before the workers fork to each of them."""
    os.environ[ADMIN_FD_ENV] = str(fd)


def inherited_admin_socket() -> int | None:
    text = os.environ.get(ADMIN_FD_ENV, "")
    return int(text) if text.isdigit() else None


def export_metrics_dir(path: Path | None) -> None:
    """Workers of one server share metrics through this folder (prometheus_client's
    multiprocess mode reads the variable); None: each process keeps its own."""
    if path is None:
        os.environ.pop(METRICS_DIR_ENV, None)
    else:
        os.environ[METRICS_DIR_ENV] = str(path)


def metrics_dir() -> Path | None:
    text = os.environ.get(METRICS_DIR_ENV)
    return Path(text) if text else None


def default_home() -> Path:
    """Where `modelfence demo` keeps its model, config, keys and secret."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path.home() / ".modelfence"


def load_settings(path: Path | str) -> Settings:
    """Read, expand and validate a config file; every failure is one ConfigurationError line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigurationError(f"{where}: YAML syntax error: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{path}: top level must be a mapping of settings")
    return settings_from_mapping(raw, source=str(path), base_dir=path.parent)


def settings_from_mapping(
    raw: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> Settings:
    expanded = _expand_env(dict(raw), source, ())
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _dotted(err["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigurationError(f"{source}: {key}: {_reason(err)}{more}") from None
    return _resolve_paths(settings, base_dir) if base_dir is not None else settings


def _reason(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"])
    if err.get("type") == "extra_forbidden":
        return "unknown key (check its spelling)"
    return msg[0].lower() + msg[1:] if msg else "invalid value"


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("LocalBackend", "OipUpstreamBackend") or str(part) in (
            "skops", "onnx", "pickle", "oip"):
            continue  # pydantic's union tags are noise to a user
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _expand_env(value: Any, source: str, loc: tuple[Any, ...]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigurationError(
                    f"{source}: {_dotted(loc)}: environment variable {name} is not set")
            return os.environ[name]
        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, source, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, source, (*loc, i)) for i, v in enumerate(value)]
    return value


def _resolve_paths(s: Settings, base: Path) -> Settings:
    def rel(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    def rel_artifact(a: ArtifactChecks | None) -> ArtifactChecks | None:
        if a is None:
            return None
        sig, dec = a.signature, a.decrypt
        return a.model_copy(update={
            "signature": sig and sig.model_copy(update={
                "public_key": rel(sig.public_key), "file": rel(sig.file),
                "certificate_chain": [rel(p) for p in sig.certificate_chain]}),
            "decrypt": dec and dec.model_copy(update={
                "keyring": rel(dec.keyring), "pkcs11_module": rel(dec.pkcs11_module),
                "pin_file": rel(dec.pin_file)})})

    def rel_llm(m: LlmModel) -> LlmModel:
        update: dict[str, Any] = {"api_key_file": rel(m.api_key_file)}
        ext = m.screening.external if m.screening is not None else None
        if m.screening is not None and ext is not None:
            update["screening"] = m.screening.model_copy(update={
                "external": ext.model_copy(update={"api_key_file": rel(ext.api_key_file)})})
        local = m.local_path
        if local is not None:
            update["upstream"] = LOCAL_PREFIX + str(rel(local))
        return m.model_copy(update=update)

    def rel_model(m: ModelSettings) -> ModelSettings:
        update: dict[str, Any] = {}
        if isinstance(m.backend, LocalBackend):
            update["backend"] = m.backend.model_copy(update={
                "path": rel(m.backend.path), "artifact": rel_artifact(m.backend.artifact)})
        if m.monitor is not None:
            update["monitor"] = m.monitor.model_copy(update={"summary": rel(m.monitor.summary)})
        return m.model_copy(update=update)

    models = [rel_model(m) for m in s.models]
    def rel_url(url: str) -> str:
        """`sqlite:///x.db` and `jsonl:///x` are relative; four slashes are absolute."""
        for scheme in ("jsonl:///", "sqlite:///"):
            if url.startswith(scheme) and not url.startswith(scheme + "/"):
                return scheme + str(rel(Path(url.removeprefix(scheme))))
        return url

    policy = s.policy.model_copy(update={
        "files": [rel(p) for p in s.policy.files],
        "schema_file": rel(s.policy.schema_file),
        "state_dir": rel(s.policy.state_dir),
    })
    identity = s.identity
    if identity.jwt is not None:
        jwt = identity.jwt.model_copy(update={"jwks_file": rel(identity.jwt.jwks_file)})
        identity = identity.model_copy(update={"jwt": jwt})
    return s.model_copy(update={
        "identity": identity,
        "policy": policy,
        "secret_file": rel(s.secret_file),
        "admin": s.admin.model_copy(update={
            "token_file": rel(s.admin.token_file),
            "tokens": [c.model_copy(update={"token_file": rel(c.token_file)})
                       for c in s.admin.tokens]}),
        "stores": s.stores.model_copy(update={"keys": rel_url(s.stores.keys)}),
        "audit": s.audit.model_copy(update={
            "sink": rel_url(s.audit.sink), "spill_dir": rel(s.audit.spill_dir),
            "checkpoint_key_file": rel(s.audit.checkpoint_key_file),
            "retention": s.audit.retention.model_copy(update={
                "archive_dir": rel(s.audit.retention.archive_dir)})}),
        "quotas": s.quotas.model_copy(update={"budget_store": rel_url(s.quotas.budget_store)}),
        "monitor": s.monitor.model_copy(update={
            "state_dir": rel(s.monitor.state_dir),
            "webhook": s.monitor.webhook and s.monitor.webhook.model_copy(
                update={"secret_file": rel(s.monitor.webhook.secret_file)})}),
        "watermark": s.watermark and s.watermark.resolved(base),
        "llm": s.llm.model_copy(update={"models": [rel_llm(m) for m in s.llm.models]}),
        "models": models,
    })

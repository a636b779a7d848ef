"""`identity:` — which bearer credentials are accepted: API keys, OIDC/JWT tokens."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from .base import ConfigPath, Strict

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")


class JwtSettings(Strict):
    """OIDC/JWT bearer tokens verified against a JWKS (URL or file) and mapped to a principal.

    Only asymmetric algorithms: an HMAC secret would have to be shared with every verifier,
    and accepting HMAC at all opens key confusion (a public key used as the secret).
    """

    issuer: str = Field(min_length=1, description="the exact `iss` every token must carry")
    audiences: list[str] = Field(min_length=1, description="a token's `aud` must name one")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"],
                                  min_length=1)
    jwks_url: str | None = Field(None, pattern=r"^https?://")
    jwks_file: ConfigPath | None = None
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


class IdentitySettings(Strict):
    """Which bearer credentials the gateway accepts: API keys, OIDC/JWT tokens, or both."""

    api_keys: bool = True
    jwt: JwtSettings | None = None

    @model_validator(mode="after")
    def _something_accepted(self) -> IdentitySettings:
        if not self.api_keys and self.jwt is None:
            raise ValueError("api_keys is off and jwt is not configured: no caller could "
                             "authenticate")
        return self

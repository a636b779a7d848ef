"""`admin:` — who may use the admin API: the full-power token, scoped tokens, OIDC admins."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import ConfigPath, Strict, checked_rate
from .validators import unique_names

#: risk:write pins a principal to a stricter band; alerts:write acknowledges and resolves;
#: audit:read searches the audit trail in the console and downloads red-team reports
ADMIN_SCOPES = ("keys:read", "keys:write", "policy:read", "policy:write", "risk:read",
                "risk:write", "alerts:read", "alerts:write", "audit:read")



class _AdminGrant(Strict):
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
    token_file: ConfigPath | None = None
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


class AdminSettings(Strict):
    """Admin credentials: the full-power token (token_file or MODELFENCE_ADMIN_TOKEN), named
    scoped tokens, and OIDC admins. The admin API answers 403 when none is configured."""

    token_file: ConfigPath | None = None
    tokens: list[AdminCredential] = Field(default_factory=list)
    oidc: AdminOidc | None = None
    failed_logins: str = Field("10/minute", description="failed admin logins allowed per "
                               "client address (per worker) before 429")

    @field_validator("failed_logins")
    @classmethod
    def _rate(cls, v: str) -> str:
        return checked_rate(v, "'10/minute'")

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, v: list[AdminCredential]) -> list[AdminCredential]:
        unique_names((c.name for c in v), "admin token")
        return v

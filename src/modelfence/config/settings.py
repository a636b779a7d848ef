"""The whole of modelfence.yaml, and the secrets it names (read at start, never kept)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigurationError
from .admin import AdminCredential, AdminSettings
from .audit import AuditSettings
from .base import ConfigPath, StoreUrl, Strict
from .console import ConsoleSettings
from .env import ADMIN_TOKEN_ENV, SECRET_ENV
from .identity import IdentitySettings
from .llm import LlmSettings
from .models import ModelSettings
from .monitor import MonitorSettings
from .policy import PolicySettings
from .privacy import PrivacySettings
from .quota import QuotaSettings
from .server import ServerSettings
from .siem import SiemSettings
from .tracing import TracingSettings
from .validators import unique_names
from .watermark import WatermarkSettings

_MIN_ADMIN_TOKEN = 24  # characters of an admin token read from a file or variable


class StoreSettings(Strict):
    keys: StoreUrl = "sqlite:///modelfence-keys.db"



class Settings(Strict):
    server: ServerSettings = ServerSettings()
    secret_file: ConfigPath | None = Field(None, description="server secret for key digests")
    admin: AdminSettings = AdminSettings()
    console: ConsoleSettings = ConsoleSettings()
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
    privacy: PrivacySettings = Field(
        default_factory=PrivacySettings,
        description="ε budgets and repeats, for models whose bands name a dp-* defense")
    models: list[ModelSettings] = Field(default_factory=list)
    llm: LlmSettings = Field(default_factory=LlmSettings, description="OpenAI-compatible "
                             "models served on /v1")
    siem: SiemSettings = Field(default_factory=SiemSettings, description="alerts as OCSF "
                               "findings to syslog and HTTP collectors")
    tracing: TracingSettings = TracingSettings()

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

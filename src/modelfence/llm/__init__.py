"""OpenAI-compatible LLM routes: proxying, output controls, token accounting.

Only the settings load eagerly: config.py imports them, and the routes import the gateway,
which imports config.py; `LlmRoutes` and the rest load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .settings import LlmAttributes, LlmControls, LlmModel, LlmSettings

if TYPE_CHECKING:
    from .routes import LlmRoutes, openai_error
    from .usage import TokenUsage

_LAZY = {"LlmRoutes": "routes", "openai_error": "routes", "TokenUsage": "usage"}

__all__ = ["LlmAttributes", "LlmControls", "LlmModel", "LlmRoutes", "LlmSettings", "TokenUsage",
           "openai_error"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)

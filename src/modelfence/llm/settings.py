"""Typed settings of the OpenAI-compatible LLM routes (`llm:` in modelfence.yaml).

They live with every other section in `modelfence.config.llm`; this module keeps the LLM
package's own name for them.
"""

from ..config.llm import (
    LOCAL_PREFIX,
    CanarySettings,
    Kind,
    LlmAttributes,
    LlmBand,
    LlmControls,
    LlmHalfLives,
    LlmModel,
    LlmMonitorSettings,
    LlmSettings,
    TextWatermarkSettings,
)

__all__ = ["LOCAL_PREFIX", "CanarySettings", "Kind", "LlmAttributes", "LlmBand", "LlmControls",
           "LlmHalfLives", "LlmModel", "LlmMonitorSettings", "LlmSettings",
           "TextWatermarkSettings"]

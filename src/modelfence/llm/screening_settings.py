"""Typed settings of prompt screening (`screening:` of an LLM in modelfence.yaml).

They live in `modelfence.config.llm_screening`; this module keeps the screening modules'
own name for them.
"""

from ..config.llm_screening import ExternalClassifier, Label, ScreeningSettings

__all__ = ["ExternalClassifier", "Label", "ScreeningSettings"]

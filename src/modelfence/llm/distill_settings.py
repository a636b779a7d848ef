"""Typed settings of distillation detection (`distill:` of an LLM in modelfence.yaml).

They live in `modelfence.config.llm_distill`; this module keeps the distillation modules'
own name for them.
"""

from ..config.llm_distill import DistillSettings

__all__ = ["DistillSettings"]

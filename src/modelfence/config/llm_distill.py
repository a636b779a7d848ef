"""Typed settings of distillation detection (`distill:` of an LLM in modelfence.yaml).

Per model, not under `llm.monitor`: what benign traffic looks like, and whether templated
traffic is normal (a batch-summarising app), differ from model to model; the reference
sample is the model's own. The weight of its evidence in the risk is `llm.monitor.distill`.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import ConfigPath, Strict


class DistillSettings(Strict):
    """Test each caller's (and tenant's) recent prompts against the model's benign traffic:
    an MMD two-sample test over all-MiniLM-L6-v2 embeddings, plus templated structure and
    topic sweeps (see `llm/distill.py`). Needs the `llm` extra."""

    enabled: bool = True
    window: int = Field(20, ge=8, le=200, description="prompts per tested window, per "
                        "principal and per tenant")
    false_alarm: float = Field(1e-4, gt=0, lt=0.5, description="the MMD test's false-alarm "
                               "rate per window of benign prompts (its null is fitted to "
                               "the reference)")
    margin: float = Field(0.1, ge=0.0, le=10.0, description="the null's threshold is raised "
                          "by this share (for a null fitted from a finite reference)")
    reference: ConfigPath | None = Field(None, description="a file of example benign prompts of "
                                   "this deployment, one a line, that warm-starts the "
                                   "reference sample (live traffic replaces them)")
    shipped_reference: bool = Field(True, description="without `reference`, warm-start from "
                                    "the shipped generic prompts (llm/distill_reference.txt), "
                                    "so windows are tested from the start; off: no test until "
                                    "the reference holds min_callers callers' prompts")
    reference_size: int = Field(512, ge=64, le=8192, description="recent benign prompts "
                                "kept as the reference sample")
    caller_share: float = Field(0.05, gt=0, le=1.0, description="most of the reference any "
                                "one principal may hold (no caller, a thief, dominates it)")
    min_callers: int = Field(5, ge=1, description="principals the reference must hold "
                             "before windows are tested (until then: no evidence)")
    min_reference: int = Field(100, ge=16, description="prompts the reference must hold "
                               "before windows are tested")
    null_draws: int = Field(300, ge=50, le=100_000, description="windows drawn from the "
                            "reference to fit the null")
    recalibrate_every: int = Field(64, ge=1, description="prompts admitted to the reference "
                                   "between two fits of the null")
    history: int = Field(32, ge=8, le=256, description="prompts remembered per subject "
                         "(windows and topic revisits); bounds memory per caller")
    max_subjects: int = Field(10_000, ge=10, description="principals and tenants remembered "
                              "per model (least recently seen dropped)")
    queue: int = Field(1024, ge=1, description="prompts waiting to be embedded; beyond it "
                       "new ones are dropped and counted, never waited for")
    batch: int = Field(16, ge=1, le=256, description="prompts embedded together")

    @model_validator(mode="after")
    def _sizes(self) -> DistillSettings:
        if self.history < self.window:
            raise ValueError("distill.history must be at least distill.window")
        if self.min_reference > self.reference_size:
            raise ValueError("distill.min_reference must be at most distill.reference_size")
        if self.min_reference < 2 * self.window:
            raise ValueError("distill.min_reference must be at least twice distill.window")
        return self

"""A classifier's `shaping:` bands: how answers are coarsened as the caller's risk rises."""

from __future__ import annotations

from pydantic import Field

from .base import Strict


class ShapingBand(Strict):
    """From risk `from_risk` upwards (until the next band), answers are shaped by `defense`."""

    from_risk: float = Field(ge=0.0, le=1.0)
    defense: str = Field(description="none, round:D, topk:K, labels, rsig:B,G, noise:S, "
                         "misinfo[:TAU]; several joined with '+' apply left to right")
    name: str | None = Field(None, description="the band's name in audit records and policies; "
                             "default: the defense text")

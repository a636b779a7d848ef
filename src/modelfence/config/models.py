"""`models:` — one classifier: its backend, what policies know of it, its monitor and shaping."""

from __future__ import annotations

from pydantic import Field, field_validator

from .backends import BackendSettings, InputLimits, TensorSpec
from .base import Strict
from .monitor import ModelMonitor
from .shaping import ShapingBand

_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
_VERSION = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class ModelAttributes(Strict):
    """What policies know about a model (`resource.owner`, `resource.sensitivity`, ...)."""

    owner: str = ""
    sensitivity: int = Field(0, ge=0, le=1000)
    tags: list[str] = Field(default_factory=list)




class ModelSettings(Strict):
    name: str = Field(pattern=_MODEL_NAME)
    backend: BackendSettings
    version: str = Field("1", pattern=_VERSION, description="the one version the gateway "
                         "serves under this name: /versions/{v}/ routes answer for it only")
    input: TensorSpec | None = None
    labels: list[str] | None = None
    limits: InputLimits = InputLimits()
    attributes: ModelAttributes = ModelAttributes()
    monitor: ModelMonitor | None = None
    shaping: list[ShapingBand] = Field(
        default_factory=list, description="output shaping per risk band; none: answers as is")
    reveal_band: bool = Field(
        False, description="name the caller's band in answers (parameters.shaping) and in "
        "refusals; off, only the audit record and the admin API show it")

    @field_validator("shaping")
    @classmethod
    def _bands(cls, v: list[ShapingBand]) -> list[ShapingBand]:
        starts = [b.from_risk for b in v]
        if v and (starts[0] != 0.0 or starts != sorted(set(starts))):
            raise ValueError("shaping bands need from_risk values rising strictly, "
                             "the first one 0.0")
        names = [b.name or b.defense for b in v]
        if len(set(names)) != len(names):
            raise ValueError("shaping band names must be unique (set name: on repeats)")
        return v

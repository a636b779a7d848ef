"""The text forms of the private defenses (``dp-rr:1``), read without importing OpenDP
until one is named, so the base install parses every other defense as before."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..config import ModelSettings
from ..errors import ConfigurationError
from ..extras import require

if TYPE_CHECKING:
    from .mechanisms import PrivateDefense

KINDS = ("dp-rr", "dp-bdpl", "dp-laplace", "dp-gauss")
#: the forms `shaping.spec.parse_defense` lists
FORMS = ("dp-rr:EPS", "dp-bdpl:EPS[,MARGIN]", "dp-laplace:EPS", "dp-gauss:EPS[,DELTA]")
_MOST = {"dp-rr": 1, "dp-laplace": 1, "dp-bdpl": 2, "dp-gauss": 2}


def parse_private(kind: str, arg: str) -> PrivateDefense | None:
    """The private defense named by `kind` and its arguments; None if `kind` is not one.

    Raises ValueError on unreadable numbers (the caller then names the accepted forms) and
    ConfigurationError on a missing or out-of-range number, or without the `privacy` extra.
    """
    if kind not in KINDS:
        return None
    values = [float(v) for v in arg.split(",")] if arg else []
    if not values:
        raise ConfigurationError(f"{kind} needs ε, as in {kind}:1")
    if len(values) > _MOST[kind]:
        raise ConfigurationError(f"{kind} takes at most {_MOST[kind]} number(s), got {arg!r}")
    require("privacy", f"the {kind} defense", "opendp", "dp_accounting")
    from .mechanisms import BoundaryLayer, GaussianVector, LaplaceVector, RandomizedResponse

    if kind == "dp-rr":
        return RandomizedResponse(values[0])
    if kind == "dp-bdpl":
        return BoundaryLayer(*values)
    if kind == "dp-laplace":
        return LaplaceVector(values[0])
    return GaussianVector(*values)


def private_models(models: Iterable[ModelSettings]) -> list[str]:
    """The models with a band naming a private defense, read from the text alone (so the
    gateway imports the privacy package, and needs its extra, only when one does)."""
    out = []
    for model in models:
        for band in model.shaping:
            kinds = [step.strip().partition(":")[0].lower() for step in band.defense.split("+")]
            if any(k in KINDS for k in kinds):
                out.append(model.name)
                break
    return out

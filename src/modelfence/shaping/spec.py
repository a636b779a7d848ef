"""Short text forms of defenses, for the command line, results files and reports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from ..privacy.forms import FORMS as PRIVATE_FORMS
from ..privacy.forms import parse_private
from .base import Defense, LabelOnly, NoDefense, Rounding, TopK
from .chain import Chain
from .keyed_noise import KeyedNoise
from .misinformation import DEFAULT_NU, AdaptiveMisinformation
from .reverse_sigmoid import ReverseSigmoid

if TYPE_CHECKING:
    from ..monitor.summary import Summary

#: What `modelfence assess` compares when no --defense is given: one of each kind.
DEFAULT_DEFENSES = ("none", "round:2", "topk:3", "labels", "rsig:0.8,1.2", "noise:2")

FORMS = ("none", "round:DECIMALS", "topk:K", "labels", "rsig:BETA,GAMMA", "noise:SCALE",
         "misinfo[:TAU[,NU]]", *PRIVATE_FORMS, "A+B (A, then B)")


def parse_defense(spec: str, *, secret: bytes | None = None,
                  summary: Summary | None = None) -> Defense:
    """``round:2`` → `Rounding(2)` and so on; keyed noise and misinformation need `secret`,
    misinformation also the monitor's `summary` of the model's data.

    Raises `ConfigurationError` naming the accepted forms, so a typo on the command line
    is one clear line.
    """
    parts = spec.split("+")
    if len(parts) > 1:
        return Chain([parse_defense(p, secret=secret, summary=summary) for p in parts])
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    try:
        if kind in ("none", "off") and not arg:
            return NoDefense()
        if kind in ("labels", "label", "label-only") and not arg:
            return LabelOnly()
        if kind == "round":
            return Rounding(int(arg))
        if kind in ("topk", "top-k"):
            return TopK(int(arg))
        if kind in ("rsig", "reverse-sigmoid"):
            beta, gamma = (float(v) for v in arg.split(","))
            return ReverseSigmoid(beta, gamma)
        if kind == "noise":
            if secret is None:
                raise ConfigurationError("keyed noise needs a secret")
            return KeyedNoise(secret, float(arg) if arg else 0.5)
        if kind in ("misinfo", "misinformation"):
            return _misinformation(arg, secret, summary)
        private = parse_private(kind, arg)  # differential privacy: dp-rr, dp-laplace, ...
        if private is not None:
            return private
    except ValueError:
        pass
    raise ConfigurationError(f"unknown defense {spec!r}; use one of: {', '.join(FORMS)}")


def _misinformation(arg: str, secret: bytes | None,
                    summary: Summary | None) -> AdaptiveMisinformation:
    values = [float(v) for v in arg.split(",")] if arg else []
    if len(values) > 2:
        raise ValueError(arg)
    if summary is None:
        raise ConfigurationError(
            "misinformation needs the monitor's summary of the model's data, to tell "
            "in-distribution queries from the rest (fit one with Summary.fit)")
    if secret is None:
        raise ConfigurationError("misinformation needs a secret")
    tau = values[0] if values else 1.0
    nu = values[1] if len(values) > 1 else DEFAULT_NU
    return AdaptiveMisinformation(summary, secret, tau, nu)

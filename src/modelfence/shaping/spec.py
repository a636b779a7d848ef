"""Short text forms of defenses, for the command line, results files and reports."""

from __future__ import annotations

from ..errors import ConfigurationError
from .base import Defense, LabelOnly, NoDefense, Rounding, TopK
from .keyed_noise import KeyedNoise
from .reverse_sigmoid import ReverseSigmoid

#: What `modelfence assess` compares when no --defense is given: one of each kind.
DEFAULT_DEFENSES = ("none", "round:2", "topk:3", "labels", "rsig:0.8,1.2", "noise:2")

FORMS = ("none", "round:DECIMALS", "topk:K", "labels", "rsig:BETA,GAMMA", "noise:SCALE")


def parse_defense(spec: str, *, secret: bytes | None = None) -> Defense:
    """``round:2`` → `Rounding(2)` and so on; keyed noise needs `secret`.

    Raises `ConfigurationError` naming the accepted forms, so a typo on the command line
    is one clear line.
    """
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
    except ValueError:
        pass
    raise ConfigurationError(f"unknown defense {spec!r}; use one of: {', '.join(FORMS)}")

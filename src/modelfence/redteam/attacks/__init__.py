"""The extraction attacks, by name: ``random``, ``adaptive``, ``jacobian``, ``equation``,
``uniform``, ``active``; ``NAME:labels`` is the label-only variant, ``NAME`` (or
``NAME:soft``) the soft-label one."""

from __future__ import annotations

from ...errors import ConfigurationError
from .base import VARIANTS, Attack, Predictor
from .equation import EquationSolving, SolvedLinear
from .jacobian import JacobianAugmentation, mlp_input_gradient
from .knockoff import KnockoffAdaptive
from .sampling import ActiveLearning, KnockoffRandom, UniformRandom

ATTACKS: dict[str, type[Attack]] = {a.kind: a for a in (
    KnockoffRandom, KnockoffAdaptive, JacobianAugmentation, EquationSolving, UniformRandom,
    ActiveLearning)}

__all__ = ["ATTACKS", "VARIANTS", "Attack", "Predictor", "SolvedLinear", "make_attack",
           "mlp_input_gradient", "split_attack"]


def split_attack(spec: str) -> tuple[str, str]:
    """``random:labels`` → (``random``, ``labels``); the variant defaults to soft."""
    kind, _, variant = spec.strip().lower().partition(":")
    variant = {"": "soft", "label": "labels", "label-only": "labels"}.get(variant, variant)
    if kind not in ATTACKS:
        raise ConfigurationError(f"unknown attack {kind!r}; use one of: {', '.join(ATTACKS)}")
    if variant not in VARIANTS:
        raise ConfigurationError(f"attack {spec!r}: the variant is soft or labels")
    return kind, variant


def make_attack(spec: str, seed: int) -> Attack:
    kind, variant = split_attack(spec)
    return ATTACKS[kind](variant, seed)

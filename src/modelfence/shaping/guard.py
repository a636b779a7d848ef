"""Output shaping in the gateway: each model's answers shaped by the caller's risk band.

A model lists bands (`shaping:` in its config): from a risk upwards, a defense. The band is
chosen from `call.risk` (the monitor's score), unless a permitting Cedar policy pins it with
``@shaping("band")`` (a trusted partner pinned to full answers, a contractor to labels);
a pin naming a band the model does not have falls back to the model's strongest band, so a
typo can only make answers poorer, never richer. An operator's pin of a principal
(`call.band_floor`, from the console) is a floor no policy pin goes below.

Answers keep the OIP shape and output names. The audit record names the band (and the
admin API shows it); the answer does not, unless the model sets `reveal_band`: telling a
caller its band tells a thief it has been caught, and which answers to distrust. A band
whose answers carry only labels withholds the `probabilities` output instead of sending a
one-hot matrix that would read as certainty; a caller who explicitly asked for
`probabilities` gets a 403 that says they are withheld from it (naming the band only where
it is revealed). The label output is recomputed from the shaped probabilities, so it never
contradicts them (misinformation changes the top class on purpose); where rounding ties the
top with another class, the label is the one that was higher before the rounding
(`told_labels`), so rounding never costs an honest caller its answer and never undoes a lie.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..backends.base import ModelEntry, classifier_response
from ..backends.call import OipCall
from ..config import ModelSettings
from ..errors import ConfigurationError, Forbidden
from ..kernel.chain import Guard
from ..monitor.summary import Summary
from .base import Array, Defense, LabelOnly, Rounding, shaped_labels
from .chain import Chain
from .spec import parse_defense

log = logging.getLogger("modelfence.shaping")

PROBABILITIES = "probabilities"


def labels_only(defense: Defense) -> bool:
    """Whether the answers under `defense` carry nothing but the decision."""
    steps = defense.steps if isinstance(defense, Chain) else (defense,)
    return any(isinstance(step, LabelOnly) for step in steps)


def told_labels(defense: Defense, proba: Array, shaped: Array, *, inputs: Any = None,
                principal: str = "") -> Array:
    """The class index each answer's `label` names: the shaped top class; where rounding
    leaves several classes tied for it, the one highest before the rounding.

    The reference is the answer without the defense's rounding steps (so a lie's decoy, not
    the model's true class, wins a tie on a lied row); it is computed only for tied rows.
    """
    top: Array = shaped.argmax(axis=1)
    tied = np.add.reduce(shaped == shaped.max(axis=1, keepdims=True), axis=1) > 1
    if not tied.any():
        return top
    steps = defense.steps if isinstance(defense, Chain) else (defense,)
    before = [step for step in steps if not isinstance(step, Rounding)]
    ref = np.array(proba[tied], dtype=np.float64)
    sub = None if inputs is None else np.asarray(inputs)[tied]
    for step in before:
        ref = step._shape(ref, sub, principal)
    top[tied] = shaped_labels(ref, shaped[tied])
    return top


@dataclass(frozen=True, slots=True)
class Band:
    name: str
    from_risk: float
    defense: Defense


def shaping_secret(server_secret: bytes, model: str) -> bytes:
    """A per-model key for keyed noise and misinformation, derived from the server secret."""
    return hmac.new(server_secret, f"shaping:{model}".encode(), hashlib.sha256).digest()


def bands_for(model: ModelSettings, secret: bytes, summary: Summary | None) -> list[Band]:
    """Parse a model's bands; any bad defense text fails start-up with the model's name."""
    bands = []
    for i, band in enumerate(model.shaping):
        try:
            defense = parse_defense(band.defense, secret=secret, summary=summary)
        except ConfigurationError as exc:
            raise ConfigurationError(f"models[{model.name}].shaping[{i}]: {exc}") from None
        bands.append(Band(band.name or band.defense, band.from_risk, defense))
    return bands


class ShapingGuard(Guard[OipCall]):
    name: ClassVar[str] = "shaping"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model", "outputs"})

    def __init__(self, bands: dict[str, list[Band]],
                 reveal: frozenset[str] = frozenset()) -> None:
        self._bands = {name: b for name, b in bands.items() if b}
        self._reveal = reveal  # models whose answers name the band

    @property
    def active(self) -> bool:
        return bool(self._bands)

    def bands(self, model: str) -> list[Band]:
        """The model's bands, lowest risk first (the privacy guard finds private ones)."""
        return list(self._bands.get(model, ()))

    def reveals(self, model: str) -> bool:
        return model in self._reveal

    def choose(self, model: str, risk: float, pins: tuple[str, ...],
               floor: float = 0.0) -> Band | None:
        """The band for `risk`, or the strictest a policy pins; never one looser than
        the band an operator's pin (`floor`, its start) names."""
        chosen = self._choose(model, risk, pins)
        if chosen is None or floor <= chosen.from_risk:
            return chosen
        return self._choose(model, floor, ())

    def _choose(self, model: str, risk: float, pins: tuple[str, ...]) -> Band | None:
        bands = self._bands.get(model)
        if not bands:
            return None
        if pins:
            by_name = {b.name: b for b in bands}
            known = [by_name[p] for p in pins if p in by_name]
            if len(known) < len(pins):
                log.warning("policy pins an unknown output band %s on model %s; using its "
                            "strongest", sorted(set(pins) - set(by_name)), model)
                return bands[-1]
            return max(known, key=lambda b: b.from_risk)
        chosen = bands[0]
        for band in bands:
            if risk >= band.from_risk:
                chosen = band
        return chosen

    async def on_response(self, call: OipCall) -> None:
        assert call.model is not None and call.principal is not None
        band = self.choose(call.model.name, call.risk, call.pinned_bands, call.band_floor)
        if band is None or call.outputs is None:
            return
        tensor = call.outputs.output(PROBABILITIES)
        if tensor is None:
            return
        call.shaping_band = band.name
        proba = np.asarray(tensor.data, dtype=np.float64).reshape(tensor.shape[0], -1)
        call.unshaped_proba = proba
        rows = None
        if band.defense.uses_inputs and call.inputs is not None:
            x = np.asarray(call.inputs.inputs[0].data, dtype=np.float64)
            rows = x.reshape(len(x), -1)
        shaped = band.defense.apply(proba, inputs=rows, principal=call.principal.id)
        told = told_labels(band.defense, proba, shaped, inputs=rows,
                           principal=call.principal.id)
        self._replace(call, call.model, shaped, told, band, call.model.name in self._reveal)

    @staticmethod
    def _replace(call: OipCall, entry: ModelEntry, shaped: Any, told: Array, band: Band,
                 reveal: bool) -> None:
        assert call.outputs is not None
        classes = entry.backend.class_values(shaped.shape[1])
        answer = classifier_response(call.outputs.model_name, shaped, classes, call.outputs.id)
        label = answer.output("label")
        if label is not None and not np.array_equal(told, shaped.argmax(axis=1)):
            values = classes[told]
            label.data = (values.astype(np.int64) if classes.dtype.kind in "iu" else
                          np.asarray([str(v) for v in values], dtype=object))
        keep = answer.outputs
        if labels_only(band.defense):
            asked = call.inputs.outputs if call.inputs is not None else None
            if asked and any(o.get("name") == PROBABILITIES for o in asked):
                which = f" (output band {band.name!r})" if reveal else ""
                raise Forbidden(
                    f"probabilities are withheld from this caller{which}; ask for the "
                    "'label' output", reason="probabilities_withheld")
            keep = [t for t in keep if t.name != PROBABILITIES]
        call.outputs.outputs = keep
        if reveal:
            call.outputs.parameters = {**call.outputs.parameters, "shaping": band.name}


def build_shaping(models: dict[str, ModelEntry], server_secret: bytes,
                  summaries: dict[str, Summary]) -> ShapingGuard:
    return ShapingGuard({
        name: bands_for(entry.settings, shaping_secret(server_secret, name),
                        summaries.get(name))
        for name, entry in models.items()},
        frozenset(name for name, entry in models.items() if entry.settings.reveal_band))

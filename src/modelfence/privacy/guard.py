"""Differentially private answers in the gateway: the repeat memory, the charge, the budget.

Two guards. `PrivacyUsageGuard` (usage stage) reads the ε the principal has spent on the
model, for policy (`context.epsilon_spent`), only on models with a private band.
`PrivacyGuard` stands in the outputs stage where the shaping guard would: for a band whose
defense is private (``dp-rr:1``, or a chain with one private step) it answers each row
from the repeat memory or with a fresh draw, charges the principal and its tenant for the
draws each is shown for the first time, and refuses (429) or answers with labels only once a
budget is spent; every other band goes to the shaping guard unchanged. The answer is then
written the way the shaping guard writes its own (label from the answer, probabilities
withheld under a label-only mechanism, band named only where revealed).

A refusal shows nothing of the draw, and a repeat is answered even once the budget is spent:
it costs nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import ClassVar

import numpy as np

from ..backends.call import OipCall
from ..errors import ConfigurationError, PrivacyBudgetSpent, UpstreamError
from ..kernel.call import Call
from ..kernel.chain import Guard
from ..kernel.metrics import GatewayMetrics
from ..shaping.base import Array, LabelOnly
from ..shaping.guard import PROBABILITIES, Band, ShapingGuard
from .budget import Charge, PrivacyBudget
from .mechanisms import PrivateDefense, private_steps
from .repeats import Draw, RepeatKeys, row_bytes

log = logging.getLogger("modelfence.privacy")


def private_bands(shaping: ShapingGuard, models: list[str]) -> dict[str, list[Band]]:
    """The models with a private band, and those bands; a band with two private steps is a
    configuration error (its cost would be two mechanisms' in one answer)."""
    out: dict[str, list[Band]] = {}
    for model in models:
        bands = [b for b in shaping.bands(model) if private_steps(b.defense)]
        for band in bands:
            if len(private_steps(band.defense)) > 1:
                raise ConfigurationError(
                    f"models[{model}].shaping band {band.name!r}: at most one private step "
                    f"(dp-*) per band, got {band.defense.spec!r}")
        if bands:
            out[model] = bands
    return out


class PrivacyUsageGuard(Guard[Call]):
    """`context.epsilon_spent`: the principal's ε on this model, read before policy."""

    name: ClassVar[str] = "privacy_usage"
    requires: ClassVar[frozenset[str]] = frozenset({"principal", "model"})
    provides: ClassVar[frozenset[str]] = frozenset({"epsilon_spent"})

    def __init__(self, budget: PrivacyBudget, models: frozenset[str]) -> None:
        self._budget = budget
        self._models = models

    async def on_request(self, call: Call) -> None:
        assert call.principal is not None and call.model is not None
        if call.model.name not in self._models:
            return
        spent = await self._budget.spent(call.model.name, call.principal.id,
                                         call.principal.tenant)
        call.epsilon_spent = spent.principal


class PrivacyGuard(Guard[OipCall]):
    name: ClassVar[str] = "privacy"
    requires: ClassVar[frozenset[str]] = ShapingGuard.requires

    def __init__(self, shaping: ShapingGuard, budget: PrivacyBudget, keys: RepeatKeys,
                 private: dict[str, list[Band]], metrics: GatewayMetrics | None = None) -> None:
        self._shaping = shaping
        self._metrics = metrics  # ε charged and answers withheld, per model
        if metrics is not None:  # each at 0 from the start: `increase()` sees the first
            for model in private:
                metrics.privacy_epsilon.labels(model)
                for scope in ("principal", "tenant"):
                    metrics.privacy_spent.labels(model, scope)
                    metrics.privacy_alerts.labels(model, scope)
        self._budget = budget
        self._keys = keys
        self._private = {m: {b.name for b in bands} for m, bands in private.items()}

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self._private)

    async def on_response(self, call: OipCall) -> None:
        assert call.model is not None and call.principal is not None
        model = call.model.name
        band = self._shaping.choose(model, call.risk, call.pinned_bands, call.band_floor)
        if band is None or band.name not in self._private.get(model, ()):
            await self._shaping.on_response(call)
            return
        if call.outputs is None:
            return
        tensor = call.outputs.output(PROBABILITIES)
        if tensor is None:  # fail closed: exact labels would leave without a guarantee
            raise UpstreamError(f"model {model!r} answered without {PROBABILITIES!r}; its "
                                "differentially private band needs them")
        proba = np.asarray(tensor.data, dtype=np.float64).reshape(tensor.shape[0], -1)
        shaped, charge = await self._answer(call, band, proba)
        if charge is not None and not charge.granted:
            band = self._spent(call, band, charge)
            shaped = band.defense.apply(proba)
        call.shaping_band = band.name
        call.unshaped_proba = proba
        ShapingGuard._replace(call, call.model, shaped, shaped.argmax(axis=1), band,
                              self._shaping.reveals(model))

    async def _answer(self, call: OipCall, band: Band, proba: Array
                      ) -> tuple[Array, Charge | None]:
        """The rows' answers (remembered or drawn) and the charge for those new to the
        principal (None: nothing was); with a refused charge they must not be shown."""
        assert call.model is not None and call.principal is not None and call.inputs
        store, now = self._budget.store, time.time()
        step: PrivateDefense = private_steps(band.defense)[0]
        n = proba.shape[0]
        period, expires = self._keys.period(now)
        rows = row_bytes([t.data for t in call.inputs.inputs], n)
        keys = self._keys.answers(call.model.name, band.defense.spec, period, rows)
        seen_keys = self._keys.seen(call.principal.id, keys)
        got = await store.recall(keys + seen_keys, now)
        values, seen = got[:n], got[n:]
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            # a step keyed on the inputs (misinformation) sees them; one keyed on the caller
            # (keyed noise) is keyed on whoever asked first: the draw is everyone's
            x = None
            if band.defense.uses_inputs:
                x = np.asarray(call.inputs.inputs[0].data, dtype=np.float64).reshape(n, -1)
                x = x[missing]
            fresh = band.defense.apply(proba[missing], inputs=x, principal=call.principal.id)
            first = step is (band.defense.steps[0] if hasattr(band.defense, "steps")
                             else band.defense)
            charged = step.charged(proba[missing]) if first else np.ones(len(missing), bool)
            drawn = {keys[i]: Draw.new(bool(c), row).encode()
                     for i, c, row in zip(missing, charged, fresh, strict=True)}
            kept = await store.remember(drawn, expires, now)
            for i in missing:
                values[i] = kept.get(keys[i], drawn[keys[i]])
        draws = [Draw.decode(v) for v in values if v is not None]
        new = {seen_keys[i]: d.id for i, d in enumerate(draws)
               if d.charged and seen[i] != d.id}
        shaped = np.stack([d.row for d in draws])
        if not new:
            return shaped, None
        charge = await self._budget.charge(call.model.name, call.principal.id,
                                           call.principal.tenant, step.spec, len(new))
        if charge.granted:
            await store.remember(new, expires, now, first=False)
            call.epsilon_spent = charge.spent.principal
            if self._metrics is not None:
                self._metrics.privacy_epsilon.labels(call.model.name).inc(
                    step.cost.epsilon * len(new))
        call.note(self.name, "note", f"{len(new)} answer(s) at ε {step.cost.epsilon:g}; "
                  f"ε spent {charge.spent.principal:.4g}")
        return shaped, charge

    def _spent(self, call: OipCall, band: Band, charge: Charge) -> Band:
        """Refuse, or the band's labels-only stand-in, for a caller whose budget is spent."""
        who = "your" if charge.refused_by == "principal" else "your tenant's"
        if self._metrics is not None and call.model is not None:
            self._metrics.privacy_spent.labels(call.model.name, charge.refused_by).inc()
        if self._budget.settings.on_spent == "refuse":
            call.note(self.name, "deny", f"{charge.refused_by} ε budget spent")
            when = ("" if charge.retry_after_s is None else
                    f"; it starts again in {charge.retry_after_s} s")
            raise PrivacyBudgetSpent(
                f"{who} privacy budget on model {call.model_name!r} is spent: no new answers "
                f"(questions already answered are repeated){when}",
                retry_after_s=charge.retry_after_s)
        call.note(self.name, "note", f"{charge.refused_by} ε budget spent: labels only")
        return replace(band, name=f"{band.name}:labels", defense=LabelOnly())

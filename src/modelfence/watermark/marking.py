"""Which answers carry the watermark, and how a marked answer reads.

A marked row answers with its keyed decoy class: in the probabilities the decoy and the
class shown on top swap values, so the answer keeps the model's confidence profile and
nothing in it says "watermark"; the label names the decoy, so label-only callers carry it
too. Rows are chosen by the keyed function of the input alone (not of the caller), so
accounts pooling their answers agree with each other instead of exposing the marks.

The share is fixed, or planned per model (`PlannedRate`: from its class count, seen at its
first answer, and its disagreement in the plan file; computed once and kept). It rises with
the caller's risk (`fraction_at_risk`); a row marked at a lower risk is marked at every
higher one (the draw ``u`` is compared with a rising threshold), so a caller's answers only
change when its risk band does. Controls are drawn from the top of [0, 1) at
`control_ratio` times the mark rate in use, so that at every moment a recorded input is a
mark or a control with the same odds, whatever the input: marks and controls are
exchangeable samples of the caller's inputs, as the disagreement test assumes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..stores.recent import recent
from .keyring import EvidenceCipher, Keyring, input_digest, row_bytes
from .power import Measured, clamp_disagreement, model_rate, read_plan
from .settings import WatermarkSettings
from .store import EvidenceRecord

Array = np.ndarray[Any, Any]
Kind = Literal["watermark", "control"]


@dataclass(frozen=True, slots=True)
class Mark:
    """One recorded row of one answer: marked (answered with the decoy) or a control."""

    row: int
    kind: Kind
    key_id: str
    input: bytes  # the row's canonical float32 bytes
    digest: str  # SHA-256 of `input`, hex
    model_index: int  # the model's own top-1 (column index)
    decoy_index: int  # the keyed decoy (the answer given, for a marked row)


class PlannedRate:
    """The share of a model's answers marked for a caller at some risk.

    With ``fraction: auto`` each model's share is planned once, when its class count is
    first seen, from the plan file's measured disagreement (else the configured one).
    """

    def __init__(self, settings: WatermarkSettings,
                 measured: dict[str, Measured] | None = None) -> None:
        self.settings = settings
        self.measured = measured or {}
        self._base: dict[tuple[str, int], float] = {}

    @classmethod
    def from_settings(cls, settings: WatermarkSettings) -> PlannedRate:
        """Reads the plan file when one is configured (a bad one fails start-up)."""
        measured = read_plan(settings.plan_file) if settings.plan_file is not None else None
        return cls(settings, measured)

    def base(self, model: str, n_classes: int) -> float:
        """The share for callers below `at_risk`."""
        key = (model, n_classes)
        f = self._base.get(key)
        if f is None:
            m = self.measured.get(model)
            d = clamp_disagreement(m.disagreement if m is not None and m.measured
                                   else self.settings.disagreement)
            f = model_rate(self.settings, n_classes, d)[1].fraction
            self._base[key] = f
        return f

    def __call__(self, risk: float, model: str, n_classes: int, answered: int = 0) -> float:
        planned = self.base(model, n_classes)
        if self.settings.fraction == "auto":
            planned = self.settings.tapered(planned, answered)
        return self.settings.fraction_for(risk, planned)


class RepeatAllowance:
    """Which repeats of marked inputs a caller gets answered truthfully: at most `limit`
    distinct inputs per (model, principal), any number of times each.

    An honest repeat user re-asks a few inputs many times and pays for a marked one once; a
    thief that re-asks everything to see which answers change strips at most `limit` marks,
    and beyond them its repeats keep their mark. Kept per process (an LRU of `callers`):
    with several workers or replicas a caller may get up to `limit` on each.
    """

    def __init__(self, limit: int, callers: int = 100_000) -> None:
        self.limit, self.callers = limit, callers
        self._granted: OrderedDict[tuple[str, str], set[str]] = OrderedDict()

    def apply(self, marks: list[Mark], held: set[str], model: str, principal: str
              ) -> list[Mark]:
        """`marks` without those answered truthfully (repeats of held marks, within limit)."""
        if not held or self.limit <= 0:
            return marks
        granted = recent(self._granted, (model, principal), set, self.callers)
        out = []
        for m in marks:
            if m.kind == "watermark" and m.digest in held and (
                    m.digest in granted or len(granted) < self.limit):
                granted.add(m.digest)
                continue
            out.append(m)
        return out


class Watermarker:
    """Select rows and rewrite answers; shared by the gateway guard and in-process oracles.

    `fraction` is a `PlannedRate`, or a function of the caller's risk alone (a fixed share,
    as in tests and benchmarks).
    """

    def __init__(self, keyring: Keyring, fraction: Callable[[float], float] | PlannedRate,
                 *, control: bool = True, control_ratio: float = 1.0) -> None:
        self.keyring = keyring
        self.rate = fraction if isinstance(fraction, PlannedRate) else None
        self._fixed = None if isinstance(fraction, PlannedRate) else fraction
        self.control = control
        self.control_ratio = control_ratio

    @classmethod
    def from_settings(cls, settings: WatermarkSettings, keyring: Keyring | None = None
                      ) -> Watermarker:
        return cls(keyring or Keyring.from_settings(settings),
                   PlannedRate.from_settings(settings), control=settings.control,
                   control_ratio=settings.control_ratio)

    def fraction(self, risk: float, model: str = "", n_classes: int = 2, answered: int = 0
                 ) -> float:
        """The share of `model`'s answers marked for a caller at `risk` that has `answered`
        rows of it before."""
        if self.rate is not None:
            return self.rate(risk, model, n_classes, answered)
        assert self._fixed is not None
        return self._fixed(risk)

    def select(self, inputs: Any, top: Array, n_classes: int, risk: float = 0.0, *,
               model: str = "", answered: int = 0) -> list[Mark]:
        """The marked and control rows among `inputs`, whose model top-1 classes are `top`,
        for a caller that has `answered` rows of `model` before them."""
        if n_classes < 2:
            return []
        key = self.keyring.active
        f = self.fraction(risk, model, n_classes, answered)
        above = 1.0 - self.control_ratio * f
        out: list[Mark] = []
        for i, row in enumerate(row_bytes(inputs)):
            draw = key.draw(row)
            kind: Kind
            if draw.u < f:
                kind = "watermark"
            elif self.control and draw.u >= above:
                kind = "control"
            else:
                continue
            t = int(top[i])
            out.append(Mark(i, kind, key.id, row, input_digest(row), t,
                            draw.decoy(t, n_classes)))
        return out

    @staticmethod
    def truthful_repeats(marks: list[Mark], held: set[str]) -> list[Mark]:
        """`marks` without the marked rows whose input the caller already holds marked.

        Those are answered truthfully and recorded no more: a repeat user pays for a marked
        input once, not once per repeat.
        """
        return [m for m in marks if m.kind != "watermark" or m.digest not in held]

    @staticmethod
    def rewrite_proba(proba: Array, marks: list[Mark]) -> Array:
        """A copy of `proba` where each marked row shows its decoy on top (values swapped)."""
        out = np.array(proba, copy=True)
        for m in marks:
            if m.kind != "watermark":
                continue
            row = out[m.row]
            shown = int(np.argmax(row))
            if shown != m.decoy_index:
                row[shown], row[m.decoy_index] = row[m.decoy_index], row[shown]
        return out

    def check(self, key_id: str, row: bytes, model_index: int, decoy_index: int,
              n_classes: int) -> bool:
        """Whether a recorded decoy is the one the key derives (records cannot be made up)."""
        draw = self.keyring.get(key_id).draw(row)
        return 0 <= model_index < n_classes and draw.decoy(model_index, n_classes) == decoy_index


def make_record(m: Mark, *, model: str, principal: str, tenant: str, classes: list[str],
                n_features: int, request_id: str, time_us: int,
                cipher: EvidenceCipher | None = None) -> EvidenceRecord:
    """The evidence record of one mark; the input sealed when a cipher is given."""
    blob, sealed_by = m.input, None
    if cipher is not None:
        blob, sealed_by = cipher.seal(m.input, m.digest), cipher.key_id
    return EvidenceRecord(
        kind=m.kind, model=model, principal=principal, tenant=tenant, key_id=m.key_id,
        input_sha256=m.digest, input=blob, sealed_by=sealed_by, n_features=n_features,
        n_classes=len(classes), model_index=m.model_index, model_label=classes[m.model_index],
        decoy_index=m.decoy_index, decoy_label=classes[m.decoy_index], request_id=request_id,
        time_us=time_us)

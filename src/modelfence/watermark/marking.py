"""Which answers carry the watermark, and how a marked answer reads.

A marked row answers with its keyed decoy class: in the probabilities the decoy and the
class shown on top swap values, so the answer keeps the model's confidence profile and
nothing in it says "watermark"; the label names the decoy, so label-only callers carry it
too. Rows are chosen by the keyed function of the input alone (not of the caller), so
accounts pooling their answers agree with each other instead of exposing the marks.

The share rises with the caller's risk (`fraction_at_risk`); a row marked at a lower risk
is marked at every higher one (the draw ``u`` is compared with a rising threshold), so a
caller's answers only change when its risk band does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .keyring import EvidenceCipher, Keyring, input_digest, row_bytes
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


class Watermarker:
    """Select rows and rewrite answers; shared by the gateway guard and in-process oracles."""

    def __init__(self, keyring: Keyring, fraction: Callable[[float], float], *,
                 control: bool = True) -> None:
        self.keyring = keyring
        self._fraction = fraction
        self.control = control

    @classmethod
    def from_settings(cls, settings: WatermarkSettings, keyring: Keyring | None = None
                      ) -> Watermarker:
        return cls(keyring or Keyring.from_settings(settings), settings.fraction_for,
                   control=settings.control)

    def fraction(self, risk: float) -> float:
        return self._fraction(risk)

    def select(self, inputs: Any, top: Array, n_classes: int, risk: float = 0.0) -> list[Mark]:
        """The marked and control rows among `inputs`, whose model top-1 classes are `top`."""
        if n_classes < 2:
            return []
        key = self.keyring.active
        f = self._fraction(risk)
        out: list[Mark] = []
        for i, row in enumerate(row_bytes(inputs)):
            draw = key.draw(row)
            kind: Kind
            if draw.u < f:
                kind = "watermark"
            elif self.control and draw.u >= 1.0 - f:
                kind = "control"
            else:
                continue
            t = int(top[i])
            out.append(Mark(i, kind, key.id, row, input_digest(row), t,
                            draw.decoy(t, n_classes)))
        return out

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

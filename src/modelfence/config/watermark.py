"""Settings of the response watermark: `watermark:` in modelfence.yaml.

::

    watermark:
      fraction: auto             # or a fixed share of answers marked for every caller
      target_log2_p: -40         # auto: a perfect copy of `holding` answers reaches this p
      holding: 2000              # ... for anyone holding this many answers (95% of them)
      max_fraction: 0.01         # auto never marks more than this share
      control_ratio: 10          # unmarked inputs recorded per marked one (the baseline)
      disagreement: 0.1          # how often independent models disagree with ours, when
      plan_file: null            # ... `modelfence watermark plan --write` has not measured it
      repeats: truthful          # a repeat of an input this caller got marked: the truth
      fraction_at_risk: 0.05     # the least share for callers whose risk >= at_risk
      at_risk: 0.5
      keys:                      # several secrets; `active` marks new answers, the others
        - {id: "2024", secret_file: wm-2024.secret}   # still verify old evidence
        - {id: "2025", secret_file: wm-2025.secret}
      active: "2025"             # default: the last key listed
      evidence_store: sqlite:///watermark-evidence.db
      evidence_key_file: evidence.key   # AES-256-GCM key; without it inputs are kept in clear
      timestamp_url: null        # an RFC 3161 time-stamping authority for evidence bundles

Secrets are read by `Keyring.from_settings` at start, never kept on the settings object.

With ``fraction: auto`` the share is planned per model (`power.planned_fraction`) from its
class count, seen at its first answer, and the disagreement measured by `watermark plan`.
Controls are drawn at `control_ratio` times the mark rate in use, at every moment, so marks
and controls stay exchangeable samples of the same caller's inputs: what the disagreement
test of `stats` needs. ``repeats: truthful`` costs a repeat user one wrong answer per
marked input instead of one per repeat; the price is that a caller who re-sends every input
sees which answers changed (`consistent` keeps every repeat marked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import ConfigPath, StoreUrl, Strict
from .paths import resolve_paths

_KEY_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}$"


class WatermarkKeySettings(Strict):
    """One watermark secret: `id` is stored with every record it marked."""

    id: str = Field(pattern=_KEY_ID)
    secret_file: ConfigPath = Field(description="a file of at least 32 characters "
                              "(`modelfence watermark keygen`)")


class WatermarkSettings(Strict):
    """The classifier response watermark and its evidence (DAWN, Szyller et al. 2021)."""

    models: list[str] = Field(default_factory=list,
                              description="models whose answers are marked; empty: every "
                              "classifier")
    fraction: float | Literal["auto"] = Field(
        "auto", description="share of distinct inputs answered with a decoy, or auto: "
        "planned per model for `target_log2_p` at `holding` answers")
    target_log2_p: float = Field(-40.0, ge=-1000.0, le=-1.0,
                                 description="auto: the log2 p-value a perfect copy reaches")
    holding: int = Field(2000, ge=10, le=10_000_000,
                         description="auto: answers after which a caller holds enough "
                         "marks (with 95% probability)")
    beyond_holding: float = Field(
        0.25, gt=0.0, le=1.0, description="auto with repeats: truthful: the share of the "
        "planned rate used for a caller's answers beyond `holding` (it holds enough marks "
        "by then; a heavy user pays less)")
    max_fraction: float = Field(0.01, gt=0.0, le=0.5,
                                description="auto: the most it marks, whatever the plan")
    control_ratio: float = Field(10.0, gt=0.0, le=100.0,
                                 description="unmarked inputs recorded per marked one")
    disagreement: float = Field(0.1, gt=0.0, lt=1.0,
                                description="auto: how often independently trained models "
                                "disagree with the protected one, for models the plan file "
                                "does not measure")
    plan_file: ConfigPath | None = Field(None, description="JSON written by `modelfence "
                                   "watermark plan --write`: each model's measured "
                                   "disagreement and class count")
    repeats: Literal["truthful", "consistent"] = Field(
        "truthful", description="truthful: a caller's repeat of an input it already got "
        "marked is answered truthfully; consistent: marked again")
    truthful_limit: int = Field(
        5, ge=0, le=10_000, description="repeats: truthful: the distinct marked inputs a "
        "caller gets answered truthfully on repeat; beyond them repeats keep their mark, so "
        "a caller re-asking everything strips at most this many")
    timestamp_url: str | None = Field(None, description="RFC 3161 time-stamping authority "
                                      "for evidence bundles")
    fraction_at_risk: float | None = Field(
        0.05, gt=0.0, le=0.5, description="the least share for callers at or above "
        "`at_risk` (the monitor's score); null: always the planned or fixed share")
    at_risk: float = Field(0.5, ge=0.0, le=1.0)
    control: bool = Field(True, description="also record unmarked inputs (`control_ratio` "
                          "per mark), the disagreement test's baseline")
    keys: list[WatermarkKeySettings] = Field(min_length=1)
    active: str | None = Field(None, description="the key that marks new answers; default: "
                               "the last listed. The others only verify old evidence")
    evidence_store: StoreUrl = Field("sqlite:///watermark-evidence.db",
                                description="sqlite:///PATH, postgresql://... or memory://")
    evidence_key_file: ConfigPath | None = Field(
        None, description="32-byte key (64 hex characters) that encrypts recorded inputs "
        "(AES-256-GCM); without it inputs are stored in clear")

    @field_validator("fraction", mode="before")
    @classmethod
    def _fraction(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"fraction must be auto or a number in (0, 0.5], not {v!r}")
        if not 0.0 < float(v) <= 0.5:
            raise ValueError(f"fraction must be in (0, 0.5], not {v}")
        return float(v)

    @field_validator("timestamp_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"timestamp_url must be an http(s) URL, not {v!r}")
        return v

    @model_validator(mode="after")
    def _keys_consistent(self) -> WatermarkSettings:
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("watermark key ids must be unique (a retired key keeps its id)")
        if self.active is not None and self.active not in ids:
            raise ValueError(f"active key {self.active!r} is not among keys: {', '.join(ids)}")
        if (self.fraction_at_risk is not None and self.fraction != "auto"
                and self.fraction_at_risk < self.fraction):
            raise ValueError("fraction_at_risk must be at least fraction")
        top = max(self.max_fraction if self.fraction == "auto" else self.fraction,
                  self.fraction_at_risk or 0.0)
        if self.control and top * (1.0 + self.control_ratio) > 1.0:
            raise ValueError(
                f"marks at {top:g} and controls at control_ratio {self.control_ratio:g} "
                f"times that would take more than every answer; lower control_ratio to at "
                f"most {1.0 / top - 1.0:g} or the fractions")
        return self

    @property
    def active_id(self) -> str:
        return self.active or self.keys[-1].id

    def tapered(self, planned: float, answered: int) -> float:
        """The planned share for a caller that has `answered` rows of this model: the full
        share for its first `holding`, then `beyond_holding` of it. Only under `repeats:
        truthful`, where a repeat of a marked input is answered truthfully anyway; under
        `consistent` a lower rate would change answers a caller already had."""
        if self.repeats == "truthful" and answered >= self.holding:
            return planned * self.beyond_holding
        return planned

    def fraction_for(self, risk: float, planned: float | None = None) -> float:
        """The share of answers marked for a caller at `risk`; `planned` stands in for auto."""
        base = self.fraction if self.fraction != "auto" else planned
        if base is None:
            raise ValueError("fraction is auto: pass the planned share")
        if self.fraction_at_risk is not None and risk >= self.at_risk:
            return max(base, self.fraction_at_risk)
        return base

    def marks(self, model: str) -> bool:
        return not self.models or model in self.models

    def resolved(self, base: Path) -> WatermarkSettings:
        """Relative paths (and sqlite:///relative URLs) taken from `base`, the config's folder."""
        return resolve_paths(self, base)

"""Victims and oracles: what an attack asks, and the bookkeeping of every answer it gets.

An `Oracle` answers rows with class indices (0..k-1, the columns of the probabilities) and,
unless it is label-only, a probability matrix. The in-process victim loads a model file with
the same loaders the gateway serves it with, so an assessment measures the model that is
deployed; `ShapedOracle` puts a defense between victim and thief, as the gateway's output
shaping will. `Recorder` is the only place queries are counted: it enforces the budget,
keeps the transcript the thieves train on, and remembers why the endpoint stopped answering.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError, RequestError
from ..shaping import Defense

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Answers:
    labels: Array
    proba: Array | None


class Oracle(ABC):
    """Something that labels rows: a model in-process, or an endpoint behind the gateway."""

    n_classes: int
    n_features: int
    classes: Array | None = None  # class values by index, when known (for accuracy)
    batch: int = 1 << 30  # rows per request
    description: str = "oracle"

    @abstractmethod
    def ask(self, x: Array) -> Answers: ...

    def close(self) -> None:
        return None


class LocalVictim(Oracle):
    """A classifier in this process, answering in float32 as it would on the wire."""

    def __init__(self, predict_proba: Callable[[Array], Array], *, n_classes: int,
                 n_features: int, classes: Array | None, description: str,
                 dtype: Any = np.float32) -> None:
        self._predict = predict_proba
        self.n_classes, self.n_features = n_classes, n_features
        self.classes, self.description, self._dtype = classes, description, dtype

    def ask(self, x: Array) -> Answers:
        p = np.asarray(self._predict(np.asarray(x, dtype=self._dtype)), dtype=np.float32)
        return Answers(np.argmax(p, axis=1), p.astype(np.float64))


@dataclass(frozen=True)
class VictimSource:
    """A picklable recipe for a victim, so that worker processes load their own copy."""

    kind: str  # "skops", "onnx" or "estimator"
    path: Path | None = None
    estimator: Any = None
    trusted_types: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        return str(self.path) if self.path else type(self.estimator).__name__

    def load(self) -> LocalVictim:
        if self.kind == "estimator":
            model = self.estimator
            if not hasattr(model, "predict_proba"):
                raise ConfigurationError(f"{type(model).__name__} has no predict_proba")
            n = int(getattr(model, "n_features_in_", 0))
            classes = np.asarray(model.classes_)
            return LocalVictim(model.predict_proba, n_classes=len(classes), n_features=n,
                               classes=classes, description=self.description,
                               dtype=np.float64)
        return _load_file(self)


def _load_file(src: VictimSource) -> LocalVictim:
    """Through backends/local.py: skops trust checks and ONNX sessions exactly as served."""
    from ..backends.local import OnnxClassifier, SkopsClassifier
    from ..config import LocalBackend, ModelSettings
    from ..kernel.oip import NUMPY_DTYPES

    settings = ModelSettings(name="victim", backend=LocalBackend(
        type=src.kind, path=src.path, trusted_types=list(src.trusted_types)))
    backend = SkopsClassifier(settings) if src.kind == "skops" else OnnxClassifier(settings)
    spec, classes = backend._load()
    n_features = spec.shape[-1] if len(spec.shape) == 2 else -1
    if n_features < 1:
        raise ConfigurationError(f"{src.path}: the red team needs a model with a fixed number "
                                 f"of input features, got shape {spec.shape}")
    return LocalVictim(backend._predict_proba, n_classes=len(classes), n_features=n_features,
                       classes=np.asarray(classes), description=str(src.path),
                       dtype=NUMPY_DTYPES.get(spec.datatype, np.float32))


def victim_source(target: Any, *, trusted_types: tuple[str, ...] = ()) -> VictimSource:
    """``demo``, a .skops or .onnx path, or a fitted estimator with predict_proba."""
    if hasattr(target, "predict_proba"):
        return VictimSource("estimator", estimator=target)
    text = str(target)
    if text == "demo":
        from .. import demo
        from ..config import default_home

        return VictimSource("skops", demo.prepare(default_home() / "demo").model)
    path = Path(text)
    kind = {".skops": "skops", ".onnx": "onnx"}.get(path.suffix.lower())
    if kind is None:
        raise ConfigurationError(f"{text}: give a .skops or .onnx model file, 'demo', or an "
                                 "http(s):// endpoint")
    if not path.is_file():
        raise ConfigurationError(f"model file {path} does not exist")
    return VictimSource(kind, path, trusted_types=trusted_types)


class ShapedOracle(Oracle):
    """The victim's answers passed through a defense, as one principal would receive them."""

    def __init__(self, inner: Oracle, defense: Defense, principal: str = "redteam") -> None:
        defense.check(inner.n_classes)
        self._inner, self._defense, self._principal = inner, defense, principal
        self.n_classes, self.n_features = inner.n_classes, inner.n_features
        self.classes, self.batch = inner.classes, inner.batch
        self.description = f"{inner.description} with {defense.spec}"

    def ask(self, x: Array) -> Answers:
        a = self._inner.ask(x)
        if a.proba is None:
            raise ConfigurationError("a defense needs the victim's probabilities")
        shaped = self._defense.apply(a.proba, inputs=x, principal=self._principal)
        # the decision a caller sees is the shaped one (misinformation changes it on purpose)
        return Answers(np.argmax(shaped, axis=1), shaped)


@dataclass
class Recorder:
    """Counts and records queries; refuses to go past the budget; notes a refusal."""

    oracle: Oracle
    budget: int
    soft: bool
    x: list[Array] = field(default_factory=list)
    labels: list[Array] = field(default_factory=list)
    proba: list[Array] = field(default_factory=list)
    used: int = 0
    requests: int = 0
    stopped: RequestError | None = None

    @property
    def remaining(self) -> int:
        return self.budget - self.used

    def ask(self, x: Array) -> Answers:
        """Answers for `x` (at most `remaining` rows); a refusal is kept and re-raised."""
        x = np.asarray(x, dtype=np.float64)
        if len(x) > self.remaining:
            raise ValueError(f"attack asked {len(x)} rows with {self.remaining} left")
        got_l: list[Array] = []
        got_p: list[Array] = []
        for start in range(0, len(x), self.oracle.batch):
            chunk = x[start:start + self.oracle.batch]
            try:
                a = self.oracle.ask(chunk)
            except RequestError as exc:
                self.stopped = exc
                raise
            self.requests += 1
            self.used += len(chunk)
            self.x.append(chunk)
            self.labels.append(a.labels)
            got_l.append(a.labels)
            if self.soft:
                if a.proba is None:
                    raise ConfigurationError("the endpoint returned no probabilities; "
                                             "use the label-only variant")
                self.proba.append(a.proba)
                got_p.append(a.proba)
        return Answers(np.concatenate(got_l) if got_l else np.empty(0, dtype=np.int64),
                       np.concatenate(got_p) if got_p else None)

    def transcript(self, n: int | None = None) -> tuple[Array, Array, Array | None]:
        """The first `n` answered rows: inputs, labels and (soft variant) probabilities."""
        if not self.x:
            return (np.empty((0, self.oracle.n_features)), np.empty(0, dtype=np.int64), None)
        x, y = np.concatenate(self.x)[:n], np.concatenate(self.labels)[:n]
        p = np.concatenate(self.proba)[:n] if self.soft else None
        return x, y, p

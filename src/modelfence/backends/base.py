"""The backend interface: where a validated request is finally answered.

`Backend` keeps what every backend shares (metadata, readiness, the classifier output
contract); a backend implements the hooks for its model format or server.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..config import ModelSettings, TensorSpec
from ..errors import BadRequest
from ..kernel.oip import InferRequest, InferResponse, Tensor

#: Batches larger than this run in a worker thread so one big request cannot stall the loop.
INLINE_MAX_ROWS = 64
NOT_COMPUTABLE = ("inputs[0].data: the model cannot compute with these values (its answer "
                  "would be NaN or infinite); send values of smaller magnitude")


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self, versions: tuple[str, ...] = ()) -> dict[str, Any]:
        def spec(t: TensorSpec) -> dict[str, Any]:
            return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        return {"name": self.name, "versions": list(versions), "platform": self.platform,
                "inputs": [spec(t) for t in self.inputs],
                "outputs": [spec(t) for t in self.outputs]}

    def refuse_unknown_outputs(self, requested: list[str]) -> None:
        """400 naming the first requested output this model does not have, before it runs.

        A model whose outputs are not declared (an upstream passed through as is) is checked
        against its answer instead (`requested_outputs`)."""
        known = [t.name for t in self.outputs]
        if known:
            _refuse_missing(self.name, requested, known)


class Backend(ABC):
    platform: ClassVar[str] = "unknown"

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self._metadata: ModelMetadata | None = None

    @property
    def metadata(self) -> ModelMetadata:
        if self._metadata is None:
            raise RuntimeError(f"backend {self.name} used before start()")
        return self._metadata

    def class_values(self, n_classes: int) -> np.ndarray[Any, Any]:
        """The label of each probability column (column indices when the model has none)."""
        classes = getattr(self, "_classes", None)
        if classes is None or len(classes) != n_classes:
            return np.arange(n_classes)
        return np.asarray(classes)

    async def start(self) -> None:
        """Load the model or reach the server; raise ConfigurationError if it cannot serve."""
        self._metadata = await self._start()

    @abstractmethod
    async def _start(self) -> ModelMetadata: ...

    @abstractmethod
    async def infer(self, request: InferRequest) -> InferResponse: ...

    async def ready(self) -> bool:
        return self._metadata is not None

    async def close(self) -> None:
        return None


class LocalClassifier(Backend):
    """A classifier run in-process; subclasses load a format and predict probabilities."""

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        self._classes: np.ndarray[Any, Any] = np.empty(0)

    @abstractmethod
    def _load(self) -> tuple[TensorSpec, np.ndarray[Any, Any]]:
        """Load the model; return its input spec and its class values, in output order."""

    @abstractmethod
    def _predict_proba(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]: ...

    async def _start(self) -> ModelMetadata:
        spec, classes = await asyncio.to_thread(self._load)
        spec = self.settings.input or spec
        labels = self.settings.labels
        if labels is not None and len(labels) != len(classes):
            from ..errors import ConfigurationError
            raise ConfigurationError(
                f"models.{self.name}.labels: {len(labels)} labels but the model has "
                f"{len(classes)} classes")
        self._classes = np.asarray(labels, dtype=object) if labels else classes
        label_type = "INT64" if self._classes.dtype.kind in "iu" else "BYTES"
        outputs = (TensorSpec(name="probabilities", datatype="FP32", shape=[-1, len(classes)]),
                   TensorSpec(name="label", datatype=label_type, shape=[-1]))
        return ModelMetadata(self.name, self.platform, (spec,), outputs)

    async def infer(self, request: InferRequest) -> InferResponse:
        x = request.inputs[0].data
        if x.shape[0] > INLINE_MAX_ROWS:
            proba = await asyncio.to_thread(self._predict_proba, x)
        else:
            proba = self._predict_proba(x)
        return classifier_response(self.name, proba, self._classes, request.id)


def classifier_response(model: str, proba: np.ndarray[Any, Any], classes: np.ndarray[Any, Any],
                        request_id: str | None) -> InferResponse:
    """The classifier contract: `probabilities` [n, classes] and `label` [n].

    A model whose answer is not finite was given values it cannot compute with (ONNX turns
    a row of 3e38 into NaN): that is the input's fault, said as such, for every backend.
    """
    proba = np.asarray(proba, dtype=np.float32)
    if not np.isfinite(proba).all():
        raise BadRequest(NOT_COMPUTABLE)
    labels = classes[np.argmax(proba, axis=1)]
    if classes.dtype.kind in "iu":
        label = Tensor("label", "INT64", [len(labels)], labels.astype(np.int64))
    else:
        label = Tensor("label", "BYTES", [len(labels)], np.asarray([str(v) for v in labels],
                                                                   dtype=object))
    return InferResponse(model, [Tensor("probabilities", "FP32", list(proba.shape), proba), label],
                         request_id)


def requested_names(outputs: list[dict[str, Any]] | None) -> list[str]:
    """The output names a request asks for, each once, in its order; [] for all of them."""
    return list(dict.fromkeys(str(o["name"]) for o in outputs or ()))


def requested_outputs(response: InferResponse, requested: list[str]) -> InferResponse:
    """`response` holding only the `requested` outputs (all of them when none is named).

    The guards (shaping, watermark, the monitor) work on the model's whole answer, so a
    caller asking only for `label` still gets the shaped and marked label; the cut is made
    on what is sent, never on what the guards saw."""
    if not requested:
        return response
    have = {t.name: t for t in response.outputs}
    _refuse_missing(response.model_name, requested, list(have))
    return InferResponse(response.model_name, [have[name] for name in requested], response.id,
                         response.parameters)


def _refuse_missing(model: str, requested: list[str], known: list[str]) -> None:
    for name in requested:
        if name not in known:
            listed = ", ".join(repr(k) for k in known) or "none"
            raise BadRequest(f"body.outputs: model {model!r} has no output {name[:64]!r} "
                             f"(its outputs: {listed})")


@dataclass(slots=True)
class ModelEntry:
    """A served model: its settings and the backend answering for it.

    The gateway serves one version of each model name (`settings.version`, "1" unless
    configured): its `/versions/{v}/` routes answer for that version only."""

    settings: ModelSettings
    backend: Backend
    refused: str | None = None  # why its artifact failed the checks (then it is not served)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def version(self) -> str:
        return self.settings.version

    def metadata_json(self) -> dict[str, Any]:
        """The model metadata answer: the backend's, with the version served."""
        return self.backend.metadata.to_json(versions=(self.version,))

"""The OIP `Call`: a classic model's call, with its model entry and decoded tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import orjson

from ..kernel.call import Call
from ..kernel.oip import InferRequest, InferResponse, encode_infer_request
from .base import ModelEntry


@dataclass(slots=True)
class OipCall(Call):
    """A call on the Open Inference Protocol (infer, model metadata, artifact download)."""

    backend_provides: ClassVar[frozenset[str]] = frozenset({"outputs"})

    model: ModelEntry | None = None
    version: str | None = None  # the model version the call names; None: the one served
    inputs: InferRequest | None = None
    outputs: InferResponse | None = None
    #: the model's probabilities before output shaping (the monitor judges what it said)
    unshaped_proba: np.ndarray[Any, Any] | None = None
    metadata: dict[str, Any] | None = None  # the model metadata a metadata call answers
    #: how the body guard decodes this call's body (with limits.allow_nonfinite), where it is
    #: not the REST body: gRPC's ModelInferRequest; None: JSON or the binary extension
    decode_body: Callable[[bytes, bool], InferRequest] | None = None

    def decoded_request(self) -> Any:
        """The decoded inputs in OIP's canonical JSON, the same whether they came as JSON,
        binary tensor data, a compressed body or a gRPC message."""
        return None if self.inputs is None else orjson.loads(encode_infer_request(self.inputs))

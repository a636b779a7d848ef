"""A minimal, fast Open Inference Protocol v2 server for benchmarks (Starlette on granian).

Serves one model, `digits`, and answers `POST /v2/models/digits/infer` with `probabilities`
[n, 10] (FP32) and `label` [n] (INT64). `BENCH_BACKEND_ANSWER` chooses how:
``predict_proba`` (default) runs a scikit-learn LogisticRegression fitted on the digits data
set at start-up; ``constant`` returns a fixed uniform answer without computing anything.

Run: ``granian --interface asgi --factory oip_backend:create_app`` (with bench/ on the path).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MODEL = "digits"
INPUT_NAME = "input"
FEATURES = 64
CLASSES = 10
ANSWER_ENV = "BENCH_BACKEND_ANSWER"
ANSWERS = ("predict_proba", "constant")

Predict = Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]


def _fitted_predict() -> Predict:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=2000).fit(x / 16.0, y)
    return model.predict_proba  # type: ignore[no-any-return]


def _constant_predict(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.full((x.shape[0], CLASSES), 1.0 / CLASSES, dtype=np.float32)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), status,
                    media_type="application/json")


def _parse(body: bytes) -> tuple[np.ndarray[Any, Any], set[str]]:
    """The `input` tensor as [n, 64] float32 and the requested output names (empty: all)."""
    doc = orjson.loads(body)
    tensor = next(t for t in doc["inputs"] if t["name"] == INPUT_NAME)
    rows = np.asarray(tensor["data"], dtype=np.float32).reshape(-1, FEATURES)
    return rows, {o["name"] for o in doc.get("outputs") or ()}


def create_app() -> Starlette:
    """granian's factory target: the app, with its model fitted (or not) as configured."""
    answer = os.environ.get(ANSWER_ENV, ANSWERS[0])
    if answer not in ANSWERS:
        raise SystemExit(f"{ANSWER_ENV}={answer!r}: use one of {', '.join(ANSWERS)}")
    predict = _fitted_predict() if answer == "predict_proba" else _constant_predict
    metadata = {
        "name": MODEL, "versions": ["1"], "platform": f"bench-{answer}",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, CLASSES]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
    }

    async def infer(request: Request) -> Response:
        if request.path_params["name"] != MODEL:
            return _json({"error": "unknown model"}, 404)
        try:
            rows, wanted = _parse(await request.body())
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, StopIteration):
            return _json({"error": f"expected an FP32 input {INPUT_NAME!r} of shape [-1, 64]"},
                         400)
        proba = np.asarray(predict(rows), dtype=np.float32)
        outputs = [
            {"name": "probabilities", "datatype": "FP32", "shape": list(proba.shape),
             "data": proba.ravel()},
            {"name": "label", "datatype": "INT64", "shape": [len(proba)],
             "data": proba.argmax(axis=1)},
        ]
        if wanted:
            outputs = [o for o in outputs if o["name"] in wanted]
        return _json({"model_name": MODEL, "model_version": "1", "outputs": outputs})

    async def model_metadata(request: Request) -> Response:
        if request.path_params["name"] != MODEL:
            return _json({"error": "unknown model"}, 404)
        return _json(metadata)

    async def ok(request: Request) -> Response:
        return _json({"live": True, "ready": True})

    return Starlette(routes=[
        Route("/v2/health/live", ok, methods=["GET"]),
        Route("/v2/health/ready", ok, methods=["GET"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", ok, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    ])

"""An OIP v2 endpoint as an oracle: the attack goes through the real gateway, key and all.

Requests use one keep-alive connection from the standard library: the attack is sequential
by nature (each round depends on the last), so a thread-free client is the simplest thing
that is fast enough (well under a millisecond per request on loopback). Answers are decoded
with the gateway's own OIP codec. A refusal becomes the `errors.py` class of its status
(`RateLimited` for 429, `Forbidden` for 403, `Unauthenticated` for 401, ...) carrying the
gateway's message, which `Recorder` keeps to report why the attack stopped.
"""

from __future__ import annotations

import http.client
import re
import ssl
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from ..errors import (
    BadRequest,
    ConfigurationError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestError,
    Unauthenticated,
    UpstreamError,
    UpstreamRejected,
)
from ..gateway.oip import NUMPY_DTYPES, InferRequest, Tensor, decode_infer_response
from ..gateway.oip import encode_infer_request as encode
from .victims import Answers, Oracle

Array = np.ndarray[Any, Any]
#: Rows per request for the held-out evaluation rows (kept small for body-size limits).
EVAL_BATCH = 32
_MODEL_PATH = re.compile(r"^(?P<base>.*?)/v2/models/(?P<name>[^/]+)(/infer)?/?$")


def _error(status: int, message: str, headers: dict[str, str]) -> RequestError:
    if status == 429:
        return RateLimited(message, retry_after_s=int(headers.get("retry-after", "1") or 1))
    simple: dict[int, type[RequestError]] = {400: BadRequest, 401: Unauthenticated,
                                             403: Forbidden, 404: NotFound,
                                             413: PayloadTooLarge}
    if status in simple:
        return simple[status](message)
    if status >= 500:
        return UpstreamError(f"the endpoint failed ({status}): {message}")
    return UpstreamRejected(status, message)


class HttpOracle(Oracle):
    """POST /v2/models/{name}/infer with a bearer key; classes learnt from the answers."""

    def __init__(self, url: str, key: str, *, model: str | None = None, batch: int = 1,
                 timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        m = _MODEL_PATH.match(parts.path)
        self._base = (m.group("base") if m else parts.path).rstrip("/")
        name = model or (m.group("name") if m else None)
        if not name:
            raise ConfigurationError(f"{url}: name the model (--model-name, or end the "
                                     "address in /v2/models/NAME)")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"{url}: not an http(s) address")
        self.model = name
        self.batch = max(1, batch)
        self.description = f"{parts.scheme}://{parts.netloc}{self._base}/v2/models/{name}"
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        if parts.scheme == "https":
            self._conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=timeout_s,
                context=ssl.create_default_context())
        else:
            self._conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                                    timeout=timeout_s)
        self._describe()

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        for attempt in (0, 1):
            try:
                self._conn.request(method, self._base + path, body=body, headers=self._headers)
                resp = self._conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._conn.close()  # an idle keep-alive connection closed by the server
                if attempt:
                    raise UpstreamError(f"{self.description}: connection lost") from None
            except OSError as exc:
                self._conn.close()
                raise UpstreamError(f"cannot reach {self.description}: "
                                    f"{exc.strerror or exc}") from None
        if resp.status != 200:
            try:
                message = str(orjson.loads(data).get("error", ""))
            except (orjson.JSONDecodeError, AttributeError):
                message = data[:200].decode(errors="replace")
            headers = {k.lower(): v for k, v in resp.getheaders()}
            raise _error(resp.status, message or resp.reason, headers)
        return data

    def _describe(self) -> None:
        meta = orjson.loads(self._request("GET", f"/v2/models/{self.model}"))
        try:
            inp = meta["inputs"][0]
            self._input = (str(inp["name"]), str(inp["datatype"]))
            self.n_features = int(inp["shape"][-1])
            outputs = {o["name"]: o for o in meta.get("outputs", [])}
            self.n_classes = int(outputs["probabilities"]["shape"][-1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ConfigurationError(
                f"{self.description}: the metadata does not describe a classifier with one "
                "[n, features] input and a probabilities output") from None
        if self.n_features < 1 or self._input[1] not in NUMPY_DTYPES:
            raise ConfigurationError(f"{self.description}: needs a fixed number of numeric "
                                     f"input features, got {inp['shape']} {inp['datatype']}")
        self.classes = np.full(self.n_classes, None, dtype=object)

    def ask(self, x: Array) -> Answers:
        dtype = NUMPY_DTYPES[self._input[1]]
        data = np.asarray(x).astype(dtype)
        body = encode(InferRequest([Tensor(self._input[0], self._input[1], list(data.shape),
                                           data)]))
        resp = decode_infer_response(self._request(
            "POST", f"/v2/models/{self.model}/infer", body))
        prob_t, label_t = resp.output("probabilities"), resp.output("label")
        proba = None if prob_t is None else np.asarray(prob_t.data, dtype=np.float64).reshape(
            len(data), -1)
        if proba is not None:
            labels = np.argmax(proba, axis=1)
        elif label_t is not None:
            labels = self._label_indices(label_t.data)
        else:
            raise UpstreamError(f"{self.description}: the answer has neither probabilities "
                                "nor label")
        if label_t is not None and self.classes is not None:
            self.classes[labels] = np.asarray(label_t.data, dtype=object).ravel()
        return Answers(labels, proba)

    def _label_indices(self, values: Array) -> Array:
        """Label-only answers: integer labels 0..k-1 are indices; others map as first seen."""
        flat = np.asarray(values).ravel()
        if flat.dtype.kind in "iu" and ((flat >= 0) & (flat < self.n_classes)).all():
            return flat.astype(np.int64)
        assert self.classes is not None
        out = []
        for v in flat.tolist():
            known = [i for i, c in enumerate(self.classes) if c == v]
            if not known:
                free = [i for i, c in enumerate(self.classes) if c is None]
                if not free:
                    raise UpstreamError(f"{self.description}: more labels than classes")
                self.classes[free[0]] = v
                known = free[:1]
            out.append(known[0])
        return np.asarray(out, dtype=np.int64)

    def close(self) -> None:
        self._conn.close()

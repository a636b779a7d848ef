"""An OIP v2 endpoint as an oracle: the attack goes through the real gateway, key and all.

Requests use one keep-alive connection from the standard library: the attack is sequential
by nature (each round depends on the last), so a thread-free client is the simplest thing
that is fast enough (well under a millisecond per request on loopback). Answers are decoded
with the gateway's own OIP codec. A refusal becomes the `errors.py` class of its status
(`RateLimited` for 429, `Forbidden` for 403, `Unauthenticated` for 401, ...) carrying the
gateway's message, which `Recorder` keeps to report why the attack stopped.

The gateway's output shaping may withhold the probabilities from a caller it finds risky
(a labels-only band): the oracle then hands the thief one-hot probabilities of the label, as
a real thief would, and counts the answers per band (``parameters.shaping``, which the
gateway sends only for models that set ``reveal_band``: answers hide it by default). With the
gateway's admin token, `AdminClient` mints keys for the red team and `RiskWatch` reads the
monitor's risk score for the attacking principal every few queries: the risk trail.
"""

from __future__ import annotations

import http.client
import re
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Self
from urllib.parse import SplitResult, quote, urlsplit

import numpy as np
import orjson

from ..errors import (
    BadRequest,
    ConfigurationError,
    Forbidden,
    ModelfenceError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestError,
    Unauthenticated,
    UpstreamError,
    UpstreamRejected,
)
from ..kernel.oip import NUMPY_DTYPES, InferRequest, Tensor, decode_infer_response
from ..kernel.oip import encode_infer_request as encode
from .victims import Answers, Oracle

DEFAULT_ADMIN_PORT = 9090  # server.admin_listen's default port

Array = np.ndarray[Any, Any]
#: Rows per request for the held-out evaluation rows (kept small for body-size limits).
EVAL_BATCH = 32
#: Queries between two readings of the attacker's risk score.
RISK_EVERY = 10
_MODEL_PATH = re.compile(r"^(?P<base>.*?)/v2/models/(?P<name>[^/]+)(/infer)?/?$")
_KEY_ID = re.compile(r"^mf_([0-9a-f]{16})_")


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


def _host_port(url: str, parts: SplitResult, not_http: str) -> tuple[str, int | None]:
    """The host and port of an http(s) address; ConfigurationError `{url}: {not_http}` for
    another scheme or no host, and another for a port that is not a number."""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{url}: {not_http}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"{url}: the port is not a number") from None
    return parts.hostname, port


@dataclass(frozen=True)
class Endpoint:
    """A gateway address split into what the clients need, and the model it names."""

    scheme: str
    host: str
    port: int | None
    base: str  # path prefix before /v2 or /admin
    model: str
    description: str  # scheme://host:port/base/v2/models/NAME

    @classmethod
    def parse(cls, url: str, model: str | None = None) -> Endpoint:
        parts = urlsplit(url)
        m = _MODEL_PATH.match(parts.path)
        base = (m.group("base") if m else parts.path).rstrip("/")
        name = model or (m.group("name") if m else None)
        if not name:
            raise ConfigurationError(f"{url}: name the model (--model-name, or end the "
                                     "address in /v2/models/NAME)")
        host, port = _host_port(url, parts, "not an http(s) address")
        return cls(parts.scheme, host, port, base, name,
                   f"{parts.scheme}://{parts.netloc}{base}/v2/models/{name}")

    def admin_at(self, url: str | None) -> Endpoint:
        """This gateway's admin listener: `url`, or port 9090 of the same host (the default
        server.admin_listen); the admin API is never on the public port."""
        url = url or f"http://{self.host}:{DEFAULT_ADMIN_PORT}"
        parts = urlsplit(url)
        host, port = _host_port(url, parts, "the admin address is not an http(s) address")
        base = parts.path.rstrip("/")
        return replace(self, scheme=parts.scheme, host=host, port=port, base=base,
                       description=f"{parts.scheme}://{parts.netloc}{base}/admin")


class _Client:
    """One keep-alive connection with a bearer credential; non-200 answers raise."""

    def __init__(self, endpoint: Endpoint, token: str, *, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.description = endpoint.description
        self._headers = {"Authorization": f"Bearer {token}",
                         "Content-Type": "application/json"}
        if endpoint.scheme == "https":
            self._conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                endpoint.host, endpoint.port, timeout=timeout_s,
                context=ssl.create_default_context())
        else:
            self._conn = http.client.HTTPConnection(endpoint.host, endpoint.port,
                                                    timeout=timeout_s)

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        for attempt in (0, 1):
            try:
                self._conn.request(method, self.endpoint.base + path, body=body,
                                   headers=self._headers)
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
        if resp.status not in (200, 201):
            try:
                message = str(orjson.loads(data).get("error", ""))
            except (orjson.JSONDecodeError, AttributeError):
                message = data[:200].decode(errors="replace")
            headers = {k.lower(): v for k, v in resp.getheaders()}
            raise _error(resp.status, message or resp.reason, headers)
        return data

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpOracle(_Client, Oracle):
    """POST /v2/models/{name}/infer with a bearer key; classes learnt from the answers.

    `answered` counts the rows answered and `bands` the rows per output-shaping band the
    gateway named; `watch`, when set, reads the risk score as the count grows.
    """

    def __init__(self, url: str, key: str, *, model: str | None = None, batch: int = 1,
                 timeout_s: float = 30.0) -> None:
        endpoint = Endpoint.parse(url, model)
        super().__init__(endpoint, key, timeout_s=timeout_s)
        self.model = endpoint.model
        self.batch = max(1, batch)
        self.answered = 0
        self.bands: dict[str, int] = {}
        self.watch: RiskWatch | None = None
        self.listener: Callable[[int], None] | None = None  # told the count as it grows
        self._describe()

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

    def reset_counts(self) -> None:
        """Start counting answers and bands afresh (after the held-out evaluation)."""
        self.answered = 0
        self.bands = {}

    def ask(self, x: Array) -> Answers:
        dtype = NUMPY_DTYPES[self._input[1]]
        data = np.asarray(x).astype(dtype)
        body = encode(InferRequest([Tensor(self._input[0], self._input[1], list(data.shape),
                                           data)]))
        raw = self._request("POST", f"/v2/models/{self.model}/infer", body)
        resp = decode_infer_response(raw)
        prob_t, label_t = resp.output("probabilities"), resp.output("label")
        proba = None if prob_t is None else np.asarray(prob_t.data, dtype=np.float64).reshape(
            len(data), -1)
        if proba is not None:
            labels = np.argmax(proba, axis=1)
        elif label_t is not None:
            labels = self._label_indices(label_t.data)
            # a labels-only band: what a thief does with a bare label is a one-hot answer
            proba = np.eye(self.n_classes, dtype=np.float64)[labels]
        else:
            raise UpstreamError(f"{self.description}: the answer has neither probabilities "
                                "nor label")
        if label_t is not None and self.classes is not None:
            self.classes[labels] = np.asarray(label_t.data, dtype=object).ravel()
        band = _band(raw)
        if band is not None:
            self.bands[band] = self.bands.get(band, 0) + len(data)
        before, self.answered = self.answered, self.answered + len(data)
        if self.watch is not None:
            self.watch.after(before, self.answered)
        if self.listener is not None:
            self.listener(self.answered)
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


def _band(raw: bytes) -> str | None:
    """The output-shaping band the gateway names in ``parameters.shaping``, if any."""
    try:
        params = orjson.loads(raw).get("parameters")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    band = params.get("shaping") if isinstance(params, dict) else None
    return str(band) if band is not None else None


@dataclass(frozen=True)
class MintedKey:
    key: str
    key_id: str
    principal: str


class AdminClient(_Client):
    """The gateway's admin API with the admin token: keys, and the monitor's risk scores.

    A refused token or a disabled admin API is a `ConfigurationError` (bad input, not a
    finding about the model); the token is never put in a message.
    """

    def __init__(self, endpoint: Endpoint, token: str, *, timeout_s: float = 30.0) -> None:
        super().__init__(endpoint, token, timeout_s=timeout_s)
        self.description = (f"{endpoint.scheme}://{endpoint.host}"
                            f"{'' if endpoint.port is None else f':{endpoint.port}'}"
                            f"{endpoint.base}/admin")

    def _admin(self, method: str, path: str, body: bytes | None = None) -> Any:
        try:
            return orjson.loads(self._request(method, path, body))
        except (Unauthenticated, Forbidden) as exc:
            raise ConfigurationError(f"the admin API refused the admin token ({exc.status}: "
                                     f"{exc.message})") from None
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{self.description}: the answer is not JSON") from None

    def create_key(self, principal: str, tenant: str, models: list[str]) -> MintedKey:
        doc = self._admin("POST", "/admin/keys", orjson.dumps({
            "principal": principal, "tenant": tenant, "models": models,
            "description": "modelfence assess (red team)"}))
        return MintedKey(str(doc["key"]), str(doc["key_id"]), principal)

    def revoke_key(self, key_id: str) -> None:
        self._admin("DELETE", f"/admin/keys/{quote(key_id, safe='')}")

    def principal_of(self, key: str) -> str:
        """The principal of an API key, looked up by its public key id."""
        m = _KEY_ID.match(key)
        if not m:
            raise ConfigurationError("cannot tell the key's principal from its form; pass "
                                     "--principal")
        for record in self._admin("GET", "/admin/keys").get("keys", []):
            if record.get("key_id") == m.group(1):
                return str(record["principal"])
        raise ConfigurationError(f"the gateway has no key with id {m.group(1)}; pass "
                                 "--principal")

    def risk(self, model: str, principal: str) -> float | None:
        """The principal's current risk on `model`; None when the model is not monitored."""
        try:
            doc = self._admin("GET", f"/admin/risk/{quote(model, safe='')}?principal="
                                     f"{quote(principal, safe='')}")
        except NotFound:
            return None
        return float(doc["risk"])


class RiskWatch:
    """Reads a principal's risk every `every` queries and when the count passes a mark.

    A reading that fails mid-attack ends the trail (noted in `problem`) rather than the
    attack: the attack's own answers decide when it stops.
    """

    def __init__(self, admin: AdminClient, model: str, principal: str, *,
                 every: int = RISK_EVERY, marks: Iterable[int] = ()) -> None:
        self._admin, self.model, self.principal = admin, model, principal
        self.every = max(1, every)
        self.marks = sorted(set(marks))
        self.trail: list[tuple[int, float]] = []
        self.problem: str | None = None

    def poll(self, queries: int) -> float | None:
        if self.problem is not None:
            return None
        try:
            risk = self._admin.risk(self.model, principal=self.principal)
        except ModelfenceError as exc:
            self.problem = str(exc)
            return None
        if risk is None:
            self.problem = f"model {self.model!r} is not monitored"
            return None
        if self.trail and self.trail[-1][0] == queries:
            self.trail[-1] = (queries, risk)
        else:
            self.trail.append((queries, risk))
        return risk

    def after(self, before: int, now: int) -> None:
        """`now` queries answered, `before` before the last request: read if due."""
        if now // self.every > before // self.every or any(
                before < m <= now for m in self.marks):
            self.poll(now)

    def finish(self, queries: int) -> None:
        """A last reading at the end of the attack, unless one was taken there."""
        if not self.trail or self.trail[-1][0] != queries:
            self.poll(queries)

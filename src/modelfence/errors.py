"""Every exception modelfence raises, and the one place they map to HTTP.

Hierarchy::

    ModelfenceError                      base; never shown to a client as-is
    ├── ConfigurationError               bad config or wiring; refuses to start
    ├── StoreError                       a store cannot answer (fail closed → 503)
    ├── PolicyError                      the policy engine cannot decide (fail closed → 503)
    └── RequestError                     carries an HTTP status and a client-safe message
        ├── BadRequest          400      malformed or invalid input, names the field
        ├── Unauthenticated     401      no, malformed, unknown, revoked or expired credential
        ├── Forbidden           403      identity known, access denied
        ├── NotFound            404      unknown model or route
        ├── PayloadTooLarge     413      body over the configured limit
        ├── RateLimited         429      quota exhausted (carries Retry-After)
        ├── UpstreamError       502      the model server failed or could not be reached
        │   └── UpstreamTimeout 504      the model server did not answer in time
        ├── UpstreamRejected    4xx      the model server refused the request (passed through)
        └── NotReady            503      the gateway or its model is not ready

A `RequestError` message is written for the client: it must never contain a secret,
a credential or a stack trace. `reason` is a short machine-readable slug used for the
denial metrics and the audit record.
"""

from __future__ import annotations


class ModelfenceError(Exception):
    """Base of every modelfence exception."""


class ConfigurationError(ModelfenceError):
    """The configuration or the wiring of guards and backends is wrong; refuse to start."""


class StoreError(ModelfenceError):
    """A backing store (SQLite, PostgreSQL, Redis) cannot answer; `store` names which."""

    def __init__(self, message: str, *, store: str = "keys") -> None:
        super().__init__(message)
        self.store = store


class PolicyError(ModelfenceError):
    """The policy engine failed to decide; the request is denied (fail closed)."""


class RequestError(ModelfenceError):
    """An error answered to the client with `status` and a client-safe `message`."""

    status: int = 500
    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. Retry-After, WWW-Authenticate)."""
        return {}


class BadRequest(RequestError):
    status = 400
    reason = "bad_request"


class Unauthenticated(RequestError):
    status = 401
    reason = "unauthenticated"

    def __init__(self, message: str = "missing or invalid credentials", **kw: str) -> None:
        super().__init__(message, **kw)

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="modelfence"'}


class Forbidden(RequestError):
    status = 403
    reason = "forbidden"


class NotFound(RequestError):
    status = 404
    reason = "not_found"


class PayloadTooLarge(RequestError):
    status = 413
    reason = "payload_too_large"


class RateLimited(RequestError):
    status = 429
    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = max(1, int(retry_after_s))
        self.extra_headers: dict[str, str] = {}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s), **self.extra_headers}


class UpstreamError(RequestError):
    status = 502
    reason = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    reason = "upstream_timeout"


class UpstreamRejected(RequestError):
    """The upstream model server answered 4xx; its status and message are passed through."""

    reason = "upstream_rejected"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NotReady(RequestError):
    status = 503
    reason = "not_ready"


def http_status_and_message(exc: BaseException) -> tuple[int, str, str, dict[str, str]]:
    """Map any exception to (status, client message, reason, headers): the one HTTP mapping.

    Unknown exceptions become a bare 500 so that no internal detail reaches a client;
    a failing store becomes 503 because modelfence fails closed.
    """
    if isinstance(exc, RequestError):
        return exc.status, exc.message, exc.reason, exc.headers()
    if isinstance(exc, StoreError):
        return 503, "a required store is unavailable; request denied", "store_unavailable", {}
    if isinstance(exc, PolicyError):
        return 503, "the policy engine could not decide; request denied", "policy_error", {}
    return 500, "internal error", "internal_error", {}

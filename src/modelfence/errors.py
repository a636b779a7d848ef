"""Every exception modelfence raises, and the one place they map to HTTP.

Hierarchy::

    ModelfenceError                      base; never shown to a client as-is
    ├── ConfigurationError               bad config or wiring; refuses to start
    ├── StoreError                       a store cannot answer (fail closed → 503)
    ├── PolicyError                      the policy engine cannot decide (fail closed → 503)
    ├── RetentionRefused                 audit seal/prune refused: it would lose proof
    ├── DeliveryError                    a SIEM collector did not take alerts (retried)
    └── RequestError                     carries an HTTP status and a client-safe message
        ├── BadRequest          400      malformed or invalid input, names the field
        ├── Unauthenticated     401      no, malformed, unknown, revoked or expired credential
        ├── Forbidden           403      identity known, access denied
        ├── NotFound            404      unknown model or route
        ├── RequestTimeout      408      the body did not arrive in time (closes the connection)
        ├── PayloadTooLarge     413      body over the configured limit
        ├── UnsupportedMediaType 415     a Content-Encoding the gateway cannot decode
        ├── RateLimited         429      quota exhausted (carries Retry-After)
        ├── PrivacyBudgetSpent  429      the caller's ε budget on a model is spent
        ├── UpstreamError       502      the model server failed or could not be reached
        │   └── UpstreamTimeout 504      the model server did not answer in time
        ├── UpstreamRejected    4xx      the model server refused the request (passed through)
        ├── NotReady            503      the gateway or its model is not ready
        ├── Unavailable         503      the identity provider or prompt screening cannot
        │                                answer: refused (fail closed), with Retry-After
        └── ClientDisconnected  499      the client left mid-body: recorded, never answered

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
    """A backing store (SQLite, PostgreSQL, Redis) cannot answer; `store` names which.

    `reported`: the store's circuit breaker has logged this outage already, so the request
    it refuses is counted, not logged again.
    """

    def __init__(self, message: str, *, store: str = "keys", reported: bool = False) -> None:
        super().__init__(message)
        self.store = store
        self.reported = reported


#: how a client's 503 names each store (never its URL or address)
STORE_NAMES = {"keys": "key store", "budget": "budget store", "ratelimit": "rate limit store",
               "audit": "audit store", "watermark": "watermark evidence store",
               "privacy": "privacy budget store"}


class PolicyError(ModelfenceError):
    """The policy engine failed to decide; the request is denied (fail closed)."""


class RetentionRefused(ModelfenceError):
    """Sealing or pruning the audit log would lose proof: the records or their archive do
    not verify, no sealed segment covers them, or they include the chain's head."""


class DeliveryError(ModelfenceError):
    """A SIEM collector did not take a batch of alerts; `reason` is the metric's label
    (unreachable, timeout, status, auth, rejected). A `permanent` one is not retried: the
    collector refused these alerts themselves, and would refuse them again."""

    def __init__(self, message: str, *, reason: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.permanent = permanent


class RequestError(ModelfenceError):
    """An error answered to the client with `status` and a client-safe `message`."""

    status: int = 500
    reason: str = "error"

    def __init_subclass__(cls, *, status: int | None = None, reason: str | None = None,
                          **kw: object) -> None:
        """A subclass names its status and reason in its class line instead of a body."""
        super().__init_subclass__(**kw)
        if status is not None:
            cls.status = status
        if reason is not None:
            cls.reason = reason

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. Retry-After, WWW-Authenticate)."""
        return {}


class BadRequest(RequestError, status=400, reason="bad_request"):
    """Malformed or invalid input; the message names the field."""


class Unauthenticated(RequestError, status=401, reason="unauthenticated"):
    """No, malformed, unknown, revoked or expired credential."""

    def __init__(self, message: str = "missing or invalid credentials", **kw: str) -> None:
        super().__init__(message, **kw)

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="modelfence"'}


class Forbidden(RequestError, status=403, reason="forbidden"):
    """The identity is known and access is denied."""


class NotFound(RequestError, status=404, reason="not_found"):
    """Unknown model or route."""


class RequestTimeout(RequestError, status=408, reason="body_timeout"):
    """The body did not arrive in time."""

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}  # the rest of the body may still come: do not wait for it


class ClientDisconnected(RequestError, status=499, reason="client_disconnected"):
    """The client closed the connection before its request was read: not a server failure.

    499 is nginx's status for it; it appears in metrics and the audit record only.
    """


class PayloadTooLarge(RequestError, status=413, reason="payload_too_large"):
    """The body is over the configured limit."""


class UnsupportedMediaType(RequestError, status=415, reason="unsupported_encoding"):
    """The body comes in a Content-Encoding the gateway cannot decode."""


class _RetryAfter(RequestError):
    """A refusal the client may retry after `retry_after_s` seconds (at least one)."""

    def __init__(self, message: str, *, retry_after_s: int, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = max(1, int(retry_after_s))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class RateLimited(_RetryAfter, status=429, reason="rate_limited"):
    """A quota is exhausted; `extra_headers` carry the limit's state."""

    def __init__(self, message: str, *, retry_after_s: int, reason: str | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s, reason=reason)
        self.extra_headers: dict[str, str] = {}

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.extra_headers}


class PrivacyBudgetSpent(RequestError, status=429, reason="privacy_budget_spent"):
    """A caller's ε budget on a model is spent; Retry-After only where the budget's window
    ends (a lifetime budget never comes back)."""

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = None if retry_after_s is None else max(1, int(retry_after_s))

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


class UpstreamError(RequestError, status=502, reason="upstream_error"):
    """The model server failed or could not be reached."""


class UpstreamTimeout(UpstreamError, status=504, reason="upstream_timeout"):
    """The model server did not answer in time."""


class UpstreamRejected(RequestError, reason="upstream_rejected"):
    """The upstream model server answered 4xx; its status and message are passed through."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NotReady(RequestError, status=503, reason="not_ready"):
    """The gateway or its model is not ready."""


class Unavailable(_RetryAfter, status=503, reason="unavailable"):
    """A service a decision needs (the identity provider's JWKS, prompt screening) cannot
    answer: the request is refused (fail closed) and may be retried after `retry_after_s`."""

    def __init__(self, message: str, *, retry_after_s: int = 5, reason: str | None = None
                 ) -> None:
        super().__init__(message, retry_after_s=retry_after_s, reason=reason)


def http_status_and_message(exc: BaseException) -> tuple[int, str, str, dict[str, str]]:
    """Map any exception to (status, client message, reason, headers): the one HTTP mapping.

    Unknown exceptions become a bare 500 so that no internal detail reaches a client;
    a failing store becomes 503 because modelfence fails closed.
    """
    if isinstance(exc, RequestError):
        return exc.status, exc.message, exc.reason, exc.headers()
    if isinstance(exc, StoreError):
        name = STORE_NAMES.get(exc.store, "required store")
        return 503, f"the {name} is unavailable; request denied", "store_unavailable", {}
    if isinstance(exc, PolicyError):
        return 503, "the policy engine could not decide; request denied", "policy_error", {}
    return 500, "internal error", "internal_error", {}

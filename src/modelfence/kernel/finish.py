"""Completing a call: after its answer leaves, or, with strict audit durability, before;
and counting a call the gateway failed to serve.

The one implementation every protocol's routes use (OIP, OpenAI-compatible, downloads), so
that a record that cannot be committed fails the call closed with the same status, message
and metric whichever protocol carried it, and a store, policy engine or internal failure is
counted alike; only the error's shape is the protocol's own (`refuse`).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.background import BackgroundTask
from starlette.responses import Response

from ..errors import PolicyError, RequestError, StoreError
from .chain import C, GuardChain
from .metrics import GatewayMetrics

#: Answers a refused call in the protocol's own error shape.
Refuse = Callable[[StoreError], Response]
#: Counts a call the gateway failed to serve (`count_failure` bound to the app's metrics).
OnFailure = Callable[[BaseException], None]


def count_failure(metrics: GatewayMetrics, exc: BaseException) -> None:
    """Count a failure of the gateway's own: a store (by name), the policy engine, or an
    internal error. A `RequestError` is an answer, counted by the metrics guard."""
    if isinstance(exc, StoreError):
        metrics.store_errors.labels(exc.store).inc()
    elif isinstance(exc, PolicyError):
        metrics.policy_errors.inc()
    elif not isinstance(exc, RequestError):
        metrics.internal_errors.inc()


async def finish(call: C, chain: GuardChain[C], response: Response, *, strict: bool,
                 refuse: Refuse, on_failure: OnFailure | None = None) -> Response:
    """Run `chain`'s complete phases for `call` answered with `response`.

    Batched (`strict` off): they run after the answer is sent. Strict: the answer leaves only
    once they ran and the audit record is committed; if it is not, the client gets
    `refuse`'s 503 instead, and `on_failure` counts it (as the audit store's).
    """
    call.status = response.status_code
    if not strict:
        response.background = BackgroundTask(chain.complete, call)
        return response
    await chain.complete(call)
    if call.audit_failed:
        refused = StoreError("audit record not committed", store="audit")
        if on_failure is not None:
            on_failure(refused)
        return refuse(refused)
    return response

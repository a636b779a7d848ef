"""Completing a call: after its answer leaves, or, with strict audit durability, before.

The one implementation every protocol's routes use (OIP, OpenAI-compatible, downloads), so
that a record that cannot be committed fails the call closed with the same status, message
and metric whichever protocol carried it; only the error's shape is the protocol's own
(`refuse`).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.background import BackgroundTask
from starlette.responses import Response

from ..errors import StoreError
from .call import Call
from .chain import GuardChain

#: Answers a refused call in the protocol's own error shape.
Refuse = Callable[[StoreError], Response]


async def finish(call: Call, chain: GuardChain, response: Response, *, strict: bool,
                 refuse: Refuse, on_store_error: Callable[[str], None] | None = None
                 ) -> Response:
    """Run `chain`'s complete phases for `call` answered with `response`.

    Batched (`strict` off): they run after the answer is sent. Strict: the answer leaves only
    once they ran and the audit record is committed; if it is not, the client gets
    `refuse`'s 503 instead, and the failure is counted as the audit store's.
    """
    call.status = response.status_code
    if not strict:
        response.background = BackgroundTask(chain.complete, call)
        return response
    await chain.complete(call)
    if call.audit_failed:
        if on_store_error is not None:
            on_store_error("audit")
        return refuse(StoreError("audit record not committed", store="audit"))
    return response

"""JSON answers and the one mapping of exceptions to error responses."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.responses import Response

from ..errors import PolicyError, RequestError, StoreError, http_status_and_message

log = logging.getLogger("modelfence.gateway")


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), status,
                    headers=headers, media_type="application/json")


def error_response(exc: BaseException, *, where: str = "") -> tuple[Response, RequestError]:
    """The client's error answer and the RequestError the audit and metrics will see."""
    status, message, reason, headers = http_status_and_message(exc)
    if isinstance(exc, RequestError):
        err = exc
    else:
        err = RequestError(message, reason=reason)
        err.status = status
        if isinstance(exc, StoreError):  # an outage its breaker logged once: count, not log
            log.log(logging.DEBUG if exc.reported else logging.ERROR,
                    "store failure%s, request denied: %s", where, exc)
        elif isinstance(exc, PolicyError):
            log.error("policy engine failure%s, request denied: %s", where, exc)
        else:
            log.exception("internal error%s", where)
    return json_response({"error": message}, status, headers), err

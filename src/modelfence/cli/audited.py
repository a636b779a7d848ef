"""Security-state changes made from the command line leave a chained audit record.

Whoever can run `modelfence keys create` on a server can mint keys without the admin
API, so the CLI writes the same kind of record the admin API does (`admin:create-key`,
...) into the configured audit sink, naming the operating-system account that ran it as
`cli:<user>` (from the effective uid). The sink runs in strict durability: `write()`
returns only once the record committed, so a change the trail cannot record is refused
or undone, never silent.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..audit.record import AuditRecord, event_record
from ..audit.sinks import AuditSink, audit_sink_from_url
from ..config import AuditSettings
from ..errors import ModelfenceError
from .common import fail


def operator() -> str:
    """Who ran the command: the account of the process's effective uid (a name, never a
    credential). Not LOGNAME/USER, which whoever runs the command can set to any name."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (some containers)
        name = f"uid{uid}"
    return f"cli:{name}"


@asynccontextmanager
async def admin_trail(audit: AuditSettings, refusal: str) -> AsyncIterator[AuditSink]:
    """The configured audit sink, open, with writes that wait for their commit.

    When it cannot open, the command stops with `refusal` and the reason, before it changed
    anything.
    """
    sink = audit_sink_from_url(audit.sink, audit.model_copy(update={"durability": "strict"}))
    try:
        await sink.open()
    except ModelfenceError as exc:
        raise fail(f"{refusal}: the audit log cannot record it: {exc}") from None
    try:
        yield sink
    finally:
        await sink.close()


def cli_record(action: str, *, target: str | None, details: dict[str, Any] | None,
               started: float, status: int = 200, reason: str = "ok") -> AuditRecord:
    return event_record(action=action, reason=reason, status=status, principal=operator(),
                        target=target, source="cli", started=started, details=details)

"""The audit search's filters: read from the query string, checked, turned into a `Query`.

Pages are keyset-paginated, newest first, so a page costs the same at record 10 or
1,000,000 and no OFFSET is ever scanned: by the store's sequence (`before=SEQ`, the last
position shown), or, when a time range is given, in time order (`before=TS_US.SEQ`), so
that a range far back reads its first page straight off the time index. Every value is
bounded and checked here; anything else is a `BadRequest` the page shows as a 400, never a
traceback, and never SQL text (the store binds every value as a parameter).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from urllib.parse import urlencode

from ..audit.chain import Row
from ..audit.store import Query
from ..errors import BadRequest, Forbidden
from .session import ConsoleSession

MAX_TEXT = 256  # longest principal, tenant, model or action searched for
MAX_SEQ = 2**62
STATUS_CLASSES = {"2xx": 2, "3xx": 3, "4xx": 4, "5xx": 5}

#: where a page starts: below a position, or (with a time range) below (ts_us, seq)
Cursor = int | tuple[int, int]


@dataclass(frozen=True, slots=True)
class Filters:
    """What an admin searched for, as typed (empty: any)."""

    principal: str = ""
    tenant: str = ""
    model: str = ""
    action: str = ""  # exact; ending in * matches a prefix ("alert:*")
    status: str = ""  # "", 2xx, 3xx, 4xx, 5xx
    since: str = ""  # ISO 8601, UTC when no offset is given
    until: str = ""

    @property
    def by_time(self) -> bool:
        return bool(self.since or self.until)

    def link(self, before: Cursor | None = None) -> str:
        """The query string of this search (and page), for links."""
        pairs = [(f.name, getattr(self, f.name)) for f in fields(self)]
        if isinstance(before, tuple):
            pairs.append(("before", f"{before[0]}.{before[1]}"))
        elif before is not None:
            pairs.append(("before", str(before)))
        return urlencode([(k, v) for k, v in pairs if v])

    def cursor_after(self, row: Row) -> Cursor:
        """The cursor of the page after the one ending with `row`."""
        return (row.ts_us, row.seq) if self.by_time else row.seq


def _text(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "").strip()
    if len(value) > MAX_TEXT:
        raise BadRequest(f"{name}: at most {MAX_TEXT} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadRequest(f"{name}: control characters are not allowed")
    return value


def _time_us(name: str, text: str) -> int | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name}: not a date and time (ISO 8601, e.g. "
                         "2026-12-04T14:30 or 2026-12-04T14:30:00+00:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return int(when.timestamp() * 1_000_000)
    except (OverflowError, OSError, ValueError):
        raise BadRequest(f"{name}: out of range") from None


def _whole(text: str, low: int, high: int) -> int | None:
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    return int(text) if low <= int(text) <= high else None


def _cursor(text: str, by_time: bool) -> Cursor | None:
    if not text:
        return None
    if by_time:
        ts, _, seq = text.partition(".")
        ts_us, pos = _whole(ts, 0, MAX_SEQ), _whole(seq, 1, MAX_SEQ)
        if ts_us is None or pos is None:
            raise BadRequest("before: with a time range, the time and position of a record "
                             "(as the Older link gives)")
        return ts_us, pos
    pos = _whole(text, 1, MAX_SEQ)
    if pos is None:
        raise BadRequest("before: must be a record position (a whole number)")
    return pos


def parse(params: Mapping[str, str]) -> tuple[Filters, Cursor | None]:
    """The filters and the page cursor (`before`) of a search; BadRequest names a bad one."""
    f = Filters(**{f.name: _text(params, f.name) for f in fields(Filters)})
    if f.status and f.status not in STATUS_CLASSES:
        raise BadRequest("status: one of 2xx, 3xx, 4xx, 5xx")
    since, until = _time_us("since", f.since), _time_us("until", f.until)
    if since is not None and until is not None and since >= until:
        raise BadRequest("since must be before until")
    return f, _cursor(params.get("before", "").strip(), f.by_time)


def scoped(f: Filters, session: ConsoleSession) -> Filters:
    """An admin limited to some models or tenants searches one of them at a time: the
    filter defaults to its first, and naming another is refused (403)."""
    if "*" not in session.models:
        if not f.model:
            f = Filters(**{**_values(f), "model": sorted(session.models)[0]})
        if not session.covers(f.model):
            raise Forbidden(f"{session.admin} may search the audit log of its models only")
    if "*" not in session.tenants:
        if not f.tenant:
            f = Filters(**{**_values(f), "tenant": sorted(session.tenants)[0]})
        if not session.covers_tenant(f.tenant):
            raise Forbidden(f"{session.admin} may search the audit log of its tenants only")
    return f


def _values(f: Filters) -> dict[str, str]:
    return {x.name: getattr(f, x.name) for x in fields(f)}


def query(f: Filters, before: Cursor | None, limit: int) -> Query:
    """The store query of one page: newest first, after the cursor `before`."""
    prefix = f.action[:-1] if f.action.endswith("*") else None
    return Query(principal=f.principal or None, tenant=f.tenant or None,
                 model=f.model or None, action=None if prefix is not None else f.action or None,
                 action_prefix=prefix or None, status_class=STATUS_CLASSES.get(f.status),
                 since_us=_time_us("since", f.since), until_us=_time_us("until", f.until),
                 upto_seq=before - 1 if isinstance(before, int) else None,
                 by_time=f.by_time, cursor=before if isinstance(before, tuple) else None,
                 limit=limit, newest_first=True)

"""The audit hook: one record per call, assembled after the answer is sent.

Inputs are recorded as a SHA-256 digest unless `audit.record_inputs` is set; the
bearer token never reaches the record (only the public key id does).

With `record_inputs`, `inputs` is the request as decoded and checked, as a JSON object in
its protocol's canonical form (`Call.decoded_request`: OIP's JSON request whether it came as
JSON, binary tensor data, gzip or deflate, or a gRPC message; an LLM call's JSON request),
so every record of the same request reads the same. A request refused before it decoded
records no inputs (`null`); its reason, size and digest say what was refused. Records
written before this kept the body as received, decoded as UTF-8 text, in the same field:
a string `inputs` is such an older record (a binary, compressed or gRPC body reads as
replacement characters there), an object a decoded request. The field lives in the
payload, which the hash chain covers as stored, so old and new records verify alike.

Text fields come partly from the caller (the model name is the raw URL path segment, a
principal id is a JWT claim), so every record keeps a safe form of them: control
characters (NUL, which PostgreSQL text cannot hold, and the rest) and unpaired surrogates
are removed, and each field is capped — `ID_MAX` characters for the indexed columns
(model, principal, tenant, key id, action, request id, source, replica), `TEXT_MAX` for
reasons and trail entries — ending in `TRUNCATED` when cut. A caller cannot make a record
the store refuses.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import unicodedata
import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar

from ..errors import StoreError
from ..kernel.call import Call
from ..kernel.chain import Guard
from .sinks import AuditSink

_REFUSED = "audit records cannot be kept"

ID_MAX = 256     # characters kept of an indexed text column (a btree entry stays small)
TEXT_MAX = 1024  # characters kept of a reason or a trail entry
TRUNCATED = "…(truncated)"


def safe_text(value: str, limit: int = ID_MAX) -> str:
    """`value` without control characters or unpaired surrogates, at most `limit` long."""
    if len(value) <= limit and value.isprintable():
        return value  # the usual case, checked in C
    clean = "".join(c for c in value if c == " " or unicodedata.category(c) not in ("Cc", "Cs"))
    if len(clean) > limit:
        clean = clean[:limit - len(TRUNCATED)] + TRUNCATED
    return clean


def _opt(value: str | None, limit: int = ID_MAX) -> str | None:
    return None if value is None else safe_text(str(value), limit)


@dataclass(slots=True)
class AuditRecord:
    time: str
    request_id: str
    action: str
    model: str | None
    principal: str | None
    tenant: str | None
    key_id: str | None
    source: str
    status: int
    decision: str                 # "allow" | "deny" | "error"
    reason: str
    policy_ids: list[str]
    latency_ms: float
    rows: int
    risk: float
    bytes_in: int
    bytes_out: int
    input_sha256: str | None
    output_sha256: str | None
    trail: list[dict[str, str]] = field(default_factory=list)
    replica: str = ""             # which gateway process wrote it (host:pid)
    shaping: str | None = None    # the output band the answer was shaped by
    inputs: Any = None
    details: dict[str, Any] | None = None  # what an admin action changed (never a secret)

    def __post_init__(self) -> None:
        """Keep only safe, capped text, whoever built the record (see the module docstring)."""
        if self._clean():
            return  # the usual record: nothing to change
        self.request_id = safe_text(str(self.request_id))
        self.action = safe_text(str(self.action))
        self.model = _opt(self.model)
        self.principal = _opt(self.principal)
        self.tenant = _opt(self.tenant)
        self.key_id = _opt(self.key_id)
        self.source = safe_text(str(self.source))
        self.decision = safe_text(str(self.decision))
        self.reason = safe_text(str(self.reason), TEXT_MAX)
        self.replica = safe_text(str(self.replica))
        self.shaping = _opt(self.shaping)
        self.policy_ids = [safe_text(str(p)) for p in self.policy_ids]
        self.trail = [{safe_text(str(k)): safe_text(str(v), TEXT_MAX) for k, v in d.items()}
                      for d in self.trail]

    def _clean(self) -> bool:
        """True when every text field already is what `safe_text` would make of it: checked
        with two joins in C, not a call per field (this runs once per request). A field of
        another type makes a join raise: the careful path converts it."""
        if type(self.policy_ids) is not list or type(self.trail) is not list:
            return False
        ids = [self.request_id, self.action, self.source, self.decision, self.replica,
               *self.policy_ids]
        ids += [v for v in (self.model, self.principal, self.tenant, self.key_id, self.shaping)
                if v is not None]
        texts = [self.reason]
        try:
            for d in self.trail:
                ids += d  # the keys
                texts += d.values()
            joined_ids, joined_texts = "".join(ids), "".join(texts)
        except TypeError:
            return False
        return (joined_ids.isprintable() and joined_texts.isprintable()
                and max(map(len, ids)) <= ID_MAX and max(map(len, texts)) <= TEXT_MAX)

    def to_dict(self) -> dict[str, Any]:
        """A shallow dict: every value is built fresh by `assemble`, so no deep copy is needed.

        `details` is left out when empty, so model calls do not pay for it in every record.
        """
        d = {name: getattr(self, name) for name in _FIELDS}
        if self.details is None:
            del d["details"]
        return d


_FIELDS = tuple(f.name for f in fields(AuditRecord))


class AuditGuard(Guard[Call]):
    name: ClassVar[str] = "audit"

    def __init__(self, sink: AuditSink, *, record_inputs: bool = False) -> None:
        self._sink = sink
        self._record_inputs = record_inputs
        self._replica = replica_name()

    def assemble(self, call: Call) -> AuditRecord:
        p = call.principal
        body = call.body
        out = call.response_body
        return AuditRecord(
            time=datetime.fromtimestamp(call.received_at, UTC).isoformat(),
            request_id=call.request_id,
            action=call.action,
            model=call.model_name,
            principal=p.id if p else None,
            tenant=p.tenant if p else None,
            key_id=p.key_id if p else None,
            source=call.source,
            status=call.status,
            decision=_decision(call.status),
            reason=call.error.reason if call.error else "ok",
            policy_ids=list(call.policy_ids),
            latency_ms=round(call.elapsed_s() * 1000, 3),
            rows=call.rows,
            risk=round(call.risk, 4),
            bytes_in=len(body) if body else 0,
            bytes_out=len(out) if out else 0,
            input_sha256=hashlib.sha256(body).hexdigest() if body else None,
            output_sha256=hashlib.sha256(out).hexdigest() if out else None,
            trail=[d.as_dict() for d in call.trail],
            replica=self._replica,
            shaping=call.shaping_band,
            inputs=_recorded_inputs(call) if self._record_inputs else None,
        )

    async def on_request(self, call: Call) -> None:
        """Fail closed: a call whose record could not be kept is not served (503)."""
        if not self._sink.accepting:
            call.note(self.name, "deny", _REFUSED)
            raise StoreError("the audit store and its spill are full or failing",
                             store="audit", reported=True)  # the sink logged it once

    async def on_complete(self, call: Call) -> None:
        """Runs after the answer is sent (batched) or just before (strict durability)."""
        if any(d.reason is _REFUSED for d in call.trail):
            return  # refused above because no record can be kept: counted, not recorded
        try:
            await self._sink.write(self.assemble(call))
        except Exception:
            call.audit_failed = True
            raise


def event_record(*, action: str, reason: str, status: int = 200, principal: str | None = None,
                 tenant: str | None = None, model: str | None = None, target: str | None = None,
                 source: str = "gateway", started: float | None = None,
                 risk: float = 0.0, details: dict[str, Any] | None = None) -> AuditRecord:
    """A record for something other than a model call: admin actions, budget alerts.

    `target` names what was acted on (a key id); it lands in the key_id column.
    `details` says what changed (a key's principal and models), never a secret.
    """
    elapsed = 0.0 if started is None else (time.perf_counter() - started) * 1000
    return AuditRecord(
        time=datetime.now(UTC).isoformat(), request_id=uuid.uuid4().hex, action=action,
        model=model, principal=principal, tenant=tenant, key_id=target, source=source,
        status=status, decision=_decision(status), reason=reason, policy_ids=[],
        latency_ms=round(elapsed, 3), rows=0, risk=round(risk, 4),
        bytes_in=0, bytes_out=0, input_sha256=None, output_sha256=None,
        replica=replica_name(), details=details)


def _recorded_inputs(call: Call) -> Any:
    """The decoded request for the record; never the raw body, and never a reason to lose
    the record: inputs that cannot be shown (it should not happen) are logged and left out."""
    try:
        return call.decoded_request()
    except Exception as exc:  # the record matters more than its inputs
        logging.getLogger("modelfence.audit").warning(
            "audit: the inputs of request %s could not be recorded: %s",
            call.request_id, type(exc).__name__)
        return None


def replica_name() -> str:
    """host:pid of this gateway process, so one shared trail tells replicas apart."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _decision(status: int) -> str:
    if status < 400:
        return "allow"
    return "deny" if status < 500 else "error"

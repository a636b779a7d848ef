"""Audit: the record of every call, assembled in one place and written to a sink by URL."""

from .record import AuditGuard, AuditRecord
from .sinks import AuditSink, audit_sink_from_url

__all__ = ["AuditGuard", "AuditRecord", "AuditSink", "audit_sink_from_url"]

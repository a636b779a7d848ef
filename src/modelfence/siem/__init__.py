"""Alerts where security teams look: OCSF Detection Findings tagged with MITRE ATLAS
techniques, sent to syslog (RFC 5424 over TCP or TLS) and HTTP collectors (Splunk HEC, a
generic JSON receiver) through a bounded on-disk spool with retries.

Modules: `atlas` (techniques per kind of alert), `finding` (an alert as a `Finding`),
`ocsf` (its JSON), `syslog` and `http` (the senders), `tls`, `spool`, `outbox` (one
destination's delivery) and `forwarder` (`Siem`, what the gateway builds).
"""

from .finding import Finding
from .forwarder import Siem

__all__ = ["Finding", "Siem"]

"""`siem:` — where alerts go for a security operations team: syslog and HTTP collectors.

Every alert is sent, as an OCSF Detection Finding tagged with MITRE ATLAS techniques, to each
destination. A destination's alerts wait in a bounded on-disk spool until the collector takes
them, so a collector outage delays them instead of losing them. Tokens are named by file or
environment variable and read at start, so the configuration file never holds one.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from ..errors import ConfigurationError
from .base import ConfigPath, Strict
from .validators import unique_names

_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class SiemTls(Strict):
    """TLS to a collector: the CA that signed its certificate (the system's when none), and
    a client certificate when the collector asks for one."""

    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = None
    server_name: str | None = Field(None, description="name the collector's certificate "
                                    "must carry (default: the host)")

    @model_validator(mode="after")
    def _pair(self) -> SiemTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together")
        return self


class SyslogDestination(Strict):
    """RFC 5424 messages over TCP (octet-counted framing, RFC 6587), TLS when `tls` is set
    (RFC 5425). The message is the finding's JSON; its ATLAS ids are structured data too."""

    type: Literal["syslog"]
    name: str = Field(pattern=_NAME)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    tls: SiemTls | None = None
    facility: int = Field(4, ge=0, le=23, description="syslog facility (4: security/"
                          "authorization messages)")
    app_name: str = Field("modelfence", pattern=r"^[!-~]{1,48}$")
    timeout_s: float = Field(5.0, gt=0, le=60, description="connect and write timeout")


class HttpDestination(Strict):
    """An HTTP collector. `hec`: Splunk's HTTP Event Collector (the URL of
    /services/collector/event, token sent as `Authorization: Splunk <token>`); `json`: any
    receiver taking a JSON array of findings by POST, with an optional bearer token."""

    type: Literal["hec", "json"]
    name: str = Field(pattern=_NAME)
    url: str = Field(pattern=r"^https?://")
    token_file: ConfigPath | None = None
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    tls: SiemTls | None = None
    timeout_s: float = Field(5.0, gt=0, le=60)
    source: str = Field("modelfence", description="hec: the events' source")
    sourcetype: str = Field("ocsf:detection_finding", description="hec: the events' "
                            "sourcetype")
    index: str | None = Field(None, description="hec: the index (default: the token's)")

    @model_validator(mode="after")
    def _token(self) -> HttpDestination:
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("give token_file or token_env, not both")
        if self.type == "hec" and self.token_file is None and self.token_env is None:
            raise ValueError("a hec destination needs token_file or token_env")
        has_token = self.token_file is not None or self.token_env is not None
        if has_token and self.url.startswith("http://") and not _loopback(self.url):
            raise ValueError("a token would cross the network in the clear: use an https:// "
                             "url (http:// only to a collector on this host)")
        return self

    def token(self) -> str | None:
        """The token, read now (at start) from its file or variable; never logged."""
        if self.token_env is not None:
            value = os.environ.get(self.token_env, "").strip()
            if not value:
                raise ConfigurationError(f"siem destination {self.name}: environment "
                                         f"variable {self.token_env} is not set")
            return value
        if self.token_file is None:
            return None
        try:
            value = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"siem destination {self.name}: cannot read "
                                     f"{self.token_file}: {exc.strerror}") from None
        if not value:
            raise ConfigurationError(f"siem destination {self.name}: {self.token_file} "
                                     "is empty")
        return value


def _loopback(url: str) -> bool:
    """Whether `url` names this host (localhost or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SiemDestination = Annotated[SyslogDestination | HttpDestination, Field(discriminator="type")]


class SiemSettings(Strict):
    """Off while `destinations` is empty."""

    destinations: list[SiemDestination] = Field(default_factory=list)
    spool_dir: ConfigPath = Field(Path("siem-spool"), description="where alerts wait for "
                                  "their collector, one folder per destination")
    spool_max_bytes: int = Field(64 * 1024 * 1024, ge=4096, description="per destination: "
                                 "when full, the oldest waiting alert is dropped (counted)")
    fsync: bool = Field(True, description="fsync each spooled batch (an alert survives a "
                        "power cut once spooled)")
    queue_max: int = Field(10_000, ge=1, description="alerts waiting to be spooled; beyond, "
                           "an alert is dropped and counted rather than slow the caller")
    max_batch: int = Field(100, ge=1, le=10_000, description="most alerts per send")
    retry_initial_s: float = Field(0.2, gt=0, le=60, description="first wait after a "
                                   "failed send; doubled each failure, with jitter")
    retry_max_s: float = Field(5.0, gt=0, le=600, description="longest wait between tries: "
                               "bounds how late alerts arrive after a collector is back")

    @model_validator(mode="after")
    def _unique(self) -> SiemSettings:
        unique_names((d.name for d in self.destinations), "siem destination")
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must be at least retry_initial_s")
        return self
